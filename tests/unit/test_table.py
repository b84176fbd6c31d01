from __future__ import annotations

import json
from pathlib import Path

from spec_kitty_supervisor._ledger import Ledger
from spec_kitty_supervisor._table import Table, load_table, save_table
from tests.unit.lifecycle_fakes import daemon_record


def test_table_round_trips_through_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    table = Table(daemons=[daemon_record(100), daemon_record(101, "retiring")])
    save_table(path, table, supervisor_pid=42)
    loaded = load_table(path)
    assert loaded.problem is None
    assert loaded.table.current is not None
    assert loaded.table.current.pid == 100
    assert [d.pid for d in loaded.table.retiring] == [101]
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["schema_version"] == 1


def test_missing_journal_is_an_empty_table(tmp_path: Path) -> None:
    loaded = load_table(tmp_path / "state.json")
    assert loaded.table.daemons == []
    assert loaded.problem is None


def test_corrupt_journal_is_moved_aside_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"schema_version": 1, "daemons": [{"pid": "not a pid"')
    loaded = load_table(path)
    assert loaded.table.daemons == []
    assert loaded.problem is not None
    assert loaded.moved_to is not None
    assert loaded.moved_to.read_text().startswith('{"schema_version"')
    assert not path.exists()


def test_journal_of_an_unknown_schema_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema_version": 99, "supervisor_pid": 1, "daemons": []}))
    loaded = load_table(path)
    assert loaded.problem is not None
    assert loaded.moved_to is not None


def test_the_view_hides_the_token_unless_asked() -> None:
    record = daemon_record()
    assert record.view().token is None
    assert record.view(with_token=True).token == "0" * 32


def test_ledger_is_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    ledger = Ledger(path, capacity=5)
    for index in range(12):
        ledger.record("spawned", pid=index, port=9400 + index, reason=f"n{index}")
    assert [e.pid for e in ledger.events()] == [7, 8, 9, 10, 11]
    assert len(path.read_text().splitlines()) <= 10
    reopened = Ledger(path, capacity=5)
    assert [e.pid for e in reopened.events()] == [7, 8, 9, 10, 11]
    assert reopened.record("retired").seq == 13
    assert [e.seq for e in reopened.events(since=11)] == [12, 13]


def test_ledger_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    ledger = Ledger(path)
    ledger.record("spawned", pid=1)
    with path.open("a") as handle:
        handle.write('{"seq": 2, "ti')
    assert [e.pid for e in Ledger(path).events()] == [1]
