"""Single `dispatch` with many event classes (rules 1-3): right handlers, whatever the cache.

The Rust backend keeps the resolved lists of `dispatch` in a small table keyed by the class's
address (rust/dispatch_loop.rs `hot_slots`, 256 slots, a few probed per class); with 2,000 classes
many collide. A slot holds a weak reference to its class, so a class collected meanwhile, and
another class later allocated at its address, never gets the old class's handlers. The pure
backend's cache is keyed by `id(class)` and holds its class; both must give the same results.
"""

from __future__ import annotations

import gc
import random
import weakref
from types import ModuleType
from typing import Any

BASES = 8
LEAVES = 2000


def test_many_classes_dispatched_again_and_again_reach_their_handlers(
    backend: ModuleType,
) -> None:
    d = backend.Dispatcher()
    calls: list[tuple[str, Any]] = []

    def recorder(name: str) -> Any:
        def handler(event: Any) -> None:
            calls.append((name, event))

        return handler

    bases = [type(f"Base{i}", (), {}) for i in range(BASES)]
    for i, base in enumerate(bases):
        d.register_handler(base, recorder(f"base{i}"))
    leaves = [type(f"Leaf{i}", (bases[i % BASES],), {"__slots__": ()}) for i in range(LEAVES)]
    for i in range(0, LEAVES, 5):  # every fifth leaf has a handler of its own, called first
        d.register_handler(leaves[i], recorder(f"leaf{i}"), priority=1)
    events = [leaf() for leaf in leaves]
    order = list(range(LEAVES))
    rng = random.Random(12)
    for _ in range(3):
        rng.shuffle(order)
        for i in order:
            calls.clear()
            expected = [f"base{i % BASES}"] if i % 5 else [f"leaf{i}", f"base{i % BASES}"]
            assert d.dispatch(events[i]) == len(expected)
            assert calls == [(name, events[i]) for name in expected]


def _filled_then_forgotten(d: Any, base: type) -> tuple[weakref.ref[type], int]:
    """A class with no registration of its own, dispatched (so a slot holds it), then dropped
    from the dispatcher's resolution cache (more classes resolved than it keeps)."""
    leaf = type("Leaf", (base,), {"__slots__": ()})
    assert d.dispatch(leaf()) == 1
    for _ in range(5000):  # past the cache's 4096 entries: it starts over
        d.handlers_for(type("Filler", (), {}))
    return weakref.ref(leaf), id(leaf)


def test_a_class_at_a_collected_class_s_address_gets_its_own_handlers(
    backend: ModuleType,
) -> None:
    d = backend.Dispatcher()
    seen: list[str] = []
    old_base = type("OldBase", (), {})
    new_base = type("NewBase", (), {})
    d.register_handler(old_base, lambda event: seen.append("old"))
    d.register_handler(new_base, lambda event: seen.append("new"))
    gc.collect()
    ref, address = _filled_then_forgotten(d, old_base)
    gc.collect()
    assert ref() is None, "the dispatcher kept the class alive"
    candidates: list[type] = []  # kept alive, so each try gets another block
    for _ in range(2000):
        candidate = type("Leaf", (new_base,), {"__slots__": ()})
        if id(candidate) == address:
            break
        candidates.append(candidate)
    else:  # the allocator never gave the address back: the plain case is still checked
        candidate = candidates[0]
    reused = id(candidate) == address
    seen.clear()
    for _ in range(3):
        assert d.dispatch(candidate()) == 1
    assert seen == ["new"] * 3, f"address reused: {reused}"
    assert d.handlers_for(candidate) == d.handlers_for(new_base)
    assert reused, "no class was allocated at the collected class's address"
