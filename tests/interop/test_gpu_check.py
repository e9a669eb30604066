"""scripts/gpu-check.sh end to end in its CPU dry-run mode (`--device cpu`, the `tiny` preset):
every step runs — the parity test binary in f32 and bf16, `bench train` and the transformers +
PEFT reference, the real-length corpus made with socratune's data commands and
`bench train --data`, `bench generate` — and the one JSON summary carries every figure.

The parity binary is the one `cargo test --release` built (newest target/release/deps/parity-*),
or SOCRATUNE_PARITY_BIN."""
import json
import os
import subprocess
import sys

from conftest import BIN, ROOT, figure


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    cmd = [str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--bin", str(BIN),
           "--out", str(tmp_path / "out")]
    if os.environ.get("SOCRATUNE_PARITY_BIN"):
        cmd += ["--parity", os.environ["SOCRATUNE_PARITY_BIN"]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=480, cwd=ROOT,
                       env={**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"})
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 1, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    s = json.loads(lines[0])
    assert s["failed"] == [], s
    assert s["parity_f32"]["passed"] and s["parity_bf16"]["passed"], s
    for side in ("train", "reference"):
        assert s[side]["tokens_per_s"] > 0 and s[side]["peak_mem_bytes"] > 0, s
    assert s["ratio_tokens_per_s"] > 0 and s["ratio_peak_mem"] > 0, s
    # No GPU: no peak to compare with, said as null rather than made up.
    assert s["gpu"] is None and s["train"]["bf16_peak_fraction"] is None, s
    b = s["batching"]
    assert (b["max_tokens"], round(b["mean_tokens"])) == (535, 266), b
    assert set(b["layouts"]) == {"padded", "grouped", "budget_padded", "budget_grouped", "packed"}
    assert b["layouts"]["grouped"]["padding_share"] < b["layouts"]["padded"]["padding_share"]
    # Packed rows: almost no padding, a real speed measured against padded.
    assert b["layouts"]["packed"]["padding_share"] < 0.05, b
    assert b["packed_vs_padded"] > 0 and b["packed_vs_budget_padded"] > 0, b
    assert s["generate"]["decode_tokens_per_s"] > 0, s
    figure(f"gpu-check --device cpu: ratio {s['ratio_tokens_per_s']}x tokens/s, "
           f"grouped {b['layouts']['grouped']['speedup_vs_padded']}x padded, "
           f"packed {b['packed_vs_padded']}x padded real tokens/s (tiny, real lengths)")


def test_gpu_check_refuses_a_missing_binary(tmp_path):
    r = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu",
                        "--bin", str(tmp_path / "nothing")], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "no socratune binary" in r.stderr, r.stderr


def test_gpu_check_keeps_its_time_budget_and_still_reports(tmp_path):
    """Steps past the budget are skipped and named; the summary still comes, exit status 1."""
    r = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--bin",
                        str(BIN), "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": "2"})
    assert r.returncode == 1, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert "generate" in s["failed"] and s["generate"] is None, s
    assert "skipped (no time left)" in r.stderr
