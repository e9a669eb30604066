#!/usr/bin/env bash
# Training throughput: socratune vs the transformers + PEFT reference, one after the other on
# the same machine, same work (benches/hf_peft_reference.py), and the ratio.
#
#   benches/compare.sh [--preset small] [--steps 10] [--warmup 2] [--device cpu|cuda] [--threads N]
#
# Needs a release build (cargo build --release [--features cuda]) or SOCRATUNE=path/to/binary,
# and Python with torch, transformers and peft (PYTHON=path/to/python; see README "Benchmarks").
set -euo pipefail
cd "$(dirname "$0")/.."
preset=small steps=10 warmup=2 device=cpu threads=""
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
bin=${SOCRATUNE:-target/release/socratune}
py=${PYTHON:-python3}
ref=${REFERENCE:-benches/hf_peft_reference.py}
[ -x "$bin" ] || { echo "no binary at $bin: cargo build --release first" >&2; exit 1; }
thread_args=()
if [ -n "$threads" ]; then
  export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
  thread_args=(--threads "$threads")
fi
ours=$("$bin" bench train --preset "$preset" --steps "$steps" --warmup "$warmup" --device "$device" --json)
theirs=$("$py" "$ref" --preset "$preset" --steps "$steps" --warmup "$warmup" --device "$device" "${thread_args[@]}" 2>/dev/null | tail -1)
echo "socratune:  $ours"
echo "reference:  $theirs"
"$py" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"tokens/s ratio (socratune / reference): {a['tokens_per_s'] / b['tokens_per_s']:.2f}x  "
      f"({a['tokens_per_s']:.0f} vs {b['tokens_per_s']:.0f})")
print(f"peak memory ratio (socratune / reference): {a['peak_mem_bytes'] / b['peak_mem_bytes']:.2f}x  "
      f"({a['peak_mem_bytes'] / 2**20:.0f} MiB vs {b['peak_mem_bytes'] / 2**20:.0f} MiB)")
print(f"final loss: {a['loss']} vs {b['loss']}")
PY
