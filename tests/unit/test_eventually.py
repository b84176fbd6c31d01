"""``eventually``: the one way a test waits for what another process makes true."""

from __future__ import annotations

import itertools

import pytest

from sks_harness import aeventually, eventually


def test_it_returns_the_first_truthy_value_of_the_condition() -> None:
    calls = itertools.count(1)
    assert eventually(lambda: next(calls) >= 3 and "ready", what="the third call") == "ready"


def test_an_assertion_error_means_not_yet() -> None:
    calls = itertools.count(1)

    def third_call() -> int:
        number = next(calls)
        assert number >= 3, f"only call {number}"
        return number

    assert eventually(third_call, what="the third call") == 3


def test_on_timeout_it_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"the port to open did not happen .*last value: 0"):
        eventually(lambda: 0, what="the port to open", timeout=0)


def test_on_timeout_it_shows_the_last_assertion() -> None:
    def never() -> bool:
        raise AssertionError("pid 42 still alive")

    with pytest.raises(AssertionError, match="pid 42 still alive"):
        eventually(never, what="the daemon to exit", timeout=0)


def test_other_errors_are_not_waited_out() -> None:
    def broken() -> bool:
        raise KeyError("status")

    with pytest.raises(KeyError):
        eventually(broken, what="anything")


@pytest.mark.anyio
async def test_the_async_form_takes_plain_and_async_conditions() -> None:
    calls = itertools.count(1)

    async def second_call() -> bool:
        return next(calls) >= 2

    assert await aeventually(second_call, what="the second call") is True
    assert await aeventually(lambda: "now", what="at once") == "now"
    with pytest.raises(AssertionError, match="never did not happen"):
        await aeventually(lambda: None, what="never", timeout=0)
