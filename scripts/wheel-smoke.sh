#!/usr/bin/env bash
# The wheel, installed alone, does the main job: build it, install it into a fresh venv (its
# dependencies from PyPI), and in a throwaway HOME let its console script auto-start a
# supervisor that spawns a real spec-kitty 3.2.4 daemon; then stop both and prove they are gone.
#
# Catches what the editable dev install hides: files missing from the wheel, dependencies
# missing from pyproject.toml, a client that imports the supervisor's heavy dependencies.
#
# Everything it starts is stopped by pid (each pid re-checked against its start time and its
# command line first) and its folder removed, on success, failure or Ctrl-C.
#
# Environment: SPEC_KITTY_VENVS (the real spec-kitty venvs, see scripts/spec-kitty-venvs.sh),
# DEV_PYTHON (the interpreter with `build`; default .venv/bin/python), KEEP_WHEEL_SMOKE=1 keeps
# the temporary folder for inspection.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dev_python="${DEV_PYTHON:-$repo/.venv/bin/python}"
venvs="${SPEC_KITTY_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/spec-kitty-supervisor/venvs}"
spec_kitty_python="$venvs/spec-kitty-3.2.4/bin/python"
port_range="9425-9450"
began=$SECONDS

say() { printf 'wheel smoke: %s\n' "$*"; }
fail() {
  printf 'wheel smoke: FAILED: %s\n' "$*" >&2
  exit 1
}

[ -x "$dev_python" ] || fail "no dev interpreter at $dev_python (run \`make venv\`)"
[ -x "$spec_kitty_python" ] || fail "spec-kitty-cli 3.2.4 is not installed at $venvs (run \`make spec-kitty-venvs\`)"
command -v curl >/dev/null || fail "curl is needed"

# A short base keeps the supervisor's socket path (HOME/.spec-kitty/supervisor/...) bindable.
work="$(mktemp -d /tmp/sks-wheel.XXXXXX)"
home="$work/home"
fresh="$work/venv"
cli="$fresh/bin/spec-kitty-supervisor"
mkdir -m 700 "$home"
# Resolved, as the supervisor and upstream write it into every daemon's root marker.
root="$(cd "$home" && pwd -P)/.spec-kitty"

# -- processes, by pid and proven identity only ---------------------------------------------

# The raw start (clock ticks since boot) of a live, non-zombie pid; empty when there is none.
start_of() {
  local stat rest
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  rest="${stat##*) }" # the command name may hold spaces and parentheses
  set -- $rest
  case "$1" in Z | X) return 0 ;; esac
  printf '%s' "${20}"
}

# True while pid $1 is the process that had start $2.
same_process() {
  [ -n "$2" ] && [ "$(start_of "$1")" = "$2" ]
}

# True when pid $1's command line names our sandbox root (a daemon's root marker, or a
# supervisor's --root): the proof that it is something this script started.
names_our_root() {
  tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF -e "--spec-kitty-daemon-root=$root" -e "$root"
}

# Stop pid $1 (start $2): SIGTERM, then SIGKILL, re-checking identity before each signal.
stop_pid() {
  local pid="$1" start="$2" signal waited
  for signal in TERM KILL; do
    same_process "$pid" "$start" && names_our_root "$pid" || return 0
    kill "-$signal" "$pid" 2>/dev/null || return 0
    for waited in $(seq 50); do
      same_process "$pid" "$start" || return 0
      sleep 0.1
    done
  done
  echo "wheel smoke: pid $pid survived SIGKILL" >&2
}

# Every pid this run may have started: the supervisor (its lock file), its journal's daemons,
# and the daemon the ensure answer named.
known_pids() {
  [ -f "$root/supervisor/supervisor.lock" ] && head -n1 "$root/supervisor/supervisor.lock"
  [ -f "$root/supervisor/state.json" ] && "$dev_python" -c '
import json, sys
for daemon in json.load(open(sys.argv[1])).get("daemons", []):
    print(daemon["pid"])
' "$root/supervisor/state.json" 2>/dev/null
  [ -n "${daemon_pid:-}" ] && echo "$daemon_pid"
  [ -n "${supervisor_pid:-}" ] && echo "$supervisor_pid"
  return 0
}

