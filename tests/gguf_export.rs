//! `socratune export --format gguf` end to end: the file read back by candle's GGUF reader
//! (metadata, tokenizer, every tensor against the merged model), the Modelfile, and the
//! inputs it must refuse.

mod common;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use common::fixture;
use socratune::model::{adapter, load, Source};
use std::path::{Path, PathBuf};

fn socratune(args: &[&str]) -> (bool, String, String) {
    common::socratune_in(Path::new("."), args)
}

/// The fixture's model with a small byte-level tokenizer beside it.
fn base_with_tokenizer(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), base.join(f)).unwrap();
    }
    let tok = socratune::dataset::tokenizer::train_small(
        &[
            "正義とは何だと思うかね？",
            "では法が間違っていたら、どうするのかね？",
        ],
        384,
    )
    .unwrap();
    tok.save(base.join("tokenizer.json"), false).unwrap();
    base
}

fn export(base: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "export",
        "--format",
        "gguf",
        "--adapter",
        fixture()
            .join("adapter")
            .to_str()
            .unwrap()
            .to_owned()
            .leak(),
        "--model",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    socratune(&args)
}

#[test]
fn gguf_round_trips_through_candles_reader_with_the_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_with_tokenizer(dir.path());
    let mut merged = load(&Source::Local(base.clone()), DType::F32, &Device::Cpu).unwrap();
    adapter::load(&mut merged, &fixture().join("adapter")).unwrap();
    merged.merge_lora().unwrap();
    let weights: std::collections::HashMap<String, Tensor> =
        merged.named_weights().unwrap().into_iter().collect();
    // The fixture's query_pre_attn_scalar is 20 and its head_dim 16: llama.cpp scales by
    // 1/sqrt(16), so the export folds sqrt(16/20) into attn_q.
    let q_fold = (16f64 / 20.0).sqrt();

    for (quant, tol) in [("f16", 2e-3f32), ("q8_0", 2e-2), ("q4_k_m", 0.15)] {
        let out = dir.path().join("out").join(format!("m.{quant}.gguf"));
        let (ok, stdout, err) = export(&base, &out, &["--quant", quant]);
        assert!(ok, "{err}");
        assert!(stdout.contains(&format!("GGUF {quant}")), "{stdout}");
        let mut f = std::fs::File::open(&out).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        let md = |k: &str| {
            c.metadata
                .get(k)
                .unwrap_or_else(|| panic!("{quant}: no {k}"))
        };
        assert_eq!(md("general.architecture").to_string().unwrap(), "gemma2");
        assert_eq!(md("gemma2.block_count").to_u32().unwrap(), 4);
        assert_eq!(md("gemma2.attention.head_count_kv").to_u32().unwrap(), 2);
        assert_eq!(md("gemma2.attention.sliding_window").to_u32().unwrap(), 7);
        assert_eq!(md("gemma2.final_logit_softcapping").to_f32().unwrap(), 30.0);
        assert_eq!(md("tokenizer.ggml.model").to_string().unwrap(), "gpt2");
        assert_eq!(md("tokenizer.ggml.tokens").to_vec().unwrap().len(), 384);
        assert_eq!(md("tokenizer.ggml.eot_token_id").to_u32().unwrap(), 107);
        assert!(md("tokenizer.chat_template")
            .to_string()
            .unwrap()
            .contains("<start_of_turn>"));
        assert_eq!(c.tensor_infos.len(), 2 + 11 * 4, "{quant}");

        let family = &socratune::gguf::family::GEMMA2;
        for (hf, w) in &weights {
            let name = family.gguf_name(hf).unwrap();
            let got = c
                .tensor(&mut f, &name, &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            let want = if name.ends_with("norm.weight") {
                (w + 1.0).unwrap()
            } else if name.ends_with("attn_q.weight") {
                (w * q_fold).unwrap()
            } else {
                w.clone()
            };
            assert_eq!(got.dims(), want.dims(), "{name}");
            let scale = common::max_abs(&want);
            let d = common::max_abs_diff(&got, &want);
            assert!(
                d <= tol * scale,
                "{quant} {name}: differs by {d} (scale {scale})"
            );
        }
    }
}

