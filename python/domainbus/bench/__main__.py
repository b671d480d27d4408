"""`python -m domainbus.bench`: the same as `domainbus bench`."""

import argparse

from domainbus.bench.cli import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m domainbus.bench")
add_arguments(parser)
raise SystemExit(run(parser.parse_args()))
