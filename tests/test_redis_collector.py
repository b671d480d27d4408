"""The worker's collector settings: frozen start-up objects and a higher young threshold while
the loop runs, both restored after it (also when the loop raises)."""

from __future__ import annotations

import gc

import pytest

from domainbus.redis.collector import YOUNG_THRESHOLD, spared_collector


def test_freezes_and_raises_the_young_threshold_then_restores_both() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with pytest.raises(KeyError), spared_collector():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (max(before[0], YOUNG_THRESHOLD), *before[1:])
        raise KeyError("the loop failed")
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_leaves_a_frozen_process_alone() -> None:
    before = gc.get_threshold()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with spared_collector():
            assert gc.get_threshold() == before
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_a_threshold_changed_while_running_is_kept() -> None:
    before = gc.get_threshold()
    try:
        with spared_collector():
            gc.set_threshold(5_000)
        assert gc.get_threshold()[0] == 5_000
    finally:
        gc.set_threshold(*before)
