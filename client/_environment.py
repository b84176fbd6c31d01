"""Which of a client's environment variables a sync daemon inherits.

One allow-list, shared: the client sends only these (the warm ``ensure`` stays small), and the
supervisor applies the same list again before it spawns (it never trusts what it was sent).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PASSED_ENV_NAMES", "PASSED_ENV_PREFIXES", "passed_environment"]

PASSED_ENV_NAMES = frozenset(
    {
        "HOME",
        "PATH",
        "USER",
        "LOGNAME",
        "SHELL",
        "TMPDIR",
        "TZ",
        "LANG",
        "LANGUAGE",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
        "XDG_STATE_HOME",
        "VIRTUAL_ENV",
    }
)
PASSED_ENV_PREFIXES = ("LC_", "SPEC_KITTY_")
#: Set by the supervisor itself for each daemon; never taken from a client.
_SET_BY_SUPERVISOR = frozenset({"SPEC_KITTY_HOME", "SPEC_KITTY_CLI_VERSION"})


def passed_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of ``env``."""
    # Keys first, values only for the few that pass: reading os.environ decodes each value,
    # and this runs on every warm ensure.
    return {
        key: env[key]
        for key in env
        if key not in _SET_BY_SUPERVISOR
        and (key in PASSED_ENV_NAMES or key.startswith(PASSED_ENV_PREFIXES))
    }
