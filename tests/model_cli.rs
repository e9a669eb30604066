//! `socratune model …` end to end on files in a temporary directory: sharded checkpoints and
//! every bad input the model side must explain in one line.

mod common;
use candle_core::{DType, Device, Tensor};
use common::fixture;
use socratune::model::{load, Source};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::socratune_env as socratune;

/// `socratune model SUB --model MODEL [--adapter ADAPTER] --device cpu EXTRA…`.
fn model_cmd(
    sub: &str,
    model: &Path,
    adapter: Option<&Path>,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec!["model", sub, "--model", model.to_str().unwrap()];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    args.extend(["--device", "cpu"]);
    args.extend(extra);
    socratune(&args, &[])
}

/// A copy of the fixture's model folder whose tensors can be edited.
fn copy_model(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(fixture().join("config.json"), out.join("config.json")).unwrap();
    let mut t =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, out.join("model.safetensors")).unwrap();
    out
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let tensors =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, dir.path().join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let ids = Tensor::new(&[[2u32, 40, 41, 42]], &Device::Cpu).unwrap();
    let sharded = load(&Source::Local(dir.path().into()), DType::F32, &Device::Cpu).unwrap();
    let single = load(&Source::Local(fixture()), DType::F32, &Device::Cpu).unwrap();
    let d = common::max_abs_diff(
        &sharded.logits(&ids, None).unwrap(),
        &single.logits(&ids, None).unwrap(),
    );
    assert_eq!(d, 0.0);
}

#[test]
fn model_check_loads_model_and_adapter() {
    let f = fixture();
    let (ok, out, err) = model_cmd("check", &f, Some(&f.join("adapter")), &[]);
    assert!(ok, "{err}");
    assert!(out.contains("gemma2") && out.contains("LoRA r="), "{out}");
}

#[test]
fn bad_inputs_get_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let check = |model: &Path, adapter: Option<&Path>, want: &[&str]| {
        let (ok, _, err) = model_cmd("check", model, adapter, &[]);
        assert!(!ok, "expected a failure for {want:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        for w in want {
            assert!(err.contains(w), "wanted `{w}` in: {err}");
        }
    };

    // config.json missing, then malformed.
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    check(&empty, None, &["config.json", "not found"]);
    std::fs::write(empty.join("config.json"), "{\"model_type\": \"gemma2\",").unwrap();
    check(&empty, None, &["config.json", "malformed config.json"]);

    // A tensor missing, then one of the wrong shape.
    let missing = copy_model(&d.join("a"), |t| {
        t.remove("model.layers.1.mlp.up_proj.weight");
    });
    check(
        &missing,
        None,
        &["model.layers.1.mlp.up_proj.weight", "missing"],
    );
    let wrong = copy_model(&d.join("b"), |t| {
        let w = t["model.layers.0.self_attn.k_proj.weight"].clone();
        let w = Tensor::cat(&[&w, &w], 0).unwrap();
        t.insert("model.layers.0.self_attn.k_proj.weight".into(), w);
    });
    check(
        &wrong,
        None,
        &[
            "model.safetensors",
            "model.layers.0.self_attn.k_proj.weight",
            "expected",
        ],
    );

    // Adapters that do not fit: another rank than the config says, an unsupported target.
    let adapter = d.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::copy(
        fixture().join("adapter/adapter_model.safetensors"),
        adapter.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let r = cfg["r"].as_u64().unwrap();
    cfg["r"] = (r + 1).into();
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string()).unwrap();
    check(
        &fixture(),
        Some(&adapter),
        &["adapter_model.safetensors", "do not fit rank"],
    );
    cfg["r"] = r.into();
    cfg["target_modules"] = serde_json::json!(["q_proj", "lm_head"]);
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string()).unwrap();
    check(
        &fixture(),
        Some(&adapter),
        &["adapter_config.json", "lm_head"],
    );
}

/// A fake Hub that answers 401 to everything, as huggingface.co does for a gated repo without
/// a token.
#[test]
fn gated_repo_without_token_says_what_to_do() {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", server.server_addr().to_ip().unwrap());
    let handle = std::thread::spawn(move || {
        for req in server.incoming_requests().take(4) {
            let _ = req.respond(
                tiny_http::Response::from_string("{\"error\":\"gated\"}").with_status_code(401),
            );
        }
    });
    let home = tempfile::tempdir().unwrap();
    let (ok, _, err) = socratune(
        &["model", "info", "--model", "google/gemma-2-2b-it"],
        &[
            ("HF_ENDPOINT", &addr),
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "0"),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("google/gemma-2-2b-it") && err.contains("gated") && err.contains("HF_TOKEN"),
        "{err}"
    );
    drop(handle);
}

