# common.sh - what the scripts in scripts/ share (sourced, not run): their messages, usage text and shell quoting,
# and starting `lnetctl serve` up to its ready file.
#
# PROG is the message prefix (default: the script's name without .sh, e.g. "softroce-vm"); DIE_STATUS the exit
# status of die (default 1). A script may set either before or after sourcing this file.
# shellcheck shell=bash

# The script that sourced this file (first in the chain), by absolute path: scripts cd elsewhere.
SELF=$(cd "$(dirname "${BASH_SOURCE[-1]}")" && pwd -P)/$(basename "${BASH_SOURCE[-1]}")
PROG=${PROG:-$(basename "$SELF" .sh)}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "$*"; exit "${DIE_STATUS:-1}"; }

# The script's header comment (from its second line up to "set -euo"), which is its usage text.
usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"
}
# bad_usage [MESSAGE]: MESSAGE (if any), then on stderr the synopsis - the header's "# Usage: ..." line (up to two
# spaces in a row), or the whole usage text where "Usage:" stands alone - and exit 2.
bad_usage() {
    (($# == 0)) || log "$*"
    local line
    line=$(sed -n 's/^# Usage: *\([^ ].*\)$/\1/p' "$SELF" | head -n 1)
    if [[ -n $line ]]; then
        printf 'usage: %s\n' "${line%%  *}" >&2
    else
        usage >&2
    fi
    exit 2
}

# Single-quote a string for POSIX sh.
squote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# wait_ready FILE SECONDS ALIVE...: polls (every 0.1 s) until FILE exists. Returns 0 then, 1 as soon as the command
# ALIVE (e.g. kill -0 PID) fails without FILE there, 2 after SECONDS.
wait_ready() {
    local file=$1 seconds=$2 i
    shift 2
    for ((i = 0; i < seconds * 10; i++)); do
        [[ -e $file ]] && return 0
        if ! "$@" 2>/dev/null; then
            [[ -e $file ]] && return 0
            return 1
        fi
        sleep 0.1
    done
    return 2
}

# start_serve READY SECONDS COMMAND...: starts COMMAND --ready-file READY (an `lnetctl serve ...` command line,
# perhaps behind env) in the background, sets SERVE_PID, and waits until READY exists: wait_ready's statuses (1: the
# server exited first, 2: not ready after SECONDS; it is left running then). Redirect the call to redirect the
# server's output.
start_serve() {
    local ready=$1 seconds=$2
    shift 2
    rm -f "$ready"
    "$@" --ready-file "$ready" &
    SERVE_PID=$!
    wait_ready "$ready" "$seconds" kill -0 "$SERVE_PID"
}
