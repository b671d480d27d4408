# Developer shortcuts; `make help` lists them.
.PHONY: help develop test lint format bench bench-quick

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
