-- run.lua: `make bench`: luahost against the C limit and every peer, side by side in one
-- run. Installs the peers (vendor/bench-packages.txt), builds the load generator and the
-- C reference servers into build/bench/, measures every server's instructions and
-- allocator calls per message under callgrind (tests/bench/ir.lua), then runs every
-- wall-clock scenario on every server, interleaved (server on CPU 0, load on CPU 1),
-- prints the tables and writes docs/benchmarks.md and docs/benchmarks.png. Echo over TLS
-- and TLS handshakes (tests/bench/tls.lua) set luahost beside a C OpenSSL server, with a
-- certificate made for the run. Everything talks to 127.0.0.1 only; every load is bounded.
--
-- Run from the project root:  lua5.4 tests/bench/run.lua     (make bench does that)
-- Environment: BENCH_ROUNDS (2), BENCH_DURATION (3 s), BENCH_WARMUP (1 s),
--   BENCH_IR_SECONDS (2 s under callgrind, after its own 1 s warm-up),
--   BENCH_ONLY=ir-echo,ir-chat,ir-tls,ir-tls-handshake,echo-100,chat,chat-redis,
--   tls-echo-100,tls-handshake (some scenarios: `make bench-ir` runs the callgrind ones,
--   ir-*), BENCH_SERVERS=luahost,c (some servers).
--   With BENCH_ONLY or BENCH_SERVERS the report goes to build/bench/, not docs/.

local common = dofile("tests/bench/common.lua")
local ir = dofile("tests/bench/ir.lua")
local tls = dofile("tests/bench/tls.lua")
local log, die, sh, capture = common.log, common.die, common.sh, common.capture
local selected, parse, free_port = common.selected, common.parse, common.free_port
local ECHO_SERVERS, CHAT_SERVERS = common.ECHO_SERVERS, common.CHAT_SERVERS

local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 2
local DURATION = tonumber(os.getenv("BENCH_DURATION")) or 3
local WARMUP = tonumber(os.getenv("BENCH_WARMUP")) or 1
local IR_SECONDS = tonumber(os.getenv("BENCH_IR_SECONDS")) or 2
local IR_CONNS = 100
local ONLY, ONLY_SERVERS = os.getenv("BENCH_ONLY"), os.getenv("BENCH_SERVERS")
local OUT_DIR = (ONLY or ONLY_SERVERS) and "build/bench" or "docs"
local BIN = common.BIN
local SERVER_CPU, LOAD_CPU = 0, 1
local IDLE_CONNS = 10000
local DISTURBED = 0.4 -- CPUs of other load during a run above which it is run again
local RETRY_BUDGET = 90 -- seconds the whole bench may spend running disturbed runs again
-- Seconds after which no further run starts: the bench stays near 10 min, plus 2 for TLS.
local DEADLINE = 720

-- Scenarios ------------------------------------------------------------------------------

local start_redis_chat -- below: two chat servers joined by a redis-server of the bench's own

-- Chat across two servers through Redis: the clients are split between them (loadgen
-- --port2), and CPU counts both servers and Redis, all three on the server's CPU.
local REDIS_CHAT_SERVERS = {
  { key = "luahost", name = "chat.lua, one server",
    cmd = "build/luahost --log-level warn scripts/chat.lua 127.0.0.1:%d" },
  { key = "luahost_redis", name = "chat.lua, 2 servers + Redis",
    start = function(...) return start_redis_chat(...) end },
}

-- One process against --workers 2. The machine has 2 CPUs and the load generator takes
-- one, so pinned as every server is (CPU 0) the two workers share one CPU; unpinned
-- they may use both, taking CPU from the load generator. The loadgen's CPU columns would
-- count the master alone (the workers are its children), so this table shows rates and
-- latencies only; and the workers' CPU is what the loadgen calls other load, so their
-- runs are not run again for it (`children`).
local WORKERS_SERVERS = {
  { key = "one", name = "luahost echo.lua, one process (CPU 0)",
    cmd = "build/luahost scripts/echo.lua 127.0.0.1:%d" },
  { key = "workers", name = "luahost --workers 2 echo.lua (CPU 0)", children = true,
    cmd = "build/luahost --workers 2 --log-level warn scripts/echo.lua 127.0.0.1:%d" },
  { key = "workers_any", name = "luahost --workers 2 echo.lua (any CPU)", cpus = "0,1",
    children = true,
    cmd = "build/luahost --workers 2 --log-level warn scripts/echo.lua 127.0.0.1:%d" },
}

