#!/usr/bin/env bash
# One-command check of a socratune build on a GPU machine (no cargo needed there), within
# about 8 minutes, ending with ONE JSON summary line on stdout:
#
#   1. the parity checks (tests/parity.rs, built as a binary) on the device in f32 and bf16,
#      against the fixture's transformers + PEFT reference outputs;
#   2. `socratune bench train` on the preset (gemma-2-2b: B=8, T=512, bf16) and
#      benches/hf_peft_reference.py on the same device: tokens/s, ratio, peak memory, and the
#      achieved fraction of the GPU's dense bf16 peak;
#   3. `bench train --data` on a corpus with the seed's model1 length profile (made here from
#      data/dialogues/sample.jsonl with socratune's own data commands): padded vs grouped vs
#      token-budget batches vs packed rows (the summary's packed_vs_budget_padded is the ratio
#      of real tokens/s at the same micro-batch token budget, packed_vs_padded against random
#      micro-batches of 4);
#   4. `socratune bench generate`.
#
# Usage, from a checkout (its tests/fixtures, data/ and benches/ are used):
#   scripts/gpu-check.sh [--bin target-cuda/release/socratune] [--parity PATH]
#                        [--device cuda|cuda:N|cpu] [--out DIR]
#
#   --bin     the binary built by scripts/build-cuda.sh (default target-cuda/release/socratune;
#             with --device cpu, target/release/socratune)
#   --parity  the parity test binary (default: `parity` beside --bin, which build-cuda.sh
#             writes; else the newest deps/parity-* that `cargo test --release` left there)
#   --device  cuda (default) runs the gemma-2-2b preset; cpu is the dry run of the whole
#             script on the `tiny` preset, for machines without a GPU (a few minutes at most)
#   --out     where each step's output and log go (default: a new temporary folder)
#
# Python with torch, transformers and peft: $PYTHON, else python3 if it has them, else the
# interop environment (scripts/interop/env.sh). The CUDA binary needs the CUDA 13 libraries on
# LD_LIBRARY_PATH (see scripts/build-cuda.sh). A step that fails or runs out of its time is
# reported as such in the summary, and the script exits with 1; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda bin="" parity="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --parity) parity=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$device" = cpu ]; then
  preset=tiny steps=5 warmup=1 data_steps=3 gen_tokens=32
  bin=${bin:-target/release/socratune}
else
  preset=gemma-2-2b steps=10 warmup=3 data_steps=8 gen_tokens=128
  bin=${bin:-target-cuda/release/socratune}
fi
fail() { echo "gpu-check: $*" >&2; exit 2; }
[ -x "$bin" ] || fail "no socratune binary at $bin (build it with scripts/build-cuda.sh, or pass --bin)"
if [ -z "$parity" ]; then
  parity="$(dirname "$bin")/parity"
  if [ ! -x "$parity" ]; then
    parity=$(ls -t "$(dirname "$bin")"/deps/parity-* 2>/dev/null | grep -v '\.d$' | head -1)
  fi
fi
[ -n "$parity" ] && [ -x "$parity" ] ||
  fail "no parity test binary beside $bin (scripts/build-cuda.sh writes one; on the CPU: cargo test --release --no-run --test parity); pass --parity"
has_libs() { "$1" -c 'import torch, transformers, peft' 2>/dev/null; }
py=${PYTHON:-}
if [ -z "$py" ]; then
  if has_libs python3; then py=python3
  elif [ -x scripts/interop/env.sh ] && py=$(scripts/interop/env.sh) && has_libs "$py"; then :
  else fail "no Python with torch, transformers and peft: set PYTHON"; fi
fi
out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$out" || fail "cannot create $out"
echo "gpu-check: $bin on $device (preset $preset), outputs in $out" >&2

# Every step has its own limit, and all of them together at most $budget seconds: the summary
# comes within 8 minutes whatever hangs.
budget=${GPU_CHECK_BUDGET_S:-470}
deadline=$((SECONDS + budget))

# run NAME SECONDS CMD...: stdout to $out/NAME.out, stderr to $out/NAME.log, status to NAME.rc.
run() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS left=$((deadline - SECONDS))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -le 0 ]; then
    echo "the check's time ($budget s) ran out before this step" >"$out/$name.log"
    : >"$out/$name.out"; echo 124 >"$out/$name.rc"; echo 0 >"$out/$name.s"
    echo "gpu-check: $name: skipped (no time left)" >&2
    return
  fi
  timeout "$limit" "$@" >"$out/$name.out" 2>"$out/$name.log"
  local rc=$?
  echo "$rc" >"$out/$name.rc"
  echo "$((SECONDS - t0))" >"$out/$name.s"
  echo "gpu-check: $name: $([ $rc = 0 ] && echo ok || echo "FAILED ($rc)") in $((SECONDS - t0)) s" >&2
}

for dt in f32 bf16; do
  PARITY_DEVICE=$device PARITY_DTYPE=$dt GEMMA2_FIXTURE=tests/fixtures/gemma2-tiny \
    run "parity_$dt" 90 "$parity" --test-threads 1
done
run train 150 "$bin" bench train --preset "$preset" --device "$device" --steps "$steps" --warmup "$warmup" --json
run reference 180 "$py" benches/hf_peft_reference.py --preset "$preset" --device "$device" --steps "$steps" --warmup "$warmup"
# A train.jsonl of the shipped sample, through socratune's own data commands.
run corpus 60 bash -c "'$bin' data tokenizer --dialogues data/dialogues/sample.jsonl --out '$out/tokenizer.json' &&
  '$bin' data build --variant model1 --dialogues data/dialogues/sample.jsonl --tokenizer '$out/tokenizer.json' --out '$out/runs'"
