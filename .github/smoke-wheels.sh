#!/usr/bin/env bash
# Release workflow: install each wheel in dist/ into a fresh venv of its own CPython version
# (pip only; dependencies from PyPI) and run .ci/wheel_smoke.py there, from outside the
# checkout so that the source tree cannot be imported instead. Linux, macOS and Windows (bash).
set -euo pipefail
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for interpreter in $INTERPRETERS; do            # python3.11 ... from the workflow's env
  version=${interpreter#python}                 # 3.11
  tag=cp${version/./}                           # cp311
  wheel=$(ls dist/domainbus-*-"$tag"-"$tag"-*.whl)
  if [ "${RUNNER_OS:-}" = Windows ]; then
    py "-$version" -m venv "$work/$tag"
    python=$work/$tag/Scripts/python.exe
  else
    "$interpreter" -m venv "$work/$tag"
    python=$work/$tag/bin/python
  fi
  echo "--- $wheel on $("$python" --version)"
  "$python" -m pip install -q "$repo/$wheel"
  (cd "$work" && "$python" "$repo/.ci/wheel_smoke.py")
done
