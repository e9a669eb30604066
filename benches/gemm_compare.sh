#!/usr/bin/env bash
# The training step's matrix products: candle (as the step lays them out, and contiguous) and
# torch, one after the other on the same machine, per product and summed over a step.
#
#   benches/gemm_compare.sh [--preset small]
#
# Needs Python with torch (PYTHON=path/to/python; see README "Benchmarks"); GEMM_STEP=path runs
# an already built bench binary (`cargo bench --bench gemm_step --no-run` prints it). Run it alone on
# the machine (under `flock -x /work/.cpu.lock` here): the ratios are only as good as the quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=small
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-python3}
if [ -n "${GEMM_STEP:-}" ]; then
  "$GEMM_STEP" --preset "$preset" --json >"${TMPDIR:-/tmp}/gemm_step.$$.jsonl"
else
  cargo bench --quiet --bench gemm_step -- --preset "$preset" --json >"${TMPDIR:-/tmp}/gemm_step.$$.jsonl"
fi
"$py" benches/gemm_torch.py <"${TMPDIR:-/tmp}/gemm_step.$$.jsonl" | "$py" -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
print(f"{\"product\":<16} {\"×step\":>5} {\"batch×m×k×n\":>20} {\"candle\":>8} {\"contig.\":>8} {\"torch\":>8}   GFLOP/s  (candle as laid out / contiguous / torch)")
tot = [0.0, 0.0, 0.0]; flops = 0.0
for g in rows:
    f = 2.0 * g["batch"] * g["m"] * g["k"] * g["n"]
    t = (g["s"], g["s_contiguous"], g["torch_s"])
    for i in range(3): tot[i] += t[i] * g["count"]
    flops += f * g["count"]
    shape = f"{g[\"batch\"]}×{g[\"m\"]}×{g[\"k\"]}×{g[\"n\"]}"
    print(f"{g[\"name\"]:<16} {g[\"count\"]:>5} {shape:>20} " + " ".join(f"{f / x / 1e9:>8.0f}" for x in t))
print(f"step: {flops / 1e9:.1f} GFLOP; candle {tot[0] * 1e3:.0f} ms ({flops / tot[0] / 1e9:.0f} GFLOP/s), "
      f"contiguous {tot[1] * 1e3:.0f} ms, torch {tot[2] * 1e3:.0f} ms ({flops / tot[2] / 1e9:.0f} GFLOP/s); "
      f"torch / candle time {tot[2] / tot[0]:.2f}x, threads {rows[0][\"torch_threads\"]}")
'
rm -f "${TMPDIR:-/tmp}/gemm_step.$$.jsonl"
