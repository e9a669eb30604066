#!/usr/bin/env bash
# The interop layer: checks what socratune writes against the tools users already have
# (transformers, PEFT, the openai client), in the pinned environment of env.sh.
#
#   scripts/interop/run.sh [--offline] [pytest args...]
#
# SOCRATUNE_BIN: the binary under test (default target/release/socratune, the one
# `cargo test --release` just built). --offline or SOCRATUNE_INTEROP=off skips the layer,
# saying so; an environment that cannot be made fails the run.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
offline=${SOCRATUNE_INTEROP:-on}
args=()
for a in "$@"; do
  if [ "$a" = "--offline" ]; then offline=off; else args+=("$a"); fi
done
if [ "$offline" = "off" ]; then
  echo "interop: SKIPPED (offline): not checked that PEFT, transformers and the openai client load what socratune writes"
  exit 0
fi
bin=${SOCRATUNE_BIN:-$root/target/release/socratune}
[ -x "$bin" ] || { echo "interop: no socratune binary at $bin (cargo build --release first)" >&2; exit 1; }
if ! py=$("$root/scripts/interop/env.sh"); then
  echo "interop: FAILED: the Python environment could not be made (see above); use --offline to skip these checks knowingly" >&2
  exit 1
fi
SOCRATUNE_BIN="$bin" SOCRATUNE_ROOT="$root" exec "$py" -m pytest -q -p no:cacheprovider \
  tests/interop "${args[@]}"
