"""``python -m spec_kitty_supervisor`` and the ``spec-kitty-supervisor`` command.

``run`` gets a light first stage before anything heavy is imported: a plain ``run --root R``
takes the root and serves its socket first (``_first_stage``, docs/adr/0015), then an
auto-started one may spawn its starter's daemon (``_early_spawn``, docs/adr/0013), while the
rest of the supervisor is imported.
"""

import os
import sys


def main() -> int:
    # Before anything imports pydantic: the supervisor runs no pydantic plugins (ADR 0019).
    from ._pydantic_plugins import disable_pydantic_plugins

    disable_pydantic_plugins()
    early = None
    if sys.argv[1:2] == ["run"]:
        # Only ``run`` has a first stage: the other commands (``doctor``, ``status``) do not
        # import it.
        from ._first_stage import take_root

        taken = take_root(sys.argv[1:], os.environ)
        from ._early_spawn import start_early

        early = start_early(sys.argv[1:], os.environ, taken)
    try:
        from ._cli import main as cli_main

        return cli_main(early=early)
    except BaseException as exc:
        # Failed before the runner took the first stage's work over (an import of a broken
        # install): stop its daemon, close its socket, free the root, so that no daemon of
        # ours is left running unrecorded. A no-op for what the runner already took or let go.
        if early is None or isinstance(early, str):
            raise
        if not isinstance(exc, Exception):
            early.let_go()
            raise
        # The traceback is written whole before the socket closes: the starter reads this
        # stderr as soon as its connection breaks, and half a traceback says nothing.
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        early.let_go()
        raise SystemExit(1) from None


if __name__ == "__main__":
    sys.exit(main())
