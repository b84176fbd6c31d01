#!/usr/bin/env bash
# Installs the real spec-kitty-cli releases from PyPI into cached venvs, one per version.
# The venvs are shared by `make demo`, the interop tests and the benchmarks; a venv is only
# rebuilt when its marker file is missing, so a second run costs nothing.
set -euo pipefail

cache="${SPEC_KITTY_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/spec-kitty-supervisor/venvs}"
python="${PYTHON:-python3}"
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
  # The releases the tests, demo and benchmarks run: KNOWN_VERSIONS of sks_harness, and one
  # release of each other family (3.1, 3.2.0-3.2.2, 3.2.4-3.2.5) plus 4.0 for the refusal
  # (tests/interop/test_releases.py), and 3.2.0 and 3.2.6 so that the hook's function shapes
  # are checked on every release it patches (tests/interop/test_release_shapes.py).
  # `make matrix` installs every release 3.1.0-3.2.7.
  versions=(3.1.10 3.2.0 3.2.1 3.2.2 3.2.3 3.2.4 3.2.5 3.2.6 3.2.7 4.0.0rc7)
fi

mkdir -p "$cache"
pids=()
for version in "${versions[@]}"; do
  venv="$cache/spec-kitty-$version"
  if [ -f "$venv/.installed" ]; then
    continue
  fi
  (
    rm -rf "$venv"
    "$python" -m venv "$venv"
    # typer 0.25.1: newer typer releases break the 3.x command line (contract document). The
    # 4.0 line requires typer>=0.27.3,<0.28 and works with it, so it gets no pin.
    pins=("typer==0.25.1")
    case "$version" in
      [4-9].*) pins=() ;;
    esac
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "spec-kitty-cli==$version" ${pins[@]+"${pins[@]}"} >"$venv.log" 2>&1 \
      || { echo "spec-kitty-cli $version: install failed, see $venv.log" >&2; exit 1; }
    touch "$venv/.installed"
  ) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
[ $status -eq 0 ] && echo "$cache"
exit $status