#[test]
fn export_merges_and_reloads_with_the_adapter_logits() {
    use socratune::model::adapter;
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    // The base, with a tokenizer file whose spelling an export must not touch.
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for name in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(f.join(name), base.join(name)).unwrap();
    }
    let tokenizer_config = "{ \"model_max_length\": 8192 ,\n  \"pad_token\": \"<pad>\" }\n";
    std::fs::write(base.join("tokenizer_config.json"), tokenizer_config).unwrap();
    let base_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    let ids = Tensor::new(&[[2u32, 40, 41, 42, 7, 9]], &Device::Cpu).unwrap();
    let mut with_adapter = load(&Source::Local(f.clone()), DType::F32, &Device::Cpu).unwrap();
    adapter::load(&mut with_adapter, &f.join("adapter")).unwrap();
    let want = with_adapter.logits(&ids, None).unwrap();
    for (dtype, shard, tol) in [("f32", "1MB", 1e-5f32), ("bf16", "5GB", 5e-2)] {
        let out = dir.path().join(dtype);
        let (ok, stdout, err) = socratune(
            &[
                "export",
                "--adapter",
                f.join("adapter").to_str().unwrap(),
                "--model",
                base.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--dtype",
                dtype,
                "--max-shard-size",
                shard,
            ],
            &[],
        );
        assert!(ok, "{err}");
        assert!(stdout.contains("config.json"), "{stdout}");
        if shard == "1MB" {
            assert!(
                out.join("model.safetensors.index.json").exists()
                    || out.join("model.safetensors").exists()
            );
        }
        let reloaded = load(&Source::Local(out.clone()), DType::F32, &Device::Cpu).unwrap();
        assert!(reloaded.lora_vars().is_empty());
        let got = reloaded.logits(&ids, None).unwrap();
        let d = common::max_abs_diff(&got, &want);
        let scale = common::max_abs(&want);
        assert!(
            d <= tol * scale.max(1.0),
            "{dtype}: exported logits differ by {d}"
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        // The base's config with only the dtype changed: ints stay ints, unknown fields kept.
        let name = if dtype == "f32" {
            "float32"
        } else {
            "bfloat16"
        };
        let mut want_cfg = base_config.clone();
        want_cfg["dtype"] = name.into();
        want_cfg["torch_dtype"] = name.into();
        assert_eq!(cfg, want_cfg);
        assert!(cfg["query_pre_attn_scalar"].is_u64());
        for verbatim in ["generation_config.json", "tokenizer_config.json"] {
            assert_eq!(
                std::fs::read(out.join(verbatim)).unwrap(),
                std::fs::read(base.join(verbatim)).unwrap(),
                "{verbatim}"
            );
        }
    }
}

/// A fixture's reference batch as a `train.jsonl` file (padding stripped).
fn fixture_examples(fixture: &Path, path: &Path) {
    let io = candle_core::safetensors::load(fixture.join("io.safetensors"), &Device::Cpu).unwrap();
    let ids = io["input_ids"].to_vec2::<i64>().unwrap();
    let mask = io["attention_mask"].to_vec2::<i64>().unwrap();
    let labels = io["labels"].to_vec2::<i64>().unwrap();
    let mut text = String::new();
    for (row, ((ids, mask), labels)) in ids.iter().zip(&mask).zip(&labels).enumerate() {
        let n = mask.iter().filter(|m| **m == 1).count();
        let line = serde_json::json!({
            "id": format!("row{row}"),
            "input_ids": &ids[..n],
            "labels": &labels[..n],
        });
        text.push_str(&format!("{line}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// `model check` and `model score` on each family's fixture: the loss with the adapter is
/// transformers + PEFT's.
#[test]
fn every_family_checks_and_scores_like_transformers() {
    for family in ["gemma3", "qwen3", "llama"] {
        let f = common::family_fixture(family);
        let (ok, out, err) = model_cmd("check", &f, Some(&f.join("adapter")), &[]);
        assert!(ok, "{family}: {err}");
        assert!(out.contains(family) && out.contains("LoRA r="), "{out}");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("val.jsonl");
        fixture_examples(&f, &data);
        let io = candle_core::safetensors::load(f.join("io.safetensors"), &Device::Cpu).unwrap();
        let want = io["lora_loss"].to_scalar::<f32>().unwrap() as f64;
        let (ok, out, err) = model_cmd(
            "score",
            &f,
            Some(&f.join("adapter")),
            &["--data", data.to_str().unwrap(), "--json"],
        );
        assert!(ok, "{family}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let loss = v["loss"].as_f64().unwrap();
        assert!(
            ((loss - want) / want).abs() < 1e-5,
            "{family}: loss {loss}, transformers + PEFT {want}"
        );
    }
}

#[test]
fn model_score_recomputes_the_reference_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("val.jsonl");
    fixture_examples(&fixture(), &data);
    let io =
        candle_core::safetensors::load(fixture().join("io.safetensors"), &Device::Cpu).unwrap();
    let want = io["lora_loss"].to_scalar::<f32>().unwrap() as f64;
    let f = fixture();
    let mut losses = Vec::new();
    for batch in ["1", "8"] {
        let (ok, out, err) = model_cmd(
            "score",
            &f,
            Some(&f.join("adapter")),
            &["--data", data.to_str().unwrap(), "--batch", batch, "--json"],
        );
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["examples", "loss", "perplexity", "tokens"]);
        let loss = v["loss"].as_f64().unwrap();
        assert!(
            ((loss - want) / want).abs() < 1e-5,
            "batch {batch}: loss {loss}, transformers + PEFT {want}"
        );
        assert!((v["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9 * loss.exp());
        assert_eq!(v["examples"], 2);
        let labels = io["labels"].to_vec2::<i64>().unwrap();
        let tokens: usize = labels
            .iter()
            .map(|r| r[1..].iter().filter(|l| **l != -100).count())
            .sum();
        assert_eq!(v["tokens"], tokens);
        losses.push(loss);
    }
    assert!((losses[0] - losses[1]).abs() < 1e-6, "{losses:?}");

    // Without the adapter: a different loss; a bad line is named by file and line.
    let (ok, out, err) = model_cmd("score", &f, None, &["--data", data.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("perplexity") && out.contains("2 examples"),
        "{out}"
    );
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"id\":\"bad\",\"input_ids\":[2,5],\"labels\":[-100]}\n");
    std::fs::write(&data, text).unwrap();
    let (ok, _, err) = model_cmd("score", &f, None, &["--data", data.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("val.jsonl:3") && err.contains("2 input_ids but 1 labels"),
        "{err}"
    );
}
