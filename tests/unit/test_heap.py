"""The supervisor freezes its start-up heap once it serves (docs/adr/0018): what existed then
is never walked by a collection again, and garbage made afterwards is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from spec_kitty_supervisor._heap import freeze_start_up_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def thawed_afterwards() -> Iterator[None]:
    """The test process's own heap is given back to the collector after each test."""
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("thawed_afterwards")
def test_what_exists_is_frozen_and_no_longer_walked() -> None:
    kept = [_Node() for _ in range(100)]
    frozen = freeze_start_up_heap()
    assert frozen >= 100
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(node) in tracked for node in kept)


@pytest.mark.usefixtures("thawed_afterwards")
def test_garbage_made_after_the_freeze_is_still_collected() -> None:
    freeze_start_up_heap()
    first, second = _Node(), _Node()
    first.other, second.other = second, first  # a cycle: only the collector frees it
    gone = weakref.ref(first)
    del first, second
    assert gone() is not None
    gc.collect()
    assert gone() is None