cleanup() {
  local status=$? pid start
  trap - EXIT INT TERM
  trap '' INT
  if [ -x "$cli" ] && [ -S "$root/supervisor/supervisor.sock" ]; then
    HOME="$home" timeout --foreground 30 "$cli" stop --children --root "$root" >/dev/null 2>&1 || true
  fi
  for pid in $(known_pids | sort -u); do
    case "$pid" in '' | *[!0-9]*) continue ;; esac
    start="$(start_of "$pid")"
    [ -n "$start" ] && stop_pid "$pid" "$start"
  done
  if [ "${KEEP_WHEEL_SMOKE:-}" = 1 ]; then
    echo "wheel smoke: kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# JSON field $2 (a Python expression over `doc`) of the document in file $1.
field() {
  "$fresh/bin/python" -c '
import json, sys
doc = json.load(open(sys.argv[1]))
value = eval(sys.argv[2], {"doc": doc})
print("" if value is None else value)
' "$1" "$2"
}

# The supervisor's CLI from the fresh venv, in the sandbox: a clean environment, so nothing of
# the caller's (SPEC_KITTY_HOME, VIRTUAL_ENV, PYTHONPATH) leaks in.
run_cli() {
  env -i HOME="$home" PATH="$fresh/bin:/usr/bin:/bin" LANG="${LANG:-C.UTF-8}" \
    SPEC_KITTY_SUPERVISOR_PORT_RANGE="$port_range" \
    timeout --foreground 120 "$cli" "$@"
}

# -- 1. build the wheel ---------------------------------------------------------------------
say "building the wheel"
src="$work/src"
mkdir "$src"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # Build from a copy of the working tree (tracked and new files, nothing ignored), so the
  # build leaves no build/ or egg-info behind in the checkout.
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' path; do [ -f "$path" ] && printf '%s\0' "$path"; done |
    tar --null -T - -cf -) | tar -xf - -C "$src"
else
  src="$repo"
fi
"$dev_python" -m build --wheel --outdir "$work/dist" "$src" >"$work/build.log" 2>&1 ||
  { tail -n 30 "$work/build.log" >&2; fail "python -m build --wheel failed (log above)"; }
