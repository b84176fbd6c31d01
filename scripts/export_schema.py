"""Write ``docs/protocol.schema.json``: the JSON schema of every model of the ``/v1`` protocol.

    python scripts/export_schema.py           # rewrite the file from the models
    python scripts/export_schema.py --check   # exit 1 when the checked-in file is stale

The file is the protocol's contract in a form other languages (and reviewers) can read, and a
test compares it with what the models produce now, so a change to the wire shape is always a
visible diff. Within protocol version 1 changes must be additive: new optional fields, new
models, new endpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from spec_kitty_supervisor._app import STATUS_BY_CODE, STATUSES_OF_REQUEST_CODES
from spec_kitty_supervisor_client import _models

__all__ = ["SCHEMA_PATH", "error_codes", "protocol_models", "protocol_schema", "render_schema"]

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.schema.json"


def protocol_models() -> dict[str, type[BaseModel]]:
    """Every pydantic model ``_models.__all__`` exports, by its exported name."""
    found: dict[str, type[BaseModel]] = {}
    for name in _models.__all__:
        value = getattr(_models, name)
        if isinstance(value, type) and issubclass(value, BaseModel):
            found[name] = value
    return found


def error_codes() -> dict[str, Any]:
    """Every code an error answer (``ErrorBody.error.code``) can carry, with its statuses."""
    statuses: dict[str, list[int]] = {code: [status] for code, status in STATUS_BY_CODE.items()}
    for code, known in STATUSES_OF_REQUEST_CODES.items():
        statuses[code] = sorted(known)
    return {
        "description": (
            "The closed list of ErrorDetail.code values this supervisor answers, with the HTTP "
            "statuses each comes with. A client maps by code, never by status, and must treat "
            "a code it does not know (a newer supervisor's) as a plain request failure. "
            "Lifecycle codes: supervisor/_errors.py ErrorCode and _app.STATUS_BY_CODE; "
            "request codes: RequestErrorCode and _app.STATUSES_OF_REQUEST_CODES."
        ),
        "enum": sorted(statuses),
        "statuses": dict(sorted(statuses.items())),
    }


def protocol_schema() -> dict[str, Any]:
    return {
        "protocol_version": _models.PROTOCOL_VERSION,
        "models": {name: model.model_json_schema() for name, model in protocol_models().items()},
        "error_codes": error_codes(),
    }


def render_schema() -> str:
    """The file's exact text: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(protocol_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    parser.add_argument("--output", type=Path, default=SCHEMA_PATH, help="where to write")
    args = parser.parse_args(argv)
    text = render_schema()
    if args.check:
        try:
            current = args.output.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = ""
        if current != text:
            print(
                f"{args.output} is stale: run `python scripts/export_schema.py` "
                "(within protocol v1 changes must be additive)",
                file=sys.stderr,
            )
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(protocol_models())} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
