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
    let out = bin().args(args).current_dir(cwd).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
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
