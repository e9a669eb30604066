#!/usr/bin/env bash
# The numerical tests once more with the portable (baseline x86-64) kernels: the run-time
# choice of instruction set (src/model/simd.rs) takes the widest the CPU has, so on a CI machine
# with AVX2 or AVX-512 the code an older CPU runs would otherwise never be exercised. The unit
# tests, the parity suite against transformers + PEFT, packing and chat (decoding).
set -euo pipefail
cd "$(dirname "$0")/.."
SOCRATUNE_SIMD=baseline cargo test --release --locked --lib --test parity --test packing --test chat
