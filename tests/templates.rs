//! The fallback variants (`configs/variants-fallback`: a system line; Alpaca) through every
//! command that reads a variant — `data stats`, `sweep --variants-dir` (data build, train,
//! compare), `eval` (replies only), `chat` and `serve` with a run's adapter — on the Gemma-2 fixture with a Gemma
//! tokenizer and on the Qwen3 fixture with a Qwen3 tokenizer, each family's template rendered.

mod common;
mod fake_llm;
use common::{family_fixture, socratune_in};
use socratune::dataset::{ChatTemplate, ChatTokenizer, Variant};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(args: &[&str], cwd: &Path) -> String {
    let (ok, out, err) = socratune_in(cwd, args);
    assert!(ok, "socratune {args:?}: {err}");
    out + &err
}

/// The first record of a run's training data: ids and labels.
fn first_record(runs: &Path, variant: &str) -> (Vec<u32>, Vec<i64>) {
    let text = std::fs::read_to_string(runs.join(variant).join("data/train.jsonl")).unwrap();
    let r: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let ids = serde_json::from_value(r["input_ids"].clone()).unwrap();
    let labels = serde_json::from_value(r["labels"].clone()).unwrap();
    (ids, labels)
}

/// A copy of the model at `fixture` in `to` whose context is `context` tokens: Llama-3's
/// system header (always rendered) and the fallback variant's system text make held-out
/// prompts longer than the fixtures' 256.
fn with_context(fixture: &Path, to: &Path, context: u64) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(fixture).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let config = to.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["max_position_embeddings"] = context.into();
    std::fs::write(&config, c.to_string()).unwrap();
    to.to_path_buf()
}

