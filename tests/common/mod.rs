//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::Tensor;
use std::path::PathBuf;

/// The parity fixture of a family (`gemma2`, `gemma3`, `qwen3`, `llama`): `{FAMILY}_FIXTURE`
/// (`GEMMA2_FIXTURE`…), or the repository's own `tests/fixtures/{family}-tiny` (made by
/// `scripts/make_fixture.py --family {family}`).
pub fn family_fixture(family: &str) -> PathBuf {
    match std::env::var(format!("{}_FIXTURE", family.to_uppercase())) {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("{family}-tiny")),
    }
}

/// The Gemma-2 fixture (see [`family_fixture`]).
pub fn fixture() -> PathBuf {
    family_fixture("gemma2")
}

/// The Gemma-3 (text) fixture (see [`family_fixture`]).
pub fn gemma3_fixture() -> PathBuf {
    family_fixture("gemma3")
}

/// The binary, ready for arguments: offline and without a Hub token, since tests use only
/// what the repository ships or makes itself.
pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_socratune"));
    c.env("HF_HUB_OFFLINE", "1").env_remove("HF_TOKEN");
    c
}

/// Runs the binary with `args` in `cwd`: (success, stdout, stderr).
pub fn socratune_in(cwd: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    outcome(bin().args(args).current_dir(cwd))
}

/// Runs the binary with `args` and the environment variables `envs` on top of [`bin`]'s:
/// (success, stdout, stderr).
pub fn socratune_env(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = bin();
    c.args(args).envs(envs.iter().copied());
    outcome(&mut c)
}

/// Runs `c` to its end: (success, stdout, stderr).
pub fn outcome(c: &mut std::process::Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs the binary with `args` in `cwd`, `input` on its stdin; waits for it.
pub fn with_stdin(cwd: &std::path::Path, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = bin()
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Writes `run/data/stats.json` as `data build` wrote it for variant model8 (pairs 0, four
/// utterances, prefix ソクラテスさん。; tests/fixtures/stats/model8.json), naming `tokenizer`.
pub fn write_model8_stats(run: &std::path::Path, tokenizer: &std::path::Path) {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats/model8.json");
    let mut stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    stats["tokenizer"] = tokenizer.to_str().unwrap().into();
    std::fs::create_dir_all(run.join("data")).unwrap();
    std::fs::write(run.join("data/stats.json"), stats.to_string()).unwrap();
}

/// `socratune train` of `model` (f32 on the CPU) on the data folder `data` into the run
/// folder `out`, under an empty config file (every option at its default unless a flag in
/// `extra` says otherwise).
pub fn train_cmd(
    model: &std::path::Path,
    data: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Command {
    let config = out.with_extension("toml");
    std::fs::write(&config, "# defaults\n").unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let mut c = bin();
    c.args(["train", "--data", &path(data), "--out", &path(out)])
        .args(["--model", &path(model), "--device", "cpu", "--dtype", "f32"])
        .args(["--config", &path(&config)])
        .args(extra);
    c
}

/// Runs `c`, fails the test with its stderr unless it succeeds, and returns its stdout.
pub fn run_ok(mut c: std::process::Command) -> String {
    let (ok, out, err) = outcome(&mut c);
    assert!(ok, "stderr: {err}");
    out
}

/// Starts `c` (its output discarded) and returns the child as soon as `path` exists (or the
/// child ended, or a minute passed), for the caller to stop it right there.
pub fn spawn_until(mut c: std::process::Command, path: &std::path::Path) -> std::process::Child {
    use std::process::Stdio;
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !path.exists() && std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child
}

/// The tensors of a PEFT adapter folder.
pub fn adapter_tensors(dir: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(
        dir.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

/// max |a − b| over every tensor of two sets with the same names.
pub fn max_diff_all(
    a: &std::collections::HashMap<String, Tensor>,
    b: &std::collections::HashMap<String, Tensor>,
) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, t)| max_abs_diff(t, &b[k]))
        .fold(0.0, f32::max)
}

/// max |t| over all elements.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A running `socratune serve` child process; killed when dropped.
pub struct ServeChild {
    pub child: std::process::Child,
    /// `host:port`
    pub addr: String,
}

impl ServeChild {
    /// Starts `serve` on the fixture (port 0, CPU) with the tokenizer file `tok` and `extra`
    /// arguments, and waits for the address it prints.
    pub fn start(tok: &std::path::Path, extra: &[&str]) -> Self {
        Self::start_on(&fixture(), tok, extra)
    }

    /// [`ServeChild::start`] on the model folder `f`.
    pub fn start_on(f: &std::path::Path, tok: &std::path::Path, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = bin()
            .args(["serve", "--model", f.to_str().unwrap()])
            .args(["--tokenizer", tok.to_str().unwrap(), "--device", "cpu"])
            .args(["--port", "0"])
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        for _ in 0..20 {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                break;
            }
            seen.push_str(&line);
            if let Some(rest) = line.split("http://").nth(1) {
                let addr = rest.split("/v1").next().unwrap().to_string();
                // Keep draining stderr so that the child never blocks on it.
                std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
                return Self { child, addr };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("no address in: {seen}")
    }

    /// Resident memory of the process, in MiB (Linux).
    pub fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `socratune eval` over `runs` with the project files `fake_llm::eval_project` writes
/// (synth.toml, prompts/, eval.toml) on the CPU, then `extra`.
pub fn eval_args<'a>(runs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "eval",
        "--runs",
        runs,
        "--config",
        "synth.toml",
        "--prompt-templates",
        "prompts",
        "--eval-config",
        "eval.toml",
        "--device",
        "cpu",
    ];
    a.extend(extra);
    a
}