#[test]
fn ollama_writes_a_modelfile_beside_the_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_with_tokenizer(dir.path());
    let cfg = dir.path().join("chat.toml");
    std::fs::write(
        &cfg,
        "opening = \"正義とは何だろうか？\"\n[sampling]\ntemperature = 0.5\ntop_k = 0\n",
    )
    .unwrap();
    // The base model's template wins over Gemma's; a chat_template.jinja over the config's.
    std::fs::write(
        base.join("tokenizer_config.json"),
        r#"{"chat_template": "from-config", "add_bos_token": true}"#,
    )
    .unwrap();
    std::fs::write(base.join("chat_template.jinja"), "from-jinja").unwrap();
    let out = dir.path().join("exports").join("socrates.gguf");
    let (ok, stdout, err) = export(
        &base,
        &out,
        &[
            "--quant",
            "q4_0",
            "--ollama",
            "--chat-config",
            cfg.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let modelfile = dir.path().join("exports").join("Modelfile");
    assert!(stdout.contains("ollama create"), "{stdout}");
    let m = std::fs::read_to_string(&modelfile).unwrap();
    assert!(m.contains("FROM ./socrates.gguf\n"), "{m}");
    assert!(m.contains("PARAMETER stop \"<end_of_turn>\""), "{m}");
    assert!(m.contains("PARAMETER temperature 0.5\n"), "{m}");
    assert!(m.contains("PARAMETER top_k 0\n"), "{m}");
    assert!(
        m.contains("MESSAGE assistant \"\"\"正義とは何だろうか？\"\"\""),
        "{m}"
    );
    let c = gguf_file::Content::read(&mut std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(
        c.metadata["tokenizer.chat_template"].to_string().unwrap(),
        "from-jinja"
    );
}

/// The run's variant's system text and prefix go into the Modelfile; `--system` and `--prefix`
/// replace them ("" drops them).
#[test]
fn ollama_modelfile_has_the_runs_system_text_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_with_tokenizer(dir.path());
    let run = dir.path().join("run");
    let adapter_dir = run.join("best");
    std::fs::create_dir_all(&adapter_dir).unwrap();
    for e in std::fs::read_dir(fixture().join("adapter")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), adapter_dir.join(e.file_name())).unwrap();
    }
    common::write_model8_stats(&run, &base.join("tokenizer.json"));
    let stats = run.join("data/stats.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    v["config"]["system"] = "あなたはソクラテスです。".into();
    std::fs::write(&stats, v.to_string()).unwrap();
    let out = dir.path().join("exports").join("socrates.gguf");
    let modelfile = dir.path().join("exports").join("Modelfile");
    let run_export = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "--format",
            "gguf",
            "--adapter",
            adapter_dir.to_str().unwrap(),
            "--model",
            base.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--ollama",
            "--opening",
            "正義とは？",
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = socratune(&args);
        assert!(ok, "{err}");
        std::fs::read_to_string(&modelfile).unwrap()
    };
    let m = run_export(&[]);
    assert!(
        m.contains("SYSTEM \"\"\"あなたはソクラテスです。\"\"\"\n"),
        "{m}"
    );
    assert!(
        m.contains("{{- $prefix := \"ソクラテスさん。\" }}\n"),
        "{m}"
    );
    let m = run_export(&["--system", "S", "--prefix", "P"]);
    assert!(m.contains("SYSTEM \"\"\"S\"\"\"\n"), "{m}");
    assert!(m.contains("{{- $prefix := \"P\" }}\n"), "{m}");
    let m = run_export(&["--system", "", "--prefix", ""]);
    assert!(!m.contains("SYSTEM"), "{m}");
    assert!(m.contains("{{- $prefix := \"\" }}\n"), "{m}");
}

#[test]
fn bad_requests_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_with_tokenizer(dir.path());
    let out = dir.path().join("m.gguf");
    let (ok, _, err) = export(&base, &out, &["--quant", "q3_k"]);
    assert!(!ok && err.contains("unknown quantization `q3_k`"), "{err}");

    let (ok, _, err) = socratune(&[
        "export",
        "--adapter",
        fixture().join("adapter").to_str().unwrap(),
        "--model",
        base.to_str().unwrap(),
        "--out",
        dir.path().join("st").to_str().unwrap(),
        "--ollama",
    ]);
    assert!(!ok && err.contains("--ollama needs --format gguf"), "{err}");
    let (ok, _, err) = export(&base, &out, &["--prefix", "P"]);
    assert!(!ok && err.contains("need --ollama"), "{err}");

    let (ok, _, err) = export(
        &base,
        &out,
        &[
            "--ollama",
            "--chat-config",
            dir.path().join("none.toml").to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("none.toml"), "{err}");

    // No tokenizer to embed.
    std::fs::remove_file(base.join("tokenizer.json")).unwrap();
    let (ok, _, err) = export(&base, &out, &[]);
    assert!(
        !ok && err.contains("no tokenizer.model or tokenizer.json"),
        "{err}"
    );
    assert!(!out.exists());
}
