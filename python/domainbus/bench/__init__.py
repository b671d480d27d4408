"""Benchmark comparisons: domainbus against the article's dispatcher, the floor and the peers.

`domainbus bench` (`cli`) and the pytest-benchmark suite in `benches/` share the same pieces:
`workloads` (what is published, to which handlers, how), `systems` (each contender wired the
way its users would wire it), `runner` (check the handler calls, then time interleaved rounds)
and `report` (table, JSON, chart). Optional peers and matplotlib come with `domainbus[bench]`.
"""

from domainbus.bench.runner import Outcome, check, measure, prepared
from domainbus.bench.systems import SYSTEMS, System
from domainbus.bench.workloads import WORKLOADS, Workload

__all__ = ["SYSTEMS", "WORKLOADS", "Outcome", "System", "Workload", "check", "measure", "prepared"]
