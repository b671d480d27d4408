#!/usr/bin/env bash
# Builds the extension several ways, side by side, for benches/abi_compare.py:
#   per-version-cpXY  today's build (full C API, one wheel per CPython version), per interpreter;
#   abi3-py311        the stable ABI from 3.11 (PyO3 feature abi3-py311), runs on 3.11+;
#   abi3-py312        the stable ABI from 3.12 (vectorcall is in the limited API from 3.12).
# The abi3 builds come from a throw-away copy of the tree with benches/abi3_experiment.patch
# applied: the limited API has no PyCoro_CheckExact, PyGen_CheckExact, CO_ITERABLE_COROUTINE or
# PyTypeObject.tp_alloc, which rust/ uses today (the patch uses type names and PyType_GetSlot).
# Same release profile as the wheels (fat LTO); each build takes about a minute of CPU.
#
# usage: benches/abi_builds.sh [PYTHON...]   (default: python3)
# output: target/abi/per-version-cpXY/, target/abi/abi3-py311/, target/abi/abi3-py312/, each
#   holding domainbus/ with that build's extension (one PYTHONPATH entry per build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/target/abi
pythons=("$@")
[ ${#pythons[@]} -gt 0 ] || pythons=(python3)
mkdir -p "$out"

copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
git archive HEAD | tar -x -C "$copy"
cp Cargo.lock "$copy/"
(cd "$copy" && patch -s -p1 < "$root/benches/abi3_experiment.patch")

# build NAME SOURCE_DIR PYTHON [MATURIN ARGS...]: one wheel, unzipped into $out/NAME
build() {
  local name=$1 src=$2 py=$3; shift 3
  local wheels=$out/wheels-$name
  rm -rf "$wheels" "${out:?}/$name"
  echo "--- $name ($py)"
  (cd "$src" && CARGO_TARGET_DIR=$out/target-${name%%-cp*} \
    maturin build --release --quiet -i "$py" -o "$wheels" "$@")
  python3 -m zipfile -e "$wheels"/*.whl "$out/$name"
}

# per-version: one build per interpreter; abi3: one build each, with the oldest interpreter it
# supports (the same .so then loads on every newer CPython)
abi311="" abi312=""
for py in "${pythons[@]}"; do
  ver=$("$py" -c 'import sys; print("%d%d" % sys.version_info[:2])')
  build "per-version-cp$ver" "$root" "$py"
  [ -n "$abi311" ] || { build abi3-py311 "$copy" "$py" --features pyo3/abi3-py311; abi311=1; }
  if [ "$ver" -ge 312 ] && [ -z "$abi312" ]; then
    build abi3-py312 "$copy" "$py" --features pyo3/abi3-py312
    abi312=1
  fi
done
ls "$out"