run data 150 "$bin" bench train --data "$out/runs/model1/data/train.jsonl" --length-profile 60,203,535 \
  --preset "$preset" --device "$device" --steps "$data_steps" --warmup 1 --json
run generate 60 "$bin" bench generate --preset "$preset" --device "$device" --tokens "$gen_tokens" --json
gpu=""
[ "$device" != cpu ] && gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)

"$py" - "$out" "$preset" "$device" "$gpu" "$SECONDS" <<'PY'
import json, os, sys

out, preset, device, gpu, wall_s = sys.argv[1:6]

def step(name):
    """(ok, last JSON line of stdout or None, seconds, last log line)"""
    rd = lambda ext: open(os.path.join(out, f"{name}.{ext}"), errors="replace").read()
    try:
        rc, secs = int(rd("rc")), int(rd("s"))
    except OSError:
        return False, None, None, "not run"
    lines = [l for l in rd("out").splitlines() if l.startswith("{")]
    try:
        js = json.loads(lines[-1]) if lines else None
    except ValueError:
        js = None
    log = [l for l in (rd("log") + rd("out")).splitlines() if l.strip()]
    why = "timed out" if rc in (124, 137) else (log[-1][:300] if log else f"exit {rc}")
    return rc == 0, js, secs, None if rc == 0 else why

# Dense bf16 tensor-core peaks (TFLOPS, no sparsity), by a substring of nvidia-smi's name;
# the first match wins, so the more specific names come first.
PEAKS = [("GH200", 989), ("H200", 989), ("H100 NVL", 835), ("H100 PCIe", 756), ("H100", 989),
         ("B200", 2250), ("A100", 312), ("L40S", 362), ("L40", 181), ("L4", 121),
         ("RTX 4090", 165), ("A10G", 70), ("A10", 125)]
peak_tflops = next((p for k, p in PEAKS if k in gpu), None) if gpu else None

# Model FLOPs a trained token, the reference's work: base weights frozen, so forward (2N) and
# the input gradients (2N) of every matrix, LM head included, and attention's QKᵀ and PV
# over the whole row (forward 4·T·heads·d a layer, backward twice that). LoRA's own FLOPs
# (r = 16) are under 2 % and left out.
sys.path.insert(0, "benches")
from hf_peft_reference import PRESETS  # noqa: E402
(v, h, i, layers, heads, kv, d), (b, t) = PRESETS[preset]
linear = layers * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * i) + v * h
flops_per_token = 4 * linear + 12 * layers * heads * d * t

summary = {"check": "gpu-check", "device": device, "gpu": gpu or None, "preset": preset,
           "bf16_peak_tflops": peak_tflops, "flops_per_token": flops_per_token}
failed = []
for dt in ("f32", "bf16"):
    ok, _, secs, why = step(f"parity_{dt}")
    summary[f"parity_{dt}"] = {"passed": ok, "s": secs, "error": why}
    if not ok:
        failed.append(f"parity_{dt}")

def frac(tps):
    if tps is None or not peak_tflops:
        return None
    return round(tps * flops_per_token / (peak_tflops * 1e12), 4)

ours_ok, ours, _, ours_why = step("train")
ref_ok, ref, _, ref_why = step("reference")
if not ours_ok or ours is None:
    failed.append("train")
if not ref_ok or ref is None:
    failed.append("reference")
tps = ours and ours.get("tokens_per_s")
rtps = ref and ref.get("tokens_per_s")
summary["train"] = {
    "tokens_per_s": tps, "peak_mem_bytes": ours and ours.get("peak_mem_bytes"),
    "s_per_step": ours and ours.get("s_per_step"), "loss": ours and ours.get("loss"),
    "dtype": ours and ours.get("dtype"), "batch": ours and ours.get("batch"),
    "seq": ours and ours.get("seq"), "bf16_peak_fraction": frac(tps), "error": ours_why}
summary["reference"] = {
    "tokens_per_s": rtps, "peak_mem_bytes": ref and ref.get("peak_mem_bytes"),
    "loss": ref and ref.get("loss"), "torch": ref and ref.get("torch"),
    "bf16_peak_fraction": frac(rtps), "error": ref_why}
summary["ratio_tokens_per_s"] = round(tps / rtps, 3) if tps and rtps else None
pm, rpm = summary["train"]["peak_mem_bytes"], summary["reference"]["peak_mem_bytes"]
# Ours on CUDA is the device's memory in use (context included); the reference's is torch's
# allocator peak (context excluded), so this ratio favours the reference.
summary["ratio_peak_mem"] = round(pm / rpm, 3) if pm and rpm else None

if not step("corpus")[0]:
    failed.append("corpus")
ok, js, _, why = step("data")
if not ok or js is None:
    failed.append("data")
summary["batching"] = None if js is None else {
    "examples": js["examples"], "mean_tokens": js["mean_tokens"], "max_tokens": js["max_tokens"],
    "layouts": {k: None if l is None else {f: l[f] for f in (
        "padding_share", "steps_per_epoch", "real_tokens_per_s", "epoch_s", "speedup_vs_padded",
        "speedup_vs_budget_padded")}
        for k, l in js["layouts"].items()}}
if js is not None:
    lay = js["layouts"]
    ratio = lambda base: round(lay["packed"]["real_tokens_per_s"] / lay[base]["real_tokens_per_s"], 3)
    summary["batching"]["packed_vs_padded"] = ratio("padded")
    summary["batching"]["packed_vs_budget_padded"] = ratio("budget_padded")
ok, js, _, why = step("generate")
if not ok or js is None:
    failed.append("generate")
summary["generate"] = None if js is None else {
    k: js[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "ms_per_token")}
summary["failed"] = failed
summary["wall_s"] = int(wall_s)
summary["outputs"] = out
print(json.dumps(summary))
sys.exit(1 if failed else 0)
PY
