"""An interpreter's spec-kitty-cli version is a fact the supervisor learns, not a claim it trusts.

A client may say which version it runs, or say nothing; either way the supervisor learns what
the interpreter itself would say in isolated mode, once, and keeps the answer. For a venv it
reads the one ``spec_kitty_cli`` dist-info of the venv's site-packages, which is what
``PYTHON -I`` finds first (:func:`release_from_files`, ADR 0009: no interpreter start on the
cold path). Otherwise it asks the interpreter (``PYTHON -I -c``: isolated, so neither the
client's environment nor a ``.kitty.env`` file can change the answer, and spec-kitty itself is
not imported). A claim that disagrees with the fact is refused with both versions named: a daemon
spawned under a wrong version would be reused by the wrong CLIs and replaced by the right ones.

The answer is kept while the site-packages directory holding ``spec_kitty_cli-*.dist-info`` is
unchanged: installing or upgrading a distribution there renames its dist-info folder, which
changes that directory's ``st_mtime_ns``. One ``stat`` per ``ensure`` checks it. The
interpreter's own file would not do: a venv's ``bin/python`` is a link to a base interpreter
that an upgrade of spec-kitty never touches. Entries are keyed by the interpreter path as the
client gives it (venvs share one resolved base interpreter, so the resolved path alone would
mix them) together with its resolved path.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread
from pydantic import Field

from spec_kitty_supervisor_client._discover import release_from_files
from spec_kitty_supervisor_client._models import EnsureRequest
from spec_kitty_supervisor_client._releases import UNKNOWN_VERSION

from ._errors import LifecycleError

__all__ = ["EstablishedEnsure", "InstalledVersions", "ask_interpreter", "learn_release"]

#: Prints the installed version and the directory holding its dist-info, nothing else.
_VERSION_SCRIPT = (
    "import importlib.metadata as m\n"
    "d = m.distribution('spec-kitty-cli')\n"
    "print(d.version)\n"
    "print(d.locate_file(''))\n"
)
_ASK_TIMEOUT = 30.0


class EstablishedEnsure(EnsureRequest):
    """An ``ensure`` whose ``package_version`` is the interpreter's installed version."""

    package_version: str = Field(min_length=1, max_length=64)


@dataclass(frozen=True)
class _Learnt:
    resolved_python: str
    site_dir: str
    site_mtime_ns: int
    version: str


def ask_interpreter(python: str) -> tuple[str, str]:
    """``(version, site-packages dir)`` of spec-kitty-cli for ``python``, by running it once."""
    try:
        result = subprocess.run(
            [python, "-I", "-c", _VERSION_SCRIPT],
            capture_output=True,
            text=True,
            timeout=_ASK_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise LifecycleError(
            "invalid_python", f"python {python} did not say its spec-kitty-cli version in time"
        ) from None
    except OSError as exc:
        raise LifecycleError("invalid_python", f"could not run python {python}: {exc}") from None
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) != 2 or not lines[0].strip():
        last = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        raise LifecycleError(
            "invalid_python",
            f"spec-kitty-cli is not installed for python {python} ({last}); pass the "
            "interpreter of a spec-kitty installation (the shebang of its `spec-kitty` command)",
        )
    return lines[0].strip(), lines[1].strip()


def learn_release(python: str) -> tuple[str, str]:
    """``(version, site-packages dir)``: read from a venv's files when certain, else asked."""
    found = release_from_files(python)
    return found if found is not None else ask_interpreter(python)


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class InstalledVersions:
    """What each interpreter has installed, learnt once and re-learnt after an install."""

    def __init__(self, ask: Callable[[str], tuple[str, str]] = learn_release) -> None:
        self._ask = ask
        self._learnt: dict[str, _Learnt] = {}
        self._last_established: tuple[EnsureRequest, str, EstablishedEnsure] | None = None

    def known(self, python: str, resolved_python: str) -> str | None:
        """The version learnt for ``python`` while nothing was installed since; else None."""
        learnt = self._learnt.get(python)
        if learnt is None or learnt.resolved_python != resolved_python:
            return None
        if _mtime_ns(learnt.site_dir) != learnt.site_mtime_ns:
            return None
        return learnt.version

    def learn(self, python: str, resolved_python: str) -> str:
        """Learn ``python``'s release once and remember it (blocking: call it off the loop)."""
        version, site_dir = self._ask(python)
        mtime_ns = _mtime_ns(site_dir)
        # An install between the question and the stat would pair the old answer with the new
        # time; the answer's own dist-info folder still being there rules that out (checked
        # after the stat, so a later install changes the time and is seen by the next ensure).
        dist_info = os.path.join(site_dir, f"spec_kitty_cli-{version}.dist-info")
        if mtime_ns is not None and os.path.isdir(dist_info):
            self._learnt[python] = _Learnt(resolved_python, site_dir, mtime_ns, version)
        return version

    async def establish(self, request: EnsureRequest, resolved_python: str) -> EstablishedEnsure:
        """``request`` with the interpreter's own version; a contradicting claim is refused."""
        version = self.known(request.python, resolved_python)
        if version is None:
            version = await anyio.to_thread.run_sync(self.learn, request.python, resolved_python)
        claimed = request.package_version
        # "unknown" is what every 3.1 CLI says of itself: no claim at all.
        if claimed is not None and claimed not in (UNKNOWN_VERSION, version):
            raise LifecycleError(
                "version_mismatch",
                f"the request says spec-kitty-cli {claimed}, but {request.python} has "
                f"spec-kitty-cli {version} installed; ask without a version (the supervisor "
                "reads it) or with the installed one",
                {"claimed": claimed, "installed": version},
            )
        # The same request object (``_api.ParsedBodies`` gives it again for the same body)
        # with the same version is the same established request: both are frozen.
        last = self._last_established
        if last is not None and last[0] is request and last[1] == version:
            return last[2]
        # The fields were validated when the request was parsed; only the version is new.
        # Every field of the request (a new one included) carries over.
        # (``__dict__`` is the fields' values: a third of the cost of iterating the model.)
        established = EstablishedEnsure.model_construct(
            **{**request.__dict__, "package_version": version}
        )
        self._last_established = (request, version, established)
        return established
