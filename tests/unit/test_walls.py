"""The architecture's walls, each a test that fails when the wall is broken.

Every check reads the source (``ast``) of every module of both packages, sub-packages
included, so it judges what a module itself imports and calls, whatever its package's
``__init__`` happens to import at run time.

- Pure modules (decisions over facts, no I/O) import only the standard library's pure modules
  and other pure modules. A module is pure when its docstring has a line starting with
  ``Pure:``; the modules listed in ``REQUIRED_PURE`` must carry that mark.
- The client never imports the supervisor package.
- Exactly one module (``_signals``) sends signals to processes.
- The sync family range is checked in one place (``client/_terms.py``).
- The CLI reaches a running supervisor only through the client.
- The test harness never imports the code under test.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUPERVISOR = "spec_kitty_supervisor"
CLIENT = "spec_kitty_supervisor_client"
PACKAGES = {SUPERVISOR: REPO / "supervisor", CLIENT: REPO / "client"}

#: Modules that must be pure. Add a decision module here when it is created, and give it the
#: ``Pure:`` line in its docstring.
REQUIRED_PURE = frozenset(
    {
        f"{SUPERVISOR}._classification",
        f"{SUPERVISOR}._daemon_shape",
        f"{SUPERVISOR}._errors",
        f"{SUPERVISOR}._health",
        f"{SUPERVISOR}._lifecycle._decisions",
        f"{SUPERVISOR}._policy",
        f"{CLIENT}._releases",
        f"{CLIENT}._terms",
    }
)

#: Standard-library modules that compute without touching processes, files, sockets, clocks
#: or the environment.
STDLIB_PURE = frozenset(
    {
        "__future__",
        "abc",
        "bisect",
        "collections",
        "collections.abc",
        "copy",
        "dataclasses",
        "decimal",
        "enum",
        "fractions",
        "functools",
        "heapq",
        "ipaddress",
        "itertools",
        "json",
        "math",
        "numbers",
        "operator",
        "posixpath",
        "random",
        "re",
        "statistics",
        "string",
        "textwrap",
        "types",
        "typing",
    }
)


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def is_pure(self) -> bool:
        docstring = ast.get_docstring(self.tree) or ""
        return any(line.strip().startswith("Pure:") for line in docstring.splitlines())

    def imports(self) -> Iterator[tuple[int, str]]:
        """Every module this one imports, as an absolute dotted name, with its line."""
        package_parts = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package_parts[: len(package_parts) - node.level + 1]
                    prefix = ".".join([*base, node.module] if node.module else base)
                else:
                    prefix = node.module or ""
                if node.module is None or node.level:
                    # ``from . import x`` may name a sub-module: count each name as one.
                    for alias in node.names:
                        candidate = f"{prefix}.{alias.name}"
                        yield node.lineno, candidate if candidate in _MODULES else prefix
                else:
                    yield node.lineno, prefix


def _load() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            found[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return found


_MODULES = _load()


def _where(module: Module, line: int) -> str:
    return f"{module.path.relative_to(REPO)}:{line}"


# --------------------------------------------------------------------------------------------
# Pure modules


def test_the_modules_that_must_be_pure_exist_and_are_marked_pure() -> None:
    missing = sorted(REQUIRED_PURE - _MODULES.keys())
    unmarked = sorted(
        name for name in REQUIRED_PURE & _MODULES.keys() if not _MODULES[name].is_pure
    )
    assert missing == [], "listed as pure but not found (renamed? update REQUIRED_PURE)"
    assert unmarked == [], "their docstring needs a line starting with 'Pure:'"


def test_pure_modules_import_only_pure_modules() -> None:
    pure = {name for name, module in _MODULES.items() if module.is_pure}
    offenders = [
        f"{_where(module, line)} imports {imported}"
        for module in _MODULES.values()
        if module.is_pure
        for line, imported in module.imports()
        if imported not in STDLIB_PURE and imported not in pure
    ]
    assert offenders == [], (
        "a pure module imports something that is not a pure module (no I/O, processes, clocks "
        "or third-party packages there; shared vocabulary lives in "
        f"{CLIENT}._terms): {offenders}"
    )


def test_the_purity_check_sees_relative_and_absolute_imports() -> None:
    # The wall itself must be able to fail: a module importing a socket, a sibling, or the
    # client's heavy models is seen as doing so.
    tree = ast.parse(
        "import socket\nfrom . import _probe\nfrom spec_kitty_supervisor_client._models import X\n"
    )
    probe = Module(f"{SUPERVISOR}._example", PACKAGES[SUPERVISOR] / "_example.py", tree)
    assert [name for _, name in probe.imports()] == [
        "socket",
        f"{SUPERVISOR}._probe",
        f"{CLIENT}._models",
    ]


# --------------------------------------------------------------------------------------------
# The client stands alone


def test_the_client_never_imports_the_supervisor() -> None:
    offenders = [
        f"{_where(module, line)} imports {imported}"
        for module in _MODULES.values()
        if module.name.startswith(CLIENT)
        for line, imported in module.imports()
        if imported == SUPERVISOR or imported.startswith(f"{SUPERVISOR}.")
    ]
    assert offenders == []


# --------------------------------------------------------------------------------------------
# Exactly one module signals processes

SIGNALLING_ATTRIBUTES = frozenset(
    {"kill", "killpg", "pidfd_send_signal", "send_signal", "terminate"}
)
SIGNALLING_NAMES = frozenset({"kill", "killpg", "pidfd_send_signal"})
SIGNALLING_COMMANDS = frozenset({"kill", "pkill", "killall"})
SIGNALS_MODULE = f"{SUPERVISOR}._signals"


def _signalling_calls(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func
            if isinstance(function, ast.Attribute) and function.attr in SIGNALLING_ATTRIBUTES:
                # ``_signals.send_signal(...)`` goes through the one module; any other
                # ``.send_signal``, ``.kill()`` or ``.terminate()`` (Popen, asyncio, psutil) not.
                through_signals = (
                    isinstance(function.value, ast.Name) and function.value.id == "_signals"
                )
                if not through_signals:
                    yield node.lineno, ast.unparse(function)
            elif isinstance(function, ast.Name) and function.id in SIGNALLING_NAMES:
                yield node.lineno, function.id
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "signal"):
            for alias in node.names:
                if alias.name in SIGNALLING_NAMES:
                    yield node.lineno, f"from {node.module} import {alias.name}"
        elif isinstance(node, ast.List | ast.Tuple) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and first.value in SIGNALLING_COMMANDS:
                yield node.lineno, f"a {first.value!r} command"


def test_exactly_one_module_signals_processes() -> None:
    signalling = {
        module.name: [f"{_where(module, line)}: {what}" for line, what in calls]
        for module in _MODULES.values()
        if (calls := list(_signalling_calls(module.tree)))
    }
    assert list(signalling) == [SIGNALS_MODULE], signalling


@pytest.mark.parametrize(
    "source",
    [
        "os.kill(pid, 9)",
        "signal.pidfd_send_signal(fd, 15)",
        "process.terminate()",
        "popen.send_signal(15)",
        "psutil.Process(pid).kill()",
        "from os import kill",
        "subprocess.run(['kill', '-9', str(pid)])",
        "os.killpg(group, 9)",
    ],
)
def test_the_signal_check_sees_every_way_to_signal(source: str) -> None:
    assert list(_signalling_calls(ast.parse(source))) != []


# --------------------------------------------------------------------------------------------
# One family-range check

FAMILY_MODULE = f"{CLIENT}._terms"
FAMILY_BOUNDS = frozenset({9400, 9450})


def _family_range_checks(module: Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(module.tree):
        # The range's bounds written out as numbers, anywhere in code.
        if (
            isinstance(node, ast.Constant)
            and type(node.value) is int
            and node.value in FAMILY_BOUNDS
        ):
            yield node.lineno, f"the number {node.value}"
        # The range taken apart (unpacked, indexed, compared), rather than asked about.
        elif isinstance(node, ast.Assign | ast.Subscript | ast.Compare | ast.Starred):
            names = {
                sub.id
                for sub in ast.walk(node.value if isinstance(node, ast.Assign) else node)
                if isinstance(sub, ast.Name)
            }
            if "FAMILY_PORT_RANGE" in names:
                yield node.lineno, ast.unparse(node)[:80]


def test_the_family_range_is_checked_in_one_place() -> None:
    checks = {
        module.name: [f"{_where(module, line)}: {what}" for line, what in found]
        for module in _MODULES.values()
        if module.name != FAMILY_MODULE and (found := list(_family_range_checks(module)))
    }
    assert checks == {}, f"ask {FAMILY_MODULE} (in_family_range, check_within_family) instead"
    assert list(_family_range_checks(_MODULES[FAMILY_MODULE])) != []


# --------------------------------------------------------------------------------------------
# The CLI talks to a running supervisor through the client

#: What talking to a supervisor's socket directly would need.
TRANSPORT_IMPORTS = frozenset(
    {"socket", "h11", "httpx", f"{CLIENT}._transport", f"{SUPERVISOR}._api"}
)


def _cli_modules() -> list[Module]:
    return [
        module
        for name, module in _MODULES.items()
        if name.startswith(f"{SUPERVISOR}.")
        and (name.endswith("_cli") or name.endswith("__main__"))
    ]


def test_the_cli_reaches_a_running_supervisor_only_through_the_client() -> None:
    modules = _cli_modules()
    assert {m.name for m in modules} >= {f"{SUPERVISOR}._cli", f"{SUPERVISOR}._doctor_cli"}
    offenders = [
        f"{_where(module, line)} imports {imported}"
        for module in modules
        for line, imported in module.imports()
        if imported in TRANSPORT_IMPORTS
    ]
    raw_connections = [
        f"{_where(module, node.lineno)}: {ast.unparse(node.func)}"
        for module in modules
        for node in ast.walk(module.tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("connect_unix", "open_unix_connection", "create_unix_connection")
    ]
    assert offenders == []
    assert raw_connections == []
    clients = {
        module.name for module in modules for _, imported in module.imports() if imported == CLIENT
    }
    assert f"{SUPERVISOR}._cli" in clients


# --------------------------------------------------------------------------------------------
# The harness is independent of the code under test


def test_the_harness_never_imports_the_code_under_test() -> None:
    harness = REPO / "sks_harness"
    offenders = []
    for path in sorted(harness.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[0] in (SUPERVISOR, CLIENT)
            ]
    assert offenders == []


def test_nothing_edits_sys_path() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for folder in ("supervisor", "client", "sks_harness", "tests", "bench", "scripts")
        for path in sorted((REPO / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    ]
    assert offenders == []