fn fallback_variants_run_everywhere(family: &str, template: ChatTemplate) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sample = repo().join("data/dialogues/sample.jsonl");
    let variants = repo().join("configs/variants-fallback");
    let model = with_context(&family_fixture(family), &d.join("model"), 1024);
    let tok = d.join("tokenizer.json");
    let name = template.name();
    let out = run(
        &[
            "data",
            "tokenizer",
            "--dialogues",
            s(&sample),
            "--template",
            name,
            "--vocab-size",
            "384",
            "--out",
            s(&tok),
        ],
        d,
    );
    assert!(out.contains(&format!("{name} chat template")), "{out}");
    let corpus = [
        "--dialogues",
        s(&sample),
        "--tokenizer",
        s(&tok),
        "--include-unjudged",
        "--skip-bad",
    ];

    // Statistics: both variants, the system text counted as template tokens.
    let mut args = vec!["data", "stats", "--variants", s(&variants), "--json"];
    args.extend(corpus);
    let out = run(&args, d);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        assert!(r["examples"].as_u64().unwrap() > 0, "{r}");
        assert!(r["template_tokens"].as_f64().unwrap() > 10.0, "{r}");
    }

    // The sweep builds, trains and compares both.
    std::fs::write(
        d.join("train.toml"),
        "lora_dropout = 0.0\neval_every = 2\nsave_every = 2\n",
    )
    .unwrap();
    let sweep = |variants: &Path, runs: &str| {
        let mut args = vec![
            "sweep",
            "--variants-dir",
            s(variants),
            "--runs",
            runs,
            "--config",
            "train.toml",
            "--max-len",
            "256",
            "--overflow",
            "truncate",
            "--model",
            s(&model),
            "--device",
            "cpu",
            "--max-steps",
            "2",
            "--micro-batch",
            "2",
        ];
        args.extend(corpus);
        run(&args, d)
    };
    let out = sweep(&variants, "runs");
    assert!(
        out.contains("| fallback-alpaca |") && out.contains("| fallback-system |"),
        "{out}"
    );
    let runs = d.join("runs");
    for v in ["fallback-alpaca", "fallback-system"] {
        assert!(runs.join(v).join("best/adapter_model.safetensors").exists());
        let stats = std::fs::read_to_string(runs.join(v).join("data/stats.json")).unwrap();
        assert!(stats.contains("\"system\": \""), "{stats}");
    }

    // Eval (replies only, so no judge is called) prompts each run in its own layout. The
    // shipped system lines leave no room in the fixture's 256-token context with this tiny
    // vocabulary, so these runs say less.
    let short = d.join("short");
    std::fs::create_dir(&short).unwrap();
    for v in Variant::load_dir(&variants).unwrap() {
        let system = "問い返して。";
        let format = v.layout.format.name();
        std::fs::write(
            short.join(format!("{}.toml", v.name)),
            format!(
                "name = \"{}\"\npairs = \"{}\"\nutterances = {}\nformat = \"{format}\"\nsystem = \"{system}\"\n",
                v.name, v.pairs, v.utterances
            ),
        )
        .unwrap();
    }
    sweep(&short, "short-runs");
    let srv = fake_llm::FakeLlm::start();
    fake_llm::eval_project(d, &srv.base_url, "SOCRATUNE_TEMPLATES_TEST_KEY");
    std::fs::write(
        d.join("eval.toml"),
        "prompts = 2\nseed = 3\nresamples = 20\n[sampling]\ntemperature = 0\nmax_new_tokens = 3\n",
    )
    .unwrap();
    let (ok, out, err) = socratune_in(
        d,
        &common::eval_args(
            "short-runs",
            &[
                "--judge",
                "none",
                "--model",
                s(&model),
                "--tokenizer",
                s(&tok),
            ],
        ),
    );
    assert!(ok, "{err}");
    assert!(out.contains("| fallback-alpaca |"), "{out}");
    assert_eq!(srv.count(), 0);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("short-runs/eval.json")).unwrap())
            .unwrap();
    let formats = report.to_string();
    assert!(
        formats.contains("Alpaca format") && formats.contains("system \\\"問い返して。"),
        "{formats}"
    );

    // The data (whole examples, without the sweep's cut) is rendered in the family's template
    // with the variant's layout.
    let mut args = vec![
        "data",
        "build",
        "--all",
        "--variants",
        s(&variants),
        "--out",
        "built",
    ];
    args.extend(corpus);
    run(&args, d);
    let built = d.join("built");
    let ct = ChatTokenizer::from_file(&tok).unwrap();
    let sp = ct.specials;
    let text = |ids: &[u32]| ct.inner().decode(ids, false).unwrap();
    let (ids, labels) = first_record(&built, "fallback-system");
    let system = text(&ids);
    assert!(
        system.contains("あなたは古代ギリシャの哲学者ソクラテスです。"),
        "{system}"
    );
    match template {
        ChatTemplate::Qwen3 => {
            assert_eq!(
                ids[0], sp.start_of_turn,
                "Qwen3: no BOS, a system turn first"
            );
            assert!(system.starts_with("<|im_start|>system\n"), "{system}");
            assert!(system.contains("<think>\n\n</think>\n\n"), "{system}");
        }
        ChatTemplate::Llama3 => {
            assert_eq!(ids[..2], [sp.bos.unwrap(), sp.start_of_turn]);
            assert!(
                system.starts_with(
                    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
                     Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nあなたは"
                ),
                "{system}"
            );
        }
        ChatTemplate::Gemma => {
            assert_eq!(ids[..2], [sp.bos.unwrap(), sp.start_of_turn]);
            assert!(
                system.starts_with("<bos><start_of_turn>user\nあなたは"),
                "{system}"
            );
        }
    }
    let (ids, alabels) = first_record(&built, "fallback-alpaca");
    let alpaca = text(&ids);
    assert!(alpaca.contains("\n\n### Instruction:\n"), "{alpaca}");
    assert!(alpaca.contains("\n\n### Response:\n"), "{alpaca}");
    assert!(!ids.contains(&sp.start_of_turn), "Alpaca is plain text");
    for l in [&labels, &alabels] {
        let last = l.iter().rev().find(|&&l| l != -100).unwrap();
        assert_eq!(
            *last, sp.end_of_turn as i64,
            "the reply's end of turn is trained"
        );
    }

    // Chat with the Alpaca run's adapter: its variant (and so its layout) from stats.json.
    let adapter = runs.join("fallback-alpaca/best");
    let args = [
        "chat",
        "--model",
        s(&model),
        "--tokenizer",
        s(&tok),
        "--adapter",
        s(&adapter),
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        "--seed",
        "3",
        "--opening",
        "正義とは？",
    ];
    let out = common::with_stdin(d, &args, "勇気とは？\n/quit\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("variant fallback-alpaca") && err.contains("Alpaca format"),
        "{err}"
    );
    assert!(
        err.contains("system \"以下は、ある人からの問いかけです。"),
        "{err}"
    );

    // Serve the system-line run; a request's system message replaces the variant's.
    let adapter = runs.join("fallback-system/best");
    let server = common::ServeChild::start_on(&model, &tok, &["--adapter", s(&adapter)]);
    let url = format!("http://{}/v1/chat/completions", server.addr);
    let tokens = |messages: serde_json::Value| {
        let r: serde_json::Value = ureq::post(&url)
            .send_json(serde_json::json!({"messages": messages, "max_tokens": 2}))
            .unwrap()
            .into_json()
            .unwrap();
        r["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let user = serde_json::json!({"role": "user", "content": "正義とは？"});
    let with_variant = tokens(serde_json::json!([user]));
    let with_own = tokens(serde_json::json!([{"role": "system", "content": "短く。"}, user]));
    assert!(
        with_own < with_variant,
        "a short system text replaces the variant's long one: {with_own} vs {with_variant}"
    );
}

#[test]
fn fallback_variants_on_gemma() {
    fallback_variants_run_everywhere("gemma2", ChatTemplate::Gemma);
}

#[test]
fn fallback_variants_on_qwen3() {
    fallback_variants_run_everywhere("qwen3", ChatTemplate::Qwen3);
}

#[test]
fn fallback_variants_on_llama() {
    fallback_variants_run_everywhere("llama", ChatTemplate::Llama3);
}

/// A tokenizer of another family than the model's is refused, both named.
#[test]
fn a_tokenizer_of_another_family_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    socratune::dataset::tokenizer::train_small_for(ChatTemplate::Llama3, &["正義とは？"], 384)
        .unwrap()
        .save(&tok, false)
        .unwrap();
    let model = family_fixture("qwen3");
    let (ok, _, err) = socratune_in(
        dir.path(),
        &[
            "chat",
            "--model",
            s(&model),
            "--tokenizer",
            s(&tok),
            "--device",
            "cpu",
            "--opening",
            "正義とは？",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("the tokenizer has the llama3 chat template's special tokens")
            && err.contains("qwen3 model (template qwen3)"),
        "{err}"
    );
}
