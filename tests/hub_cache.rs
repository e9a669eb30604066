//! Loading through the Hub code path from a temporary `HF_HOME` laid out as the HF cache, with
//! no network. One test only: it sets process-wide environment variables.

mod common;
use candle_core::{DType, Device};
use socratune::model::hub::populate_cache;
use socratune::model::{load, Source};

#[test]
fn loads_a_cached_repo_offline_and_matches_the_local_folder() {
    let fixture = common::fixture();
    let home = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    populate_cache(
        home.path(),
        "socratune-test/gemma2-tiny",
        commit,
        &[
            ("config.json", &fixture.join("config.json")),
            ("model.safetensors", &fixture.join("model.safetensors")),
        ],
    )
    .unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::remove_var("HF_TOKEN");

    let ids = candle_core::Tensor::new(&[[2u32, 17, 33, 5, 9]], &Device::Cpu).unwrap();
    let from_hub = load(
        &Source::parse("socratune-test/gemma2-tiny", None).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let local = load(&Source::Local(fixture.clone()), DType::F32, &Device::Cpu).unwrap();
    let a = from_hub.logits(&ids, None).unwrap();
    let b = local.logits(&ids, None).unwrap();
    let d = common::max_abs_diff(&a, &b);
    assert_eq!(d, 0.0);

    // A commit hash as revision resolves through the snapshot folder.
    let pinned = Source::parse("socratune-test/gemma2-tiny", Some(commit)).unwrap();
    assert!(pinned.file("config.json").unwrap().ends_with("config.json"));

    // A repo the cache has never seen fails clearly, offline.
    let e = Source::parse("socratune-test/absent", None)
        .unwrap()
        .file("config.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("socratune-test/absent") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}