local SCENARIOS = {
  { id = "echo-10", mode = "echo", c = 10, s = 64, d = 1, servers = ECHO_SERVERS, plot = true,
    title = "echo, 10 connections, 64 B, 1 in flight (plot only)" },
  { id = "echo-100", mode = "echo", c = 100, s = 64, d = 1, servers = ECHO_SERVERS, plot = true,
    title = "echo, 100 connections, 64 B, 1 in flight" },
  { id = "echo-1000", mode = "echo", c = 1000, s = 64, d = 1, servers = ECHO_SERVERS,
    plot = true, title = "echo, 1000 connections, 64 B, 1 in flight" },
  { id = "echo-5000", mode = "echo", c = 5000, s = 64, d = 1, servers = ECHO_SERVERS,
    plot = true, title = "echo, 5000 connections, 64 B, 1 in flight (plot only)" },
  { id = "bulk", mode = "echo", c = 100, s = 16384, d = 1, servers = ECHO_SERVERS,
    title = "bulk echo, 100 connections, 16 KiB, 1 in flight" },
  { id = "pipelined", mode = "echo", c = 100, s = 64, d = 16, servers = ECHO_SERVERS,
    title = "pipelined echo, 100 connections, 64 B, 16 in flight" },
  { id = "idle", mode = "idle", c = IDLE_CONNS, s = 64, d = 1, servers = ECHO_SERVERS,
    rounds = 1, title = "idle: 10,000 connections held, one verified round trip each" },
  { id = "chat", mode = "chat", c = 100, s = 64, d = 1, servers = CHAT_SERVERS,
    title = "chat fan-out, 100 clients, one broadcast in flight" },
  { id = "chat-redis", mode = "chat", c = 100, s = 64, d = 1, servers = REDIS_CHAT_SERVERS,
    ref = "luahost", title = "chat across two servers through Redis (chat.lua --redis) against"
      .. " one server alone, 100 clients, one broadcast in flight" },
  { id = "workers", mode = "echo", c = 100, s = 64, d = 1, servers = WORKERS_SERVERS,
    title = "workers (wall clock): echo, 100 connections, 64 B, one process against "
      .. "--workers 2 on a 2-CPU machine whose other CPU runs the load generator" },
}
for _, sc in ipairs(tls.SCENARIOS) do SCENARIOS[#SCENARIOS + 1] = sc end

-- Setup ----------------------------------------------------------------------------------

local function setup()
  if not sh("vendor/install vendor/bench-packages.txt") then
    die("the bench's packages are missing (vendor/bench-packages.txt)")
  end
  common.build_tools()
end

-- Every server and the load generator get the fd limit the idle scenario needs, within
-- the hard limit (raising that needs CAP_SYS_RESOURCE, which a container may not have).
local function fd_limit()
  local hard = capture("sh -c 'ulimit -Hn'")
  if hard == "unlimited" then return IDLE_CONNS + 512 end
  return math.min(IDLE_CONNS + 512, tonumber(hard) or 1024)
end

local FD_LIMIT
local BUILD -- git describe of the tree measured, taken before the run writes anything

-- Running one measurement ----------------------------------------------------------------

local started = os.time()

local alive = common.alive

local function start_server(server, port, logfile)
  local cmd = common.command(server, port)
  local pid = capture(string.format(
    "sh -c 'exec prlimit --nofile=%d:%d taskset -c %s %s >%s 2>&1 </dev/null' & echo $!",
    FD_LIMIT, FD_LIMIT, tostring(server.cpus or SERVER_CPU), cmd, logfile))
  if not sh(string.format("%s/loadgen --mode probe --port %d --cap 10", BIN, port))
    or not alive(pid) then -- another process answering on the port is not our server
    return nil
  end
  return tonumber(pid)
end

local function stop_server(pid)
  common.stop(pid, 40)
end

local function read_log(path)
  local f = io.open(path)
  local text = f and f:read("a") or ""
  if f then f:close() end
  return text
end

-- A redis-server and two chat.lua --redis on it, the first on port; returns the first's
-- pid and what else the load generator needs and the bench must stop, or nil.
start_redis_chat = function(_, port, logfile)
  local redis_port, port2 = free_port(), free_port()
  local redis = start_server({ cmd = "redis-server --port %d --bind 127.0.0.1 --save \"\""
    .. " --appendonly no --daemonize no" }, redis_port, logfile .. ".redis")
  local chat = 'env "LUA_PATH_5_4=lua/?.lua;;" build/luahost scripts/chat.lua 127.0.0.1:%d'
    .. " --redis 127.0.0.1:" .. redis_port
  local first = redis and start_server({ cmd = chat }, port, logfile)
  local second = first and start_server({ cmd = chat }, port2, logfile .. ".2")
  local pids = { second, redis }
  local function stop()
    for _, pid in ipairs(pids) do stop_server(pid) end
  end
  if not second then
    if first then stop_server(first) end
    stop()
    return nil
  end
  -- Both connected to Redis, and a moment for their subscriptions: a broadcast that one
  -- missed would stall the load generator.
  for _ = 1, 100 do
    if read_log(logfile):find("connected") and read_log(logfile .. ".2"):find("connected") then
      break
    end
    sh("sleep 0.05")
  end
  sh("sleep 0.5")
  return first, { stop = stop, pids = pids,
    args = string.format(" --port2 %d --also-pid %d --also-pid %d", port2, second, redis) }
end

-- Runs the load of scenario sc against server once; returns the loadgen's results.
local function measure(sc, server)
  local conns = sc.c
  if server.max_conns and conns > server.max_conns then
    return { skipped = string.format("cannot serve %d connections (select(2): FD_SETSIZE)",
                                     conns) }
  end
  local left = DEADLINE - (os.time() - started)
  if left < 15 then return { skipped = "not run: the bench is out of its 12 minutes" } end
  local no_tls = server.tls and common.tls_missing(server)
  if no_tls then return { skipped = no_tls } end
  local port = free_port()
  local logfile = string.format("%s/%s-%s.log", BIN, sc.id, server.key)
  local pid, extra = (server.start or start_server)(server, port, logfile)
  if not pid then return { skipped = "did not start: see " .. logfile } end
  local duration = sc.mode == "idle" and 1 or DURATION
  local cap = math.min(60, left)
  local cmd = string.format(
    "prlimit --nofile=%d:%d taskset -c %d %s/loadgen --mode %s --port %d -c %d -s %d -d %d "
      .. "--warmup %g --duration %g --cap %d --pid %d%s",
    FD_LIMIT, FD_LIMIT, LOAD_CPU, BIN, sc.mode, port, conns, sc.s, sc.d, WARMUP, duration,
    cap, pid, sc.tls and " --tls" or "") .. (extra and extra.args or "")
  local r = parse(capture("timeout -k 5 " .. (cap + 10) .. " " .. cmd .. " 2>&1"))
  if not alive(pid) then r.died = true end
  for _, other in ipairs(extra and extra.pids or {}) do
    if not alive(other) then r.died = true end
  end
  stop_server(pid)
  if extra then extra.stop() end
  if not r.mode then return { skipped = "the load generator failed" } end
  return r
end

-- Pools rounds: rates from the totals, latencies averaged, the worst maximum.
local function pool(rounds)
  local ok = {}
  for _, r in ipairs(rounds) do
    if not r.skipped then ok[#ok + 1] = r end
  end
  if #ok == 0 then return rounds[1] end
  local p = { rounds = #ok, errors = 0, msgs = 0, secs = 0, user = 0, sys = 0, mb = 0,
              p50 = 0, p99 = 0, max = 0, lg = 0, other = 0, steal = 0, saturated = false,
              srv_util = 0, first_error = "-" }
  for _, r in ipairs(ok) do
    p.msgs, p.secs = p.msgs + r.msgs, p.secs + r.secs
    p.user, p.sys = p.user + r.srv_user_s, p.sys + r.srv_sys_s
    p.mb = p.mb + r.mb_per_s * r.secs
    p.p50, p.p99 = p.p50 + r.p50_us / #ok, p.p99 + r.p99_us / #ok
    p.max = math.max(p.max, r.max_us)
    p.lg = math.max(p.lg, r.lg_cpu_util)
    p.other = math.max(p.other, r.other_cpu)
    p.steal = math.max(p.steal, r.steal_cpu or 0)
    p.srv_util = p.srv_util + r.srv_cpu_util / #ok
    p.saturated = p.saturated or r.lg_saturated == 1
    p.errors = p.errors + r.errors
    if r.first_error ~= "-" then p.first_error = r.first_error end
    if r.died then p.died = true end
    p.rss_before, p.rss_after, p.ramp = r.rss_before_kib, r.rss_after_kib, r.ramp_s
    p.established = r.established
    if r.tls ~= "-" then p.tls = r.tls end
  end
  if p.msgs == 0 and ok[1].mode ~= "idle" then
    p.skipped = "no message came back: " .. p.first_error:gsub("_", " ")
  end
  p.rate = p.secs > 0 and p.msgs / p.secs or 0
  p.mb = p.secs > 0 and p.mb / p.secs or 0
  p.user_us = p.msgs > 0 and p.user * 1e6 / p.msgs or nil
  p.cpu_us = p.msgs > 0 and (p.user + p.sys) * 1e6 / p.msgs or nil
  if p.rss_before and p.rss_after and p.established and p.established > 0 then
    p.kib_per_conn = (p.rss_after - p.rss_before) / p.established
  end
  return p
end

-- Runs the load once more while other processes took more than DISTURBED CPUs of the
-- machine (up to twice, within RETRY_BUDGET for the whole bench), and keeps the least
-- disturbed attempt.
local retry_seconds = 0
local function measure_quietly(sc, server)
  local best = measure(sc, server)
  for _ = 1, server.children and 0 or 2 do
    if best.skipped or (best.other_cpu or 0) <= DISTURBED then break end
    if retry_seconds > RETRY_BUDGET then break end
    log("%-10s %-18s other load %.1f CPU: running it again", sc.id, server.name,
        best.other_cpu)
    local t0 = os.time()
    local again = measure(sc, server)
    retry_seconds = retry_seconds + os.time() - t0
    if not again.skipped and again.other_cpu < best.other_cpu then best = again end
  end
  return best
end

-- Runs every selected scenario, each server in turn within a round; the order of servers
-- rotates from round to round, so no server always runs first or last.
local function run_all()
  local results = {}
  for _, sc in ipairs(SCENARIOS) do
    if selected(ONLY, sc.id) then
      local servers = {}
      for _, s in ipairs(sc.servers) do
        if selected(ONLY_SERVERS, s.key) then servers[#servers + 1] = s end
      end
      local rounds = {}
      for round = 1, sc.rounds or ROUNDS do
        for i = 1, #servers do
          local server = servers[(i + round - 2) % #servers + 1]
          local r = measure_quietly(sc, server)
          rounds[server.key] = rounds[server.key] or {}
          table.insert(rounds[server.key], r)
          log("%-10s %-18s round %d: %s", sc.id, server.name, round, r.skipped or
              string.format("%.0f msgs/s, %.2f user-µs/msg, %.2f CPU-µs/msg, other load %.1f"
                              .. " CPU, %d errors", r.msgs_per_s, r.user_us_per_msg,
                            r.cpu_us_per_msg, r.other_cpu, r.errors))
        end
      end
      results[sc.id] = { scenario = sc, servers = servers, by_key = {} }
      for _, s in ipairs(servers) do
        results[sc.id].by_key[s.key] = pool(rounds[s.key])
      end
    end
  end
  return results
end

-- Instructions per message ----------------------------------------------------------------
-- Every server under callgrind, measured the same way (tests/bench/ir.lua): echo and chat
-- at 100 connections. BENCH_ONLY selects them as ir-echo and ir-chat.

local IR_MODES = {
  { id = "ir-echo", key = "echo", mode = "echo", servers = ECHO_SERVERS },
  { id = "ir-chat", key = "chat", mode = "chat", servers = CHAT_SERVERS },
  tls.IR_MODES[1],
  tls.IR_MODES[2],
}

local function run_ir()
  local res = {}
  for _, m in ipairs(IR_MODES) do
    if selected(ONLY, m.id) then
      local servers, by_key = {}, {}
      for _, s in ipairs(m.servers) do
        if selected(ONLY_SERVERS, s.key) then
          local r = ir.measure(s, m.mode, m.conns or IR_CONNS, IR_SECONDS)
          if s.key ~= "luahost" then r.dump_data = nil end -- only luahost's top is shown
          log("%-10s %-18s %s", m.id, s.name, r.skipped or string.format(
            "%.0f instructions per message over %d messages", r.per_msg, r.msgs))
          servers[#servers + 1], by_key[s.key] = s, r
        end
      end
      res[m.key] = { servers = servers, by_key = by_key }
    end
  end
  return res
end

-- Reporting ------------------------------------------------------------------------------

-- 12345.6 -> "12,346"
local function thousands(v)
  local s = string.format("%.0f", v)
  repeat
    local n
    s, n = s:gsub("^(%d+)(%d%d%d)", "%1,%2")
  until n == 0
  return s
end

local function fmt(v, pattern)
  if v == nil then return "-" end
  return string.format(pattern or "%.0f", v)
end

local function ratio(v, ref)
  if not v or not ref or ref == 0 then return "-" end
  return string.format("%.2fx", v / ref)
end

local function flags(p)
  local f = {}
  if p.saturated then f[#f + 1] = "load-bound" end
  if p.other and p.other > DISTURBED then
    f[#f + 1] = string.format("other load %.1f CPU", p.other)
  end
  if p.steal and p.steal > 0.1 then
    f[#f + 1] = string.format("hypervisor steal %.1f CPU", p.steal)
  end
  if p.errors and p.errors > 0 then
    f[#f + 1] = string.format("%d errors (%s)", p.errors, p.first_error:gsub("_", " "))
  end
  if p.died then f[#f + 1] = "server died" end
  return table.concat(f, "; ")
end

-- A markdown table: header, then rows; also printed to the terminal as is.
local function md_table(header, rows)
  local out = { "| " .. table.concat(header, " | ") .. " |" }
  local sep = {}
  for i = 1, #header do sep[i] = i == 1 and "---" or "---:" end
  out[#out + 1] = "|" .. table.concat(sep, "|") .. "|"
  for _, row in ipairs(rows) do out[#out + 1] = "| " .. table.concat(row, " | ") .. " |" end
  return table.concat(out, "\n")
end

local function load_table(res)
  local ref_key = res.scenario.ref or "c"
  local ref = res.by_key[ref_key] or {} -- BENCH_SERVERS may leave the C server out
  local vs = ref_key == "c" and "C" or "first"
  local unit = res.scenario.mode == "chat" and "deliveries/s" or "msgs/s"
  local per = res.scenario.mode == "chat" and "delivery" or "msg"
  local rows = {}
  for _, s in ipairs(res.servers) do
    local p = res.by_key[s.key]
    if p.skipped then
      rows[#rows + 1] = { s.name, "n/a", "", "", "", "", "", "", "", "", "", p.skipped }
    else
      rows[#rows + 1] = {
        s.name, fmt(p.rate), ratio(p.rate, ref.rate), fmt(p.mb, "%.1f"), fmt(p.p50), fmt(p.p99),
        fmt(p.max), fmt(p.user_us, "%.2f"), fmt(p.cpu_us, "%.2f"), ratio(p.cpu_us, ref.cpu_us),
        string.format("%.0f%% / %.0f%%", p.srv_util * 100, p.lg * 100), flags(p),
      }
    end
  end
  return md_table({ "server", unit, "vs " .. vs, "MB/s", "p50 µs", "p99 µs", "max µs",
                    "user µs/" .. per, "CPU µs/" .. per, "CPU vs " .. vs, "CPU server / load",
                    "notes" }, rows)
end

local function ir_table(res, mode)
  local per = mode == "chat" and "delivery" or mode == "handshake" and "handshake" or "msg"
  local ref = res.by_key.c
  ref = ref and not ref.skipped and ref or nil
  local rows = {}
  for _, s in ipairs(res.servers) do
    local r = res.by_key[s.key]
    if r.skipped then
      rows[#rows + 1] = { s.name, "n/a", "", "", "", "", r.skipped }
    else
      rows[#rows + 1] = {
        s.name, thousands(r.per_msg), ratio(r.per_msg, ref and ref.per_msg),
        fmt(r.heap, "%.2f"), fmt(r.lua_alloc, "%.2f"), thousands(r.msgs),
        string.format("%.1f M", r.instructions / 1e6),
      }
    end
  end
  return md_table({ "server", "instr./" .. per, "vs C", "C heap calls/" .. per,
                    "Lua allocator calls/" .. per, mode == "chat" and "deliveries"
                      or mode == "handshake" and "handshakes" or "messages",
                    "instructions" }, rows)
end

-- Where luahost's instructions went: the functions with the most inclusive instructions
-- per message (tests/bench/ir.lua leaves out those that hold the whole window).
local function top_table(r, mode)
  local per = mode == "chat" and "delivery" or "msg"
  local rows = {}
  for _, f in ipairs(ir.top(r.dump_data, 10)) do
    rows[#rows + 1] = { "`" .. f.name .. "`", thousands(f.incl / r.msgs),
                        string.format("%.1f%%", 100 * f.incl / r.instructions),
                        thousands(f.self / r.msgs) }
  end
  return md_table({ "function", "inclusive instr./" .. per, "share", "self instr./" .. per },
                  rows)
end

-- p50/p99 round trip of luahost and of the C server, from the echo tables.
local function latency_table(results)
  local rows = {}
  for _, id in ipairs({ "echo-100", "echo-1000" }) do
    local res = results[id]
    local lh, c = res and res.by_key.luahost, res and res.by_key.c
    if lh and c and not lh.skipped and not c.skipped then
      rows[#rows + 1] = { tostring(res.scenario.c), fmt(lh.p50), fmt(c.p50), ratio(lh.p50, c.p50),
                          fmt(lh.p99), fmt(c.p99), ratio(lh.p99, c.p99) }
    end
  end
  if #rows == 0 then return nil end
  return md_table({ "connections", "luahost p50 µs", "C p50 µs", "p50 vs C", "luahost p99 µs",
                    "C p99 µs", "p99 vs C" }, rows)
end

-- The workers scenario: rates and latencies against the one process (first row).
local function workers_table(res)
  local ref = res.by_key[res.servers[1].key] or {}
  local rows = {}
  for _, s in ipairs(res.servers) do
    local p = res.by_key[s.key]
    if p.skipped then
      rows[#rows + 1] = { s.name, "n/a", "", "", "", p.skipped }
    else
      if s.children then p.other = nil end -- the workers' own CPU, not other load
      rows[#rows + 1] = { s.name, fmt(p.rate), ratio(p.rate, ref.rate), fmt(p.p50), fmt(p.p99),
                          flags(p) }
    end
  end
  return md_table({ "server", "msgs/s", "vs one process", "p50 µs", "p99 µs", "notes" }, rows)
end

local function idle_table(res)
  local rows = {}
  for _, s in ipairs(res.servers) do
    local p = res.by_key[s.key]
    if p.skipped then
      rows[#rows + 1] = { s.name, "n/a", "", "", "", "", p.skipped }
    else
      rows[#rows + 1] = {
        s.name, fmt(p.established), fmt(p.rss_before), fmt(p.rss_after),
        fmt(p.kib_per_conn, "%.2f"), fmt(p.ramp, "%.1f"), flags(p),
      }
    end
  end
  return md_table({ "server", "connections held", "VmRSS before KiB", "VmRSS after KiB",
                    "KiB per connection", "open time s", "notes" }, rows)
end

-- Targets --------------------------------------------------------------------------------

local PEERS = { "python", "luv", "cqueues", "copas" }

local function verdict(ok)
  return ok and "holds" or "**misses**"
end

-- msgs/s ahead of a peer. Where the load generator saturated its core, or other load
-- took more than DISTURBED CPUs, in either run, the rates say little, so total CPU per
-- message decides instead.
local function ahead(lh, peer, unit)
  if peer.skipped then return true, "peer n/a" end
  local why = (lh.saturated or peer.saturated) and "load-bound"
    or (lh.other > DISTURBED or peer.other > DISTURBED) and "other load"
  if why then
    return lh.cpu_us < peer.cpu_us,
      string.format("%s, so by CPU: %.2f vs %.2f µs (%.0f vs %.0f %s)", why, lh.cpu_us,
                    peer.cpu_us, lh.rate, peer.rate, unit)
  end
  return lh.rate > peer.rate, string.format("%.0f vs %.0f %s (%.2fx)", lh.rate, peer.rate, unit,
                                            lh.rate / peer.rate)
end

-- A measured value against an upper limit: met or missed, and by how much.
local function against(value, limit)
  local by = (value / limit - 1) * 100
  if value <= limit then return string.format("met, %.0f%% under", -by) end
  return string.format("**missed** by %.0f%%", by)
end

-- What tests/bench/tls.lua builds its tables and verdicts with.
local helpers = { md_table = md_table, fmt = fmt, ratio = ratio, flags = flags,
                  against = against, DISTURBED = DISTURBED }

-- The targets of the "Performance II" issue (upper limits), then the earlier ones.
-- Returns the table and the callgrind modes ("echo", "chat") with a target missed: echo's
-- instructions, or the CPU or p99 of echo on the clock; chat's instructions.
local function targets(results, irres)
  local rows, missed = {}, {}
  local function miss(mode)
    for _, m in ipairs(missed) do
      if m == mode then return end
    end
    missed[#missed + 1] = mode
  end
  local function add(what, target, measured, v)
    rows[#rows + 1] = { what, target, measured, v or "-" }
  end
  local per_target = { echo = { 1500, "instr./msg" }, chat = { 400, "instr./delivery" } }
  for _, mode in ipairs({ "echo", "chat" }) do
    local res = irres[mode]
    local lh, c = res and res.by_key.luahost, res and res.by_key.c
    if lh and not lh.skipped then
      local limit, unit = per_target[mode][1], per_target[mode][2]
      add(mode .. ", callgrind, " .. IR_CONNS .. " conns",
          string.format("≤ %s %s", thousands(limit), unit),
          thousands(lh.per_msg) .. (c and not c.skipped
            and string.format(" (C %s)", thousands(c.per_msg)) or ""),
          against(lh.per_msg, limit))
      if lh.per_msg > limit then miss(mode) end
    end
  end
  -- luahost.task's issue: its echo within 1.3x the callback echo's instructions.
  local echo = irres.echo
  local cb, task = echo and echo.by_key.luahost, echo and echo.by_key.luahost_task
  if cb and task and not cb.skipped and not task.skipped then
    local r = task.per_msg / cb.per_msg
    add("echo_task.lua, callgrind, " .. IR_CONNS .. " conns", "≤ 1.3x echo.lua's instr./msg",
        string.format("%s vs %s (%.2fx)", thousands(task.per_msg), thousands(cb.per_msg), r),
        against(r, 1.3))
  end
  for _, id in ipairs({ "echo-100", "echo-1000" }) do
    local res = results[id]
    local lh, c = res and res.by_key.luahost, res and res.by_key.c
    if lh and c and not lh.skipped and not c.skipped then
      local r = lh.cpu_us / c.cpu_us
      add(id, "total CPU/msg ≤ 1.1x C", string.format("%.2f vs %.2f µs (%.2fx)", lh.cpu_us,
                                                       c.cpu_us, r), against(r, 1.1))
      if r > 1.1 then miss("echo") end
      if id == "echo-100" then
        r = lh.p99 / c.p99
        add(id, "p99 ≤ 1.5x C's", string.format("%.0f vs %.0f µs (%.2fx)", lh.p99, c.p99, r),
            against(r, 1.5))
        if r > 1.5 then miss("echo") end
      end
    end
  end
  local idle = results.idle
  if idle and idle.by_key.luahost and idle.by_key.luahost.kib_per_conn then
    local k = idle.by_key.luahost.kib_per_conn
    add("idle", string.format("≤ 0.25 KiB RSS/conn at %s", thousands(idle.scenario.c)),
        fmt(k, "%.3f"), against(k, 0.25))
  end
  -- Earlier targets: user time (which this VM's hours move by 2x) and the lead on peers.
  for _, id in ipairs({ "echo-100", "echo-1000" }) do
    local res = results[id]
    local lh = res and res.by_key.luahost
    if lh and not lh.skipped then
      add(id, "≤ 0.5 user-µs/msg (earlier)", fmt(lh.user_us, "%.2f"), verdict(lh.user_us <= 0.5))
      for _, key in ipairs(PEERS) do
        local peer = res.by_key[key]
        if peer then
          local ok, text = ahead(lh, peer, "msgs/s")
          add(id, "ahead of " .. key .. " (earlier)", text, verdict(ok))
        end
      end
    end
  end
  local chat = results.chat
  if chat and chat.by_key.luahost and not chat.by_key.luahost.skipped then
    local lh, luv = chat.by_key.luahost, chat.by_key.luv
    add("chat", "≤ 0.3 user-µs/delivery (earlier)", fmt(lh.user_us, "%.2f"),
        verdict(lh.user_us <= 0.3))
    if luv and not luv.skipped then
      local ok, text = ahead(lh, luv, "deliveries/s")
      add("chat", "ahead of luv (earlier)", text, verdict(ok))
    end
  end
  tls.targets(results, helpers, add)
  return md_table({ "scenario", "target", "luahost measured", "verdict" }, rows), missed
end

-- The plot: msgs/s, p99 latency and user CPU per message against connections, one line
-- per echo server.
local function plot(results)
  local ids = {}
  for _, sc in ipairs(SCENARIOS) do
    if sc.plot and results[sc.id] then ids[#ids + 1] = sc.id end
  end
  if #ids < 2 then return false end
  local columns = {}
  for _, s in ipairs(ECHO_SERVERS) do
    if results[ids[1]].by_key[s.key] then columns[#columns + 1] = s end
  end
  local dat = BIN .. "/plot.dat"
  local f = assert(io.open(dat, "w"))
  f:write("# connections, then per server: msgs/s, p99 ms, user µs/msg\n")
  for _, id in ipairs(ids) do
    local res = results[id]
    f:write(res.scenario.c)
    for _, s in ipairs(columns) do
      local p = res.by_key[s.key]
      if p and not p.skipped and p.rate > 0 then
        f:write(string.format(" %.1f %.3f %.3f", p.rate, p.p99 / 1000, p.user_us))
      else
        f:write(" NaN NaN NaN")
      end
    end
    f:write("\n")
  end
  f:close()
  local gp = { "set terminal pngcairo size 1500,480 font ',10'",
               string.format("set output '%s/benchmarks.png'", OUT_DIR),
               "set multiplot layout 1,3", "set logscale x", "set xrange [7:7000]", "set grid",
               "set xtics (10, 100, 1000, 5000)", "set yrange [0:*]",
               "set xlabel 'connections (echo, 64 B, 1 in flight)'" }
  local function panel(title, ylabel, offset, key)
    gp[#gp + 1] = string.format("set title '%s'; set ylabel '%s'; set key %s", title, ylabel,
                                key) -- one legend: the lines keep their colours across panels
    local parts = {}
    for i, s in ipairs(columns) do
      parts[#parts + 1] = string.format("'%s' using 1:%d with linespoints lw 2 title '%s'",
                                        dat, 3 * i - 1 + offset, s.name)
    end
    gp[#gp + 1] = "plot " .. table.concat(parts, ", ")
  end
  panel("throughput", "msgs/s", 0, "left bottom")
  gp[#gp + 1] = "set logscale y; set yrange [*:*]"
  panel("p99 round trip", "ms", 1, "off")
  gp[#gp + 1] = "unset logscale y; set yrange [0:*]"
  panel("server user CPU per message", "µs", 2, "off")
  gp[#gp + 1] = "unset multiplot"
  local script = BIN .. "/plot.gp"
  f = assert(io.open(script, "w"))
  f:write(table.concat(gp, "\n"), "\n")
  f:close()
  return sh("gnuplot " .. script)
end

local function machine()
  local cpu = capture("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"):gsub("^%s+", "")
  return string.format("%s CPUs (%s), Linux %s, %s; %s", capture("nproc"), cpu,
                       capture("uname -r"), capture(". /etc/os-release && echo $PRETTY_NAME"),
                       capture("date -u +%Y-%m-%d"))
end

-- The versions of what was measured, from Debian's package database.
local function versions()
  local out = capture("dpkg-query -W -f='${Package} ${Version}, ' liblua5.4-0 python3 lua-luv "
                      .. "lua-cqueues lua-copas lua-socket 2>/dev/null")
  return (out:gsub(",%s*$", ""))
end

local function read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- One paragraph with the ratios worth quoting (the README quotes it).
local function headline(results, irres)
  local out = {}
  local ir_echo, ir_chat = irres.echo, irres.chat
  local lh_echo, lh_chat = ir_echo and ir_echo.by_key.luahost, ir_chat and ir_chat.by_key.luahost
  if lh_echo and not lh_echo.skipped then
    local others = {}
    for _, s in ipairs(ir_echo.servers) do
      local r = ir_echo.by_key[s.key]
      if s.key ~= "luahost" and not r.skipped then
        others[#others + 1] = string.format("%s %s", s.key == "c" and "C" or s.key,
                                            thousands(r.per_msg))
      end
    end
    local text = string.format("- Instructions per message under callgrind (%d connections):"
                                 .. " echo %s (%s)", IR_CONNS, thousands(lh_echo.per_msg),
                               table.concat(others, ", "))
    if lh_chat and not lh_chat.skipped then
      local c, luv = ir_chat.by_key.c, ir_chat.by_key.luv
      text = text .. string.format("; chat %s per delivery (C %s, luv %s)",
                                   thousands(lh_chat.per_msg),
                                   c and c.per_msg and thousands(c.per_msg) or "-",
                                   luv and luv.per_msg and thousands(luv.per_msg) or "-")
    end
    out[#out + 1] = text .. "."
  end
  local function ratio_to(p, ref) return p and ref and ref.rate > 0 and p.rate / ref.rate end
  for _, id in ipairs({ "echo-100", "echo-1000" }) do
    local res = results[id]
    local lh, c = res and res.by_key.luahost, res and res.by_key.c
    if lh and c and not lh.skipped and not c.skipped then
      local peers = {}
      for _, key in ipairs(PEERS) do
        local p = res.by_key[key]
        if p and not p.skipped then
          peers[#peers + 1] = string.format("%.2fx %s", lh.rate / p.rate, key)
        end
      end
      out[#out + 1] = string.format(
        "- Echo with %d connections: luahost %.0f msgs/s, %.2fx the C limit and %s; CPU per"
          .. " message %.2fx the C limit's; user CPU %.2f µs/msg (C %.2f).",
        res.scenario.c, lh.rate, ratio_to(lh, c), table.concat(peers, ", "),
        lh.cpu_us / c.cpu_us, lh.user_us, c.user_us)
    end
  end
  local chat = results.chat
  if chat and chat.by_key.luahost and not chat.by_key.luahost.skipped and chat.by_key.luv then
    local lh, c, luv = chat.by_key.luahost, chat.by_key.c, chat.by_key.luv
    out[#out + 1] = string.format(
      "- Chat fan-out to 99 clients: %.0f deliveries/s, %.2fx the C limit and %.2fx luv; user"
        .. " CPU %.2f µs per delivery (C %.2f, luv %.2f).", lh.rate, ratio_to(lh, c),
      ratio_to(lh, luv), lh.user_us, c.user_us, luv.user_us or 0)
  end
  out[#out + 1] = tls.headline(results, irres, thousands)
  local idle = results.idle
  if idle and idle.by_key.luahost and idle.by_key.luahost.kib_per_conn then
    local py = idle.by_key.python
    out[#out + 1] = string.format("- Idle: %.2f KiB of RSS per connection (Python selectors"
                                    .. " %s).", idle.by_key.luahost.kib_per_conn,
                                  fmt(py and py.kib_per_conn, "%.2f"))
  end
  return table.concat(out, "\n")
end

local function report(results, irres, plotted, elapsed)
  local parts = {
    "# Benchmarks",
    "",
    "Generated by `make bench` (tests/bench/run.lua"
      .. (ONLY and ", BENCH_ONLY=" .. ONLY or "")
      .. (ONLY_SERVERS and ", BENCH_SERVERS=" .. ONLY_SERVERS or "")
      .. "): do not edit by hand. The method comes"
      .. " from tests/bench/method.md and the findings at the end from tests/bench/findings.md.",
    "",
    string.format("Machine: %s. The run took %.0f s: under callgrind, %s; on the clock, %s.",
                  machine(), elapsed, next(irres) and string.format(
                    "%g s measured after %g s of warm-up per server", IR_SECONDS, ir.WARMUP)
                    or "nothing", next(results) and string.format(
                    "%d round(s) of %g s measured after %g s of warm-up, per server and"
                      .. " scenario", ROUNDS, DURATION, WARMUP) or "nothing"),
    "",
    "luahost " .. BUILD .. "; packages: "
      .. versions() .. ".",
    "",
  }
  local function section(title, body)
    parts[#parts + 1] = "## " .. title .. "\n\n" .. body .. "\n"
    io.write("\n", title, "\n\n", body, "\n")
  end
  local titles = {
    echo = "Instructions per echoed message (callgrind, 100 connections, 64 B, 1 in flight)",
    chat = "Instructions per chat delivery (callgrind, 100 clients)",
    tls = tls.IR_TITLES.tls,
    tls_handshake = tls.IR_TITLES.tls_handshake,
  }
  for _, m in ipairs(IR_MODES) do
    if irres[m.key] then section(titles[m.key], ir_table(irres[m.key], m.mode)) end
  end
  section("Headline", headline(results, irres))
  local tt, missed = targets(results, irres)
  section("Targets", tt)
  local lat = latency_table(results)
  if lat then section("Latency per message, luahost and the C server", lat) end
  for _, mode in ipairs(missed) do
    local r = irres[mode] and irres[mode].by_key.luahost
    if r and r.dump_data then
      section(string.format("Where luahost's %s instructions go (callgrind, inclusive top 10)",
                            mode), top_table(r, mode))
    end
  end
  if plotted then
    parts[#parts + 1] = "![echo throughput, p99 latency and server user CPU per message"
      .. " against connections](benchmarks.png)\n"
  end
  for _, sc in ipairs(SCENARIOS) do
    local res = results[sc.id]
    if res then
      section(sc.title, sc.mode == "idle" and idle_table(res)
        or sc.mode == "handshake" and tls.handshake_table(res, helpers)
        or sc.id == "workers" and workers_table(res)
        or load_table(res) .. (sc.tls and tls.note(res) or ""))
    end
  end
  parts[#parts + 1] = read_file("tests/bench/method.md") or ""
  parts[#parts + 1] = read_file("tests/bench/findings.md") or ""
  local f = assert(io.open(OUT_DIR .. "/benchmarks.md", "w"))
  f:write(table.concat(parts, "\n"))
  f:close()
end

-- Main -----------------------------------------------------------------------------------

setup()
-- Before the run writes its own output (which would make the tree look dirty).
BUILD = capture("git describe --always --dirty 2>/dev/null")
FD_LIMIT = fd_limit()
if FD_LIMIT < IDLE_CONNS + 64 then
  IDLE_CONNS = FD_LIMIT - 64
  log("bench: the fd limit is %d: the idle scenario holds %d connections", FD_LIMIT, IDLE_CONNS)
  for _, sc in ipairs(SCENARIOS) do
    if sc.mode == "idle" then sc.c = IDLE_CONNS end
  end
end
local irres = run_ir()
local results = run_all()
report(results, irres, plot(results), os.time() - started)
common.cleanup()
log("bench: wrote %s/benchmarks.md and %s/benchmarks.png in %d s", OUT_DIR, OUT_DIR,
    os.time() - started)
