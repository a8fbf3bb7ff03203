#!/usr/bin/env bash
# run.sh: runs the end-to-end echo and chat specs against the real luahost executable
# under valgrind memcheck (through tests/valgrind/luahost-valgrind as LUAHOST_BIN), then
# reads every server's valgrind log: each must report 0 errors and nothing definitely
# lost. Prints a summary; exits non-zero if the specs or any log failed.
#
#   LUAHOST_REAL_BIN=build/luahost   the executable to check (built by make build)
#   VALGRIND_SPECS="..."             spec files to run (default: echo end to end, chat, TLS)
#   VALGRIND_KEEP=1                  keep the logs even when all is well
#   VALGRIND_EXTRA="..."             more valgrind options (e.g. --track-origins=yes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

bin=${LUAHOST_REAL_BIN:-build/luahost}
read -ra specs <<<"${VALGRIND_SPECS:-tests/spec/echo_e2e_spec.lua tests/spec/chat_spec.lua tests/spec/tls_spec.lua}"
if [[ ! -x $bin ]]; then
    echo "valgrind: $bin is missing: run make build first" >&2
    exit 1
fi
for tool in valgrind lua5.4 busted; do
    command -v "$tool" >/dev/null || {
        echo "valgrind: $tool is not installed" >&2
        exit 1
    }
done

logs=$(mktemp -d "${TMPDIR:-/tmp}/luahost-valgrind.XXXXXX")
export VALGRIND_LOG_DIR=$logs
LUAHOST_REAL_BIN=$(realpath "$bin")
LUAHOST_BIN=$PWD/tests/valgrind/luahost-valgrind
export LUAHOST_REAL_BIN LUAHOST_BIN

start=$SECONDS
spec_rc=0
lua5.4 "$(command -v busted)" --cpath='build/?.so' --lpath='tests/?.lua;lua/?.lua' -o TAP "${specs[@]}" ||
    spec_rc=$?
elapsed=$((SECONDS - start))

# One log per luahost process. A log without an ERROR SUMMARY belongs to a process that
# never got to exit (killed), so valgrind could not check it.
bad=0 procs=0 errors=0 lost=0
for log in "$logs"/vg.*.log; do
    [[ -e $log ]] || continue
    procs=$((procs + 1))
    summary=$(sed -n 's/.*ERROR SUMMARY: \([0-9,]*\) errors.*/\1/p' "$log" | tr -d ,)
    definite=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$log" | tr -d ,)
    definite=${definite:-0}
    if [[ -z $summary ]]; then
        printf 'valgrind: %s: no summary (the process was killed before it exited)\n' \
            "$(basename "$log")" >&2
        bad=$((bad + 1))
        continue
    fi
    errors=$((errors + summary))
    lost=$((lost + definite))
    if ((summary > 0 || definite > 0)); then
        printf 'valgrind: %s: %s errors, %s bytes definitely lost; the log:\n' \
            "$(basename "$log")" "$summary" "$definite" >&2
        sed 's/^/    /' "$log" | head -n 80 >&2
        bad=$((bad + 1))
    fi
done

printf '\nvalgrind: %d luahost processes checked in %d s: %d errors, %d bytes definitely lost' \
    "$procs" "$elapsed" "$errors" "$lost"
printf '; specs %s\n' "$( ((spec_rc == 0)) && echo passed || echo "FAILED (exit $spec_rc)")"
if ((procs == 0)); then
    echo "valgrind: no luahost process ran under valgrind" >&2
    bad=1
fi
if ((bad > 0 || spec_rc != 0)); then
    echo "valgrind: FAILED; logs kept in $logs" >&2
    exit 1
fi
if [[ ${VALGRIND_KEEP:-0} == 1 ]]; then
    echo "valgrind: logs kept in $logs"
else
    rm -rf "$logs"
fi
