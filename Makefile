# Developer shortcuts; `make help` lists them.
.PHONY: help develop test lint format bench bench-quick wheel wheel-smoke

help:            ## list the targets
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*##/\t/'

develop:         ## build the Rust extension (release) and install the package editable with test extras
	python3 -m pip install -e ".[test]"

test:            ## run the tests on both backends
	python3 -m pytest

lint:            ## cargo fmt/clippy, ruff, mypy
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	ruff check python tests benches examples
	ruff format --check python tests benches examples
	mypy
	python3 -m mypy.stubtest domainbus._core

format:          ## format Rust and Python sources
	cargo fmt
	ruff format python tests benches examples

bench:           ## the pytest-benchmark suite, grouped per workload
	python3 -m pytest benches --benchmark-group-by=group

bench-quick:     ## every benchmark once, as a correctness check
	python3 -m pytest benches --benchmark-disable -q

# The release artifacts. The wheel is linked by zig (`pip install ziglang`) against glibc 2.17,
# so it installs on any x86_64 Linux with glibc >= 2.17 (manylinux2014) without Rust; the
# release workflow (.github/workflows/release.yml) builds the other platforms and versions.
PYTHON ?= python3
MANYLINUX ?= manylinux_2_17

wheel:           ## manylinux wheel (zig, glibc 2.17) for $(PYTHON) + sdist into dist/, checked by auditwheel
	rm -f dist/domainbus-*.whl dist/domainbus-*.tar.gz
	maturin build --release --zig --compatibility $(MANYLINUX) -i $(PYTHON) -o dist
	maturin sdist -o dist
	$(PYTHON) -m auditwheel show dist/domainbus-*.whl

wheel-smoke:     ## build the wheel, install it in a fresh venv without cargo on PATH, smoke-test it
	.ci/wheel-smoke
