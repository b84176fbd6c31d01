"""``python -m spec_kitty_supervisor`` and the ``spec-kitty-supervisor`` command.

``run`` started by a client's auto-start gets a light first stage before anything heavy is
imported (``_early_spawn``, docs/adr/0013): it may spawn the starter's daemon while the rest
of the supervisor is imported.
"""

import os
import sys


def main() -> int:
    early = None
    if sys.argv[1:2] == ["run"]:
        # Only ``run`` has a first stage: the other commands (``doctor``, ``status``) do not
        # import it.
        from ._early_spawn import start_early

        early = start_early(sys.argv[1:], os.environ)
    from ._cli import main as cli_main

    return cli_main(early=early)


if __name__ == "__main__":
    sys.exit(main())
