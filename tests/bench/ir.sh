#!/usr/bin/env bash
# ir.sh: instructions and allocator calls per message under callgrind, for any server of
# the bench. Usage: tests/bench/ir.sh [echo|chat|tls|handshake] [CONNECTIONS] [SECONDS]
# [SERVER] (SERVER: luahost, c, python, luv, cqueues, copas; chat, tls (echo over TLS) and
# handshake (TLS handshakes): luahost, c). IR_HOST=PATH measures another luahost
# executable, IR_KEEP=FILE keeps the dump, IR_TOP=N prints the N functions with the most
# inclusive instructions. The method: tests/bench/ir.lua.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec lua5.4 tests/bench/ir.lua "$@"
