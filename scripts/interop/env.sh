#!/usr/bin/env bash
# Makes (or reuses) the Python environment of the interop tests and prints its python's path
# on stdout, nothing else. The venv lives outside the clone, named after a hash of
# requirements.txt: rebuilt when the pins change, reused while they match. It is built in a
# temporary folder beside its final place and renamed when complete, so an interrupted build
# never leaves a half-made environment that looks ready.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
req="$here/requirements.txt"
fail() { echo "interop env: $*" >&2; exit 1; }

py=${PYTHON:-python3}
command -v "$py" >/dev/null || fail "no $py on PATH (Python 3.10+ is needed)"
hash=$(sha256sum "$req" | cut -c1-12)
root="${SOCRATUNE_PYENV:-$HOME/.cache/socratune}"
venv="$root/interop-$hash"

if [ -f "$venv/.complete" ]; then
  echo "$venv/bin/python"
  exit 0
fi
mkdir -p "$root" || fail "cannot create $root"
tmp=$(mktemp -d "$root/.interop-$hash.XXXXXX") || fail "cannot create a folder in $root"
log="$tmp.log"
trap 'rm -rf "$tmp"' EXIT
echo "interop env: building $venv (first run: about 5 GB of wheels and a llama.cpp build, 10-20 minutes; log: $log)" >&2
{
  "$py" -m venv "$tmp" &&
  "$tmp/bin/python" -m pip install --upgrade pip &&
  "$tmp/bin/python" -m pip install -r "$req"
} >"$log" 2>&1 || fail "pip could not install $req (no network? see $log)"
touch "$tmp/.complete"
# A venv keeps its absolute path in pyvenv.cfg and its bin/ scripts (the tests call
# `python -m`, so only these text files matter): point them at the final place.
grep -lIF "$tmp" "$tmp/pyvenv.cfg" "$tmp"/bin/* 2>/dev/null | while read -r f; do sed -i "s#$tmp#$venv#g" "$f"; done
if [ -f "$venv/.complete" ]; then
  # Another run finished first: keep its environment.
  rm -rf "$tmp"
else
  rm -rf "$venv"
  mv -T "$tmp" "$venv" || fail "cannot move the new environment to $venv"
fi
trap - EXIT
rm -f "$log"
echo "$venv/bin/python"
