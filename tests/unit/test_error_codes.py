"""The closed list of error codes: the code, the status table and the schema say the same.

``docs/protocol.schema.json`` (``error_codes``) lists every code an error answer can carry,
with its statuses. It is built from ``supervisor/_errors.py`` (``ErrorCode``,
``RequestErrorCode``) and ``supervisor/_app.py`` (``STATUS_BY_CODE``,
``STATUSES_OF_REQUEST_CODES``). The sources are read here too: a code or status written
anywhere in ``supervisor/`` that the lists do not have, or a listed one nothing answers, fails.
"""

from __future__ import annotations

import ast
import json
from collections import defaultdict
from pathlib import Path
from typing import get_args

from scripts.export_schema import SCHEMA_PATH
from spec_kitty_supervisor._app import STATUS_BY_CODE, STATUSES_OF_REQUEST_CODES
from spec_kitty_supervisor._errors import ErrorCode, RequestErrorCode
from spec_kitty_supervisor_client import _errors as client_errors

SUPERVISOR = Path(__file__).resolve().parents[2] / "supervisor"
LIFECYCLE_CODES = set(get_args(ErrorCode))
REQUEST_CODES = set(get_args(RequestErrorCode))


def _name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _constant(node: ast.AST | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


class _Written:
    """What the sources answer: codes with the statuses written beside them."""

    def __init__(self) -> None:
        self.request: dict[str, set[int | None]] = defaultdict(set)
        self.lifecycle: set[str] = set()
        self.parser_statuses: set[int] = set()


def _written_in_sources() -> _Written:
    written = _Written()
    for path in sorted(SUPERVISOR.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name, args = _name(node), node.args
            if name == "ApiError" and len(args) >= 2 and isinstance(_constant(args[1]), str):
                status = _constant(args[0])
                written.request[str(_constant(args[1]))].add(
                    status if isinstance(status, int) else None
                )
            elif name == "_error_body" and args and isinstance(_constant(args[0]), str):
                written.request[str(_constant(args[0]))].add(_status_beside(node, parents))
            elif name in ("LifecycleError", "SpawnError") and args:
                code = _constant(args[0])
                if isinstance(code, str):
                    written.lifecycle.add(code)
            elif name == "HttpError" and args and isinstance(_constant(args[0]), int):
                written.parser_statuses.add(int(str(_constant(args[0]))))
    return written


def _status_beside(body: ast.Call, parents: dict[ast.AST, ast.AST]) -> int | None:
    """The literal status an error body is answered with: ``return 400, _error_body(...)``
    or ``respond(403, _error_body(...))``; None when it is not written there."""
    parent = parents.get(body)
    if isinstance(parent, ast.Tuple) and parent.elts and parent.elts[-1] is body:
        first = _constant(parent.elts[0])
        return first if isinstance(first, int) else None
    if isinstance(parent, ast.Call) and parent.args and body in parent.args:
        first = _constant(parent.args[0])
        return first if isinstance(first, int) else None
    return None


def test_every_lifecycle_code_has_one_status_and_none_is_500() -> None:
    assert set(STATUS_BY_CODE) == LIFECYCLE_CODES
    assert all(400 <= status < 500 or status in (502, 503) for status in STATUS_BY_CODE.values())


def test_every_code_the_sources_raise_is_in_the_closed_lists() -> None:
    written = _written_in_sources()
    assert written.lifecycle <= LIFECYCLE_CODES
    assert set(written.request) <= REQUEST_CODES | LIFECYCLE_CODES
    # And no listed request code is stale: each one is answered somewhere.
    assert set(written.request) >= REQUEST_CODES


def test_every_status_written_beside_a_request_code_is_the_listed_one() -> None:
    written = _written_in_sources()
    for code in REQUEST_CODES - {"bad_http"}:
        assert written.request[code] == set(STATUSES_OF_REQUEST_CODES[code]), code
    # bad_http is answered with the status the parser chose.
    assert written.request["bad_http"] == {None}
    assert written.parser_statuses == set(STATUSES_OF_REQUEST_CODES["bad_http"])


def test_the_schema_lists_exactly_the_codes_in_code_with_their_statuses() -> None:
    listed = json.loads(SCHEMA_PATH.read_text())["error_codes"]
    assert listed["enum"] == sorted(LIFECYCLE_CODES | REQUEST_CODES)
    expected = {code: [status] for code, status in STATUS_BY_CODE.items()}
    expected |= {code: sorted(known) for code, known in STATUSES_OF_REQUEST_CODES.items()}
    assert listed["statuses"] == expected


#: Codes earlier supervisors of protocol 1 answered and this one no longer does; the client
#: still maps them, since it may talk to such a supervisor (``body_too_large`` is now
#: ``bad_http`` with 413, the same ``InvalidRequest``).
ANSWERED_BY_EARLIER_SUPERVISORS = {"body_too_large"}


def test_the_client_maps_only_codes_a_supervisor_answers() -> None:
    mapped = set(client_errors._BY_CODE)
    assert mapped <= LIFECYCLE_CODES | REQUEST_CODES | ANSWERED_BY_EARLIER_SUPERVISORS
    assert not ANSWERED_BY_EARLIER_SUPERVISORS & (LIFECYCLE_CODES | REQUEST_CODES)
