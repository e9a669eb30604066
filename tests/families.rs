//! Gemma-3 (text) through every command on its fixture (`tests/fixtures/gemma3-tiny`): train,
//! killed and resumed; `model score` against transformers + PEFT; chat; serve; export to
//! safetensors (reloaded) and to GGUF (read back). Qwen3 and Llama-3 train, resume and chat
//! here too (their score, export and serve run in `model_cli.rs` and the interop layer).
//! Gemma-2 runs the same commands in the other files.

mod common;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use common::{adapter_tensors, family_fixture, gemma3_fixture, run_ok, socratune_in, spawn_until};
use socratune::dataset::ChatTemplate;
use socratune::model::{adapter, load, Source};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn socratune(args: &[&str]) -> (bool, String, String) {
    socratune_in(Path::new("."), args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fixture's reference rows as `train.jsonl` and `val.jsonl` (padding stripped; the
/// training file repeats them `copies` times).
fn write_data(fixture: &Path, dir: &Path, copies: usize) -> PathBuf {
    let io = candle_core::safetensors::load(fixture.join("io.safetensors"), &Device::Cpu).unwrap();
    let ids = io["input_ids"].to_vec2::<i64>().unwrap();
    let mask = io["attention_mask"].to_vec2::<i64>().unwrap();
    let labels = io["labels"].to_vec2::<i64>().unwrap();
    let line = |row: usize, copy: usize| {
        let n = mask[row].iter().filter(|m| **m == 1).count();
        serde_json::json!({
            "id": format!("row{row}-{copy}"),
            "dialogue": format!("d{row}"),
            "input_ids": &ids[row][..n],
            "labels": &labels[row][..n],
        })
        .to_string()
            + "\n"
    };
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let train: String = (0..copies)
        .flat_map(|c| (0..ids.len()).map(move |r| (r, c)))
        .map(|(r, c)| line(r, c))
        .collect();
    std::fs::write(data.join("train.jsonl"), train).unwrap();
    let val: String = (0..ids.len()).map(|r| line(r, 0)).collect();
    std::fs::write(data.join("val.jsonl"), val).unwrap();
    data
}

/// A small byte-level tokenizer with the special tokens of `family`'s chat template, whose ids
/// fit the fixture's 384-token vocabulary.
fn tokenizer(path: &Path, family: ChatTemplate) {
    let t = socratune::dataset::tokenizer::train_small_for(
        family,
        &[
            "正義とは何だと思うかね？",
            "では法が間違っていたら、どうするのかね？",
        ],
        384,
    )
    .unwrap();
    t.save(path, false).unwrap();
}

fn train_cmd(fixture: &Path, data: &Path, out: &Path) -> Command {
    common::train_cmd(
        fixture,
        data,
        out,
        &[
            "--max-steps",
            "40",
            "--micro-batch",
            "2",
            "--grad-accum",
            "1",
            "--save-every",
            "1",
            "--eval-every",
            "10",
            "--lr",
            "5e-3",
            "--lora-dropout",
            "0.1",
        ],
    )
}

/// Trains on a family's fixture, kills a second run with SIGKILL and resumes it: the adapter
/// is the uninterrupted run's.
fn trains_and_resumes_after_kill_9_to_the_same_adapter(fixture: &Path, layers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(fixture, dir.path(), 12);
    let reference = dir.path().join("ref");
    let log = run_ok(train_cmd(fixture, &data, &reference));
    assert!(log.contains("completed after 40 steps"), "{log}");

    let run = dir.path().join("killed");
    let mut child = spawn_until(
        train_cmd(fixture, &data, &run),
        &run.join("checkpoints/step-5"),
    );
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    assert!(
        !run.join("summary.json").exists(),
        "the run finished before it was killed"
    );
    let mut resume = train_cmd(fixture, &data, &run);
    resume.arg("--resume");
    run_ok(resume);
    let (a, b) = (
        adapter_tensors(&reference.join("adapter")),
        adapter_tensors(&run.join("adapter")),
    );
    // Every layer, seven projections, A and B.
    assert_eq!(a.len(), layers * 7 * 2);
    for (k, t) in &a {
        let d = common::max_abs_diff(t, &b[k]);
        assert!(d <= 1e-6, "{k}: resumed adapter differs by {d}");
    }
}

#[test]
fn gemma3_trains_and_resumes_after_kill_9_to_the_same_adapter() {
    trains_and_resumes_after_kill_9_to_the_same_adapter(&gemma3_fixture(), 6);
}

#[test]
fn qwen3_trains_and_resumes_after_kill_9_to_the_same_adapter() {
    trains_and_resumes_after_kill_9_to_the_same_adapter(&family_fixture("qwen3"), 4);
}

#[test]
fn llama_trains_and_resumes_after_kill_9_to_the_same_adapter() {
    trains_and_resumes_after_kill_9_to_the_same_adapter(&family_fixture("llama"), 4);
}

#[test]
fn gemma3_model_score_recomputes_the_reference_loss() {
    let dir = tempfile::tempdir().unwrap();
    let f = gemma3_fixture();
    let data = write_data(&f, dir.path(), 1);
    let io = candle_core::safetensors::load(f.join("io.safetensors"), &Device::Cpu).unwrap();
    let want = io["lora_loss"].to_scalar::<f32>().unwrap() as f64;
    let (ok, out, err) = socratune(&[
        "model",
        "score",
        "--model",
        s(&f),
        "--adapter",
        s(&f.join("adapter")),
        "--data",
        s(&data.join("val.jsonl")),
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let loss = v["loss"].as_f64().unwrap();
    assert!(
        ((loss - want) / want).abs() < 1e-5,
        "loss {loss}, transformers + PEFT {want}"
    );
}

/// `chat` with a family's fixture and adapter: one exchange, saved; stderr names the model
/// as `summary` starts.
fn chats_with_its_adapter(f: &Path, family: ChatTemplate, summary: &str) {
    let dir = tempfile::tempdir().unwrap();
    let adapter = f.join("adapter").display().to_string();
    let tok = dir.path().join("tokenizer.json");
    tokenizer(&tok, family);
    let args = [
        "chat",
        "--model",
        s(f),
        "--tokenizer",
        s(&tok),
        "--adapter",
        &adapter,
        "--device",
        "cpu",
        "--max-new-tokens",
        "8",
        "--seed",
        "3",
        "--opening",
        "正義とは？",
    ];
    let out = common::with_stdin(dir.path(), &args, "勇気とは？\n/save talk.jsonl\n/quit\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(summary), "{err}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("talk.jsonl")).unwrap())
            .unwrap();
    let turns = saved["turns"].as_array().unwrap();
    let roles: Vec<&str> = turns.iter().map(|t| t["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user", "model"]);
}

#[test]
fn gemma3_chats_with_its_adapter() {
    chats_with_its_adapter(
        &gemma3_fixture(),
        ChatTemplate::Gemma,
        "gemma3_text, 6 layers",
    );
}

#[test]
fn qwen3_and_llama_chat_with_their_adapters() {
    chats_with_its_adapter(
        &family_fixture("qwen3"),
        ChatTemplate::Qwen3,
        "qwen3, 4 layers",
    );
    chats_with_its_adapter(
        &family_fixture("llama"),
        ChatTemplate::Llama3,
        "llama, 4 layers",
    );
}

#[test]
fn gemma3_serves_the_openai_api() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    tokenizer(&tok, ChatTemplate::Gemma);
    let f = gemma3_fixture();
    let server = common::ServeChild::start_on(
        &f,
        &tok,
        &["--adapter", s(&f.join("adapter")), "--name", "g3"],
    );
    let r = ureq::post(&format!("http://{}/v1/chat/completions", server.addr)).send_json(
        serde_json::json!({"model": "g3", "messages": [{"role": "user", "content": "正義とは？"}],
            "max_tokens": 4}),
    );
    // Read the whole answer before stopping the server: its body may still be on the way.
    let v: serde_json::Value = r.unwrap().into_json().unwrap();
    drop(server);
    assert_eq!(v["model"], "g3");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 4);
}

#[test]
fn gemma3_exports_to_safetensors_and_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let f = gemma3_fixture();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for name in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(f.join(name), base.join(name)).unwrap();
    }
    tokenizer(&base.join("tokenizer.json"), ChatTemplate::Gemma);
    let adapter_dir = f.join("adapter");

    // Safetensors: the base's config kept as written, the merged model reloads with the
    // adapter's logits.
    let out = dir.path().join("merged");
    let (ok, _, err) = socratune(&[
        "export",
        "--adapter",
        s(&adapter_dir),
        "--model",
        s(&base),
        "--out",
        s(&out),
        "--dtype",
        "f32",
    ]);
    assert!(ok, "{err}");
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let mut want_cfg = read(&base.join("config.json"));
    want_cfg["dtype"] = "float32".into();
    want_cfg["torch_dtype"] = "float32".into();
    assert_eq!(read(&out.join("config.json")), want_cfg);
    let ids = Tensor::new(&[[2u32, 40, 41, 42, 7, 9, 11, 13, 200, 5]], &Device::Cpu).unwrap();
    let mut with_adapter = load(&Source::Local(f.clone()), DType::F32, &Device::Cpu).unwrap();
    adapter::load(&mut with_adapter, &adapter_dir).unwrap();
    let want = with_adapter.logits(&ids, None).unwrap();
    let merged = load(&Source::Local(out), DType::F32, &Device::Cpu).unwrap();
    let d = common::max_abs_diff(&merged.logits(&ids, None).unwrap(), &want);
    assert!(d <= 1e-4 * common::max_abs(&want).max(1.0), "{d}");

    // GGUF: llama.cpp's gemma3 layout, read back by candle's reader.
    let gguf = dir.path().join("m.f16.gguf");
    let (ok, _, err) = socratune(&[
        "export",
        "--format",
        "gguf",
        "--quant",
        "f16",
        "--adapter",
        s(&adapter_dir),
        "--model",
        s(&base),
        "--out",
        s(&gguf),
    ]);
    assert!(ok, "{err}");
    let mut file = std::fs::File::open(&gguf).unwrap();
    let c = gguf_file::Content::read(&mut file).unwrap();
    let md = |k: &str| c.metadata.get(k).unwrap_or_else(|| panic!("no {k}"));
    assert_eq!(md("general.architecture").to_string().unwrap(), "gemma3");
    assert_eq!(md("gemma3.block_count").to_u32().unwrap(), 6);
    assert_eq!(md("gemma3.rope.freq_base").to_f32().unwrap(), 10000.0);
    assert_eq!(md("gemma3.rope.freq_base_swa").to_f32().unwrap(), 100.0);
    assert_eq!(md("gemma3.rope.scaling.factor").to_f32().unwrap(), 4.0);
    assert_eq!(md("gemma3.attention.sliding_window").to_u32().unwrap(), 7);
    assert_eq!(c.tensor_infos.len(), 2 + 13 * 6);
    // Gemma's (1 + w) norms, q/k norms included, are stored as llama.cpp multiplies; the
    // fixture's query_pre_attn_scalar (20, not head_dim 16) is folded into the q-norm.
    let weights: HashMap<String, Tensor> = merged_weights(&base, &adapter_dir);
    let q_norm = c
        .tensor(&mut file, "blk.2.attn_q_norm.weight", &Device::Cpu)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap();
    let want = ((&weights["model.layers.2.self_attn.q_norm.weight"] + 1.0).unwrap()
        * (16f64 / 20.0).sqrt())
    .unwrap();
    assert!(common::max_abs_diff(&q_norm, &want) < 2e-3);
}

fn merged_weights(base: &Path, adapter_dir: &Path) -> HashMap<String, Tensor> {
    let mut m = load(&Source::Local(base.to_path_buf()), DType::F32, &Device::Cpu).unwrap();
    adapter::load(&mut m, adapter_dir).unwrap();
    m.merge_lora().unwrap();
    m.named_weights().unwrap().into_iter().collect()
}
