"""Render the chaos suite's JSON report as docs/reliability.md's table.

    python -m scripts.reliability_report chaos-report.json            # print the markdown
    python -m scripts.reliability_report chaos-report.json --out FILE # write it to FILE
    python -m scripts.reliability_report chaos-report.json --notes    # with every class's notes

The input is what ``tests/chaos`` writes to ``$CHAOS_REPORT`` (``make chaos`` does both).
One row per fault class, in the order the suite ran them; the run's context (command, rounds,
load average, CPUs, commit) is printed above the table, so a table is never quoted without
the run that produced it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["render"]

COLUMNS = [
    ("fault class", "fault"),
    ("trials", "trials"),
    ("failures", "failures"),
    ("orphans left", "orphans_left"),
    ("duplicates", "duplicates"),
    ("foreign signals", "foreign_signals"),
    ("lost/corrupted state", "lost_or_corrupted_state"),
    ("test outcome", "outcome"),
]


def _load(values: Any) -> str:
    if not values:
        return "?"
    return " / ".join(f"{value:.2f}" for value in values)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|") if value is not None else "-"


def render(document: dict[str, Any], *, notes: bool = False) -> str:
    """The run's context, the table, and each broken promise's details (notes on request)."""
    meta = document.get("meta", {})
    tallies = document.get("tallies", [])
    lines = [
        f"- command: `{meta.get('command', '?')}` "
        f"(CHAOS_ROUNDS={meta.get('chaos_rounds_env') or 'unset'}, "
        f"{meta.get('chaos_rounds', '?')} rounds per class)",
        f"- run: {meta.get('started', '?')} to {meta.get('finished', '?')} "
        f"({meta.get('seconds', '?')} s), commit {meta.get('commit') or '?'}, "
        f"exit status {meta.get('exitstatus', '?')}",
        f"- machine: {meta.get('cpus', '?')} CPUs, load average (1/5/15 min) "
        f"{_load(meta.get('loadavg_start'))} at the start, "
        f"{_load(meta.get('loadavg_end'))} at the end; "
        f"Python {meta.get('python', '?')} on {meta.get('platform', '?')}",
        "",
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "|".join("---" if key == "fault" else "---:" for _, key in COLUMNS) + "|",
    ]
    for tally in tallies:
        lines.append("| " + " | ".join(_cell(tally.get(key)) for _, key in COLUMNS) + " |")
    totals = {
        key: sum(int(t.get(key) or 0) for t in tallies)
        for _, key in COLUMNS
        if key not in ("fault", "outcome")
    }
    lines.append(
        "| **all classes** | "
        + " | ".join(f"**{totals[key]}**" for _, key in COLUMNS if key in totals)
        + " | |"
    )
    kept = ("details", "notes") if notes else ("details",)
    noted = [t for t in tallies if any(t.get(key) for key in kept)]
    if noted:
        title = "Details and notes" if notes else "Details of every broken promise"
        lines += ["", f"{title}, per class:", ""]
        for tally in noted:
            for key in kept:
                for text in tally.get(key, []):
                    first = str(text).splitlines()[0] if text else ""
                    lines.append(f"- {tally['fault']}: {first}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the JSON file $CHAOS_REPORT named")
    parser.add_argument("--out", type=Path, help="write the markdown here instead of stdout")
    parser.add_argument(
        "--notes", action="store_true", help="also list each class's notes (what was observed)"
    )
    options = parser.parse_args(argv)
    try:
        document = json.loads(options.report.read_text())
    except (OSError, ValueError) as exc:
        print(f"reliability_report: cannot read {options.report}: {exc}", file=sys.stderr)
        return 2
    text = render(document, notes=options.notes)
    if options.out is not None:
        options.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
