#!/usr/bin/env bash
# ir.sh: user-space instructions per message under callgrind, the steady measure of the
# host's own cost (wall-clock and tick-based CPU drift 2x on these VMs; instruction counts
# do not). Usage: tests/bench/ir.sh [echo|chat] [CONNECTIONS] [SECONDS]
#
# Runs build/luahost on scripts/echo.lua or scripts/chat.lua under callgrind, puts the
# load generator's load on it (64-byte messages, one in flight per connection), zeroes the
# counters once the warm-up is over, dumps them after SECONDS of load, and divides the
# host's instructions by the calls of net_send: one per echoed message, one per chat
# delivery (the load generator's own count and callgrind's window are not the same).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

mode=${1:-echo}
conns=${2:-100}
seconds=${3:-4}
case $mode in
echo | chat) ;;
*) echo "usage: $0 [echo|chat] [CONNECTIONS] [SECONDS]" >&2 && exit 2 ;;
esac
bin_host=${IR_HOST:-build/luahost} # IR_HOST: another build of the executable, to compare
[ -x "$bin_host" ] || { echo "$0: $bin_host is missing: run make" >&2 && exit 1; }

bin=build/bench
mkdir -p "$bin"
[ "$bin/loadgen" -nt tests/bench/loadgen.c ] ||
    cc -O2 -Wall -Wextra -std=c11 -o "$bin/loadgen" tests/bench/loadgen.c

work=$(mktemp -d)
trap 'kill -KILL "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

# A free port: the kernel's choice for a socket bound to port 0.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

valgrind --tool=callgrind --callgrind-out-file="$work/out" \
    "$bin_host" --log-level warn "scripts/$mode.lua" "127.0.0.1:$port" 2>"$work/log" &
server=$!
"$bin/loadgen" --mode probe --port "$port" --cap 60 >/dev/null ||
    { cat "$work/log" >&2 && exit 1; }

warmup=3
timeout -k 5 $((warmup + seconds + 60)) "$bin/loadgen" --mode "$mode" --port "$port" \
    -c "$conns" -s 64 -d 1 --warmup "$warmup" --duration "$seconds" --cap $((warmup + seconds + 50)) \
    >"$work/load" 2>&1 &
load=$!
sleep "$((warmup + 1))"
callgrind_control -z "$server" >/dev/null
sleep "$seconds"
callgrind_control -d "$server" >/dev/null
wait "$load" || true
kill -TERM "$server"
wait "$server" || true

dump=$(ls "$work"/out.* | sort | head -n 1)
total=$(callgrind_annotate --inclusive=no "$dump" 2>/dev/null |
    awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
# Calls to net_send, wherever it is called from. callgrind names a function once, in an
# fn= or cfn= line as "(ID) NAME", and by "(ID)" alone after that.
sends=$(awk '/^c?fn=/ { id = $1; sub(/^c?fn=/, "", id)
                        if ($2 == "net_send") send_id = id }
             /^cfn=/ { want = (id == send_id); next }
             want && /^calls=/ { split($1, a, "="); n += a[2] }
             { want = 0 }
             END { print n + 0 }' "$dump")
[ "$sends" -gt 0 ] || { echo "$0: no net_send call was counted" >&2 && exit 1; }
echo "mode=$mode connections=$conns sends=$sends instructions=$total" \
    "per_message=$((total / sends))"
# IR_KEEP=FILE keeps the dump, for callgrind_annotate.
[ -z "${IR_KEEP:-}" ] || cp "$dump" "$IR_KEEP"
