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
"$py" benches/gemm_torch.py <"${TMPDIR:-/tmp}/gemm_step.$$.jsonl"
rm -f "${TMPDIR:-/tmp}/gemm_step.$$.jsonl"