wheels=("$work"/dist/*.whl)
[ ${#wheels[@]} -eq 1 ] && [ -f "${wheels[0]}" ] || fail "expected one wheel in $work/dist"
wheel="${wheels[0]}"
say "built $(basename "$wheel")"
# Only the two product packages ship: never the test harness, the tests or the benchmarks.
strays="$("$dev_python" -c '
import sys, zipfile
tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(sys.argv[1]).namelist()}
print(" ".join(sorted(t for t in tops if not t.startswith(("spec_kitty_supervisor", "spec_kitty_supervisor-")))))
' "$wheel")"
[ -z "$strays" ] || fail "the wheel ships more than the product packages: $strays"
say "the wheel holds spec_kitty_supervisor and spec_kitty_supervisor_client only"

# -- 2. install it alone into a fresh venv ----------------------------------------------------
say "installing it into a fresh venv (dependencies from PyPI)"
base_python="$("$dev_python" -c 'import os, sys; print(os.path.join(sys.base_prefix, "bin", "python3"))')"
"$base_python" -m venv "$fresh" || fail "could not create a venv with $base_python"
"$fresh/bin/pip" install --quiet --disable-pip-version-check "$wheel" >"$work/pip.log" 2>&1 ||
  { tail -n 30 "$work/pip.log" >&2; fail "pip install of the wheel failed (log above)"; }
[ -x "$cli" ] || fail "the wheel installed no spec-kitty-supervisor console script"

(cd "$work" && "$fresh/bin/python" -c '
import sys
import spec_kitty_supervisor, spec_kitty_supervisor_client
for module in (spec_kitty_supervisor, spec_kitty_supervisor_client):
    assert module.__file__.startswith(sys.prefix), f"{module.__name__} imported from {module.__file__}"
') || fail "the packages were not imported from the fresh venv"
(cd "$work" && "$fresh/bin/python" -c "import spec_kitty_supervisor_client, sys; assert 'psutil' not in sys.modules and 'structlog' not in sys.modules") ||
  fail "importing spec_kitty_supervisor_client pulled in psutil or structlog"
say "the client imports without psutil and structlog"
version_line="$(run_cli --version)" || fail "spec-kitty-supervisor --version failed"
say "$version_line"

# -- 3. ensure: auto-start a supervisor and a real 3.2.4 daemon ----------------------------------
say "ensure --python spec-kitty-3.2.4 in HOME=$home (ports $port_range)"
run_cli ensure --root "$root" --python "$spec_kitty_python" --json >"$work/ensure.json" ||
  fail "ensure exited with $? (its stderr is above)"
action="$(field "$work/ensure.json" 'doc["action"]')"
daemon_pid="$(field "$work/ensure.json" 'doc["daemon"]["pid"]')"
daemon_version="$(field "$work/ensure.json" 'doc["daemon"]["package_version"]')"
daemon_url="$(field "$work/ensure.json" 'doc["daemon"]["url"]')"
daemon_start="$(start_of "$daemon_pid")"
[ "$action" = spawned ] || fail "ensure action is '$action', expected 'spawned'"
[ "$daemon_version" = 3.2.4 ] || fail "daemon package_version is '$daemon_version', expected 3.2.4"
[[ "$daemon_url" =~ ^http://127\.0\.0\.1:([0-9]+)$ ]] || fail "daemon url '$daemon_url' is not http://127.0.0.1:PORT"
daemon_port="${BASH_REMATCH[1]}"
((daemon_port >= 9425 && daemon_port < 9450)) || fail "daemon port $daemon_port is outside $port_range"
[ -n "$daemon_start" ] || fail "daemon pid $daemon_pid is not alive after ensure"
names_our_root "$daemon_pid" || fail "pid $daemon_pid does not carry the root marker of $root"
say "spawned pid $daemon_pid at $daemon_url (spec-kitty-cli $daemon_version)"

curl -fsS --max-time 5 "$daemon_url/api/health" >"$work/health.json" ||
  fail "the daemon's /api/health did not answer at $daemon_url"
health_version="$(field "$work/health.json" 'doc.get("package_version")')"
[ "$health_version" = 3.2.4 ] || fail "/api/health reports package_version '$health_version'"
say "curl $daemon_url/api/health answers (package_version $health_version)"

# -- 4. status ----------------------------------------------------------------------------------
run_cli status --root "$root" --json >"$work/status.json" || fail "status --json exited with $?"
supervisor_pid="$(field "$work/status.json" 'doc["supervisor"]["pid"]')"
supervisor_start="$(start_of "$supervisor_pid")"
[ -n "$supervisor_start" ] || fail "the supervisor pid $supervisor_pid is not alive"
listed="$(field "$work/status.json" '" ".join(str(d["pid"]) for d in doc["daemons"] if d["role"] == "current")')"
[ "$listed" = "$daemon_pid" ] || fail "status lists current daemon(s) '$listed', expected $daemon_pid"
say "status: supervisor pid $supervisor_pid owns daemon pid $daemon_pid"

# -- 5. stop --children, and prove both are gone -------------------------------------------------
run_cli stop --children --root "$root" --json >"$work/stop.json" || fail "stop --children exited with $?"
stopped="$(field "$work/stop.json" '" ".join(str(p) for p in doc["children_stopped"])')"
[ "$stopped" = "$daemon_pid" ] || fail "stop --children stopped '$stopped', expected $daemon_pid"
for _ in $(seq 100); do
  same_process "$daemon_pid" "$daemon_start" || same_process "$supervisor_pid" "$supervisor_start" || break
  sleep 0.1
done
! same_process "$daemon_pid" "$daemon_start" || fail "daemon pid $daemon_pid is still alive after stop --children"
! same_process "$supervisor_pid" "$supervisor_start" || fail "supervisor pid $supervisor_pid is still alive after stop"
[ ! -S "$root/supervisor/supervisor.sock" ] || fail "the supervisor left its socket behind"
if [ -f "$root/sync-daemon" ]; then
  fail "R/sync-daemon still names a daemon after stop --children: $(tr '\n' ' ' <"$root/sync-daemon")"
fi
say "stopped: daemon pid $daemon_pid and supervisor pid $supervisor_pid are gone"

say "ok ($((SECONDS - began)) s)"
