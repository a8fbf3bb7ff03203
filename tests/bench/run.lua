-- run.lua: `make bench`: luahost against the C limit and every peer, side by side in one
-- run. Installs the peers (vendor/bench-packages.txt), builds the load generator and the
-- C reference servers into build/bench/, runs every scenario on every server, interleaved
-- (server on CPU 0, load on CPU 1), prints the tables and writes docs/benchmarks.md and
-- docs/benchmarks.png. Everything talks to 127.0.0.1 only; every load is bounded.
--
-- Run from the project root:  lua5.4 tests/bench/run.lua     (make bench does that)
-- Environment: BENCH_ROUNDS (2), BENCH_DURATION (3 s), BENCH_WARMUP (1 s),
--   BENCH_ONLY=echo-100,chat (some scenarios), BENCH_SERVERS=luahost,c (some servers).
--   With BENCH_ONLY or BENCH_SERVERS the report goes to build/bench/, not docs/.

local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 2
local DURATION = tonumber(os.getenv("BENCH_DURATION")) or 3
local WARMUP = tonumber(os.getenv("BENCH_WARMUP")) or 1
local ONLY, ONLY_SERVERS = os.getenv("BENCH_ONLY"), os.getenv("BENCH_SERVERS")
local OUT_DIR = (ONLY or ONLY_SERVERS) and "build/bench" or "docs"
local BIN = "build/bench"
local SERVER_CPU, LOAD_CPU = 0, 1
local IDLE_CONNS = 10000
local DISTURBED = 0.4 -- CPUs of other load during a run above which it is run again
local RETRY_BUDGET = 90 -- seconds the whole bench may spend running disturbed runs again
local DEADLINE = 540 -- seconds after which no further run starts: the bench stays under 10 min
local PORT_BASE = 21100 -- below the ephemeral range, so no client port collides

-- Helpers ---------------------------------------------------------------------------------

local function log(fmt, ...)
  io.stderr:write(string.format(fmt, ...), "\n")
end

local function die(fmt, ...)
  log("bench: " .. fmt, ...)
  os.exit(1)
end

local function sh(cmd)
  return os.execute(cmd) == true
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  return (out:gsub("%s+$", ""))
end

local function selected(list, name)
  if not list then return true end
  for item in list:gmatch("[^,]+") do
    if item == name then return true end
  end
  return false
end

-- Servers --------------------------------------------------------------------------------
-- key: short name; cmd: the command, %d is the port; max_conns: most it can serve.

local ECHO_SERVERS = {
  { key = "c", name = "C epoll (limit)", cmd = BIN .. "/c_echo %d" },
  { key = "luahost", name = "luahost echo.lua",
    cmd = "build/luahost scripts/echo.lua 127.0.0.1:%d" },
  -- The same echo with luahost.task (a coroutine per client), found through LUA_PATH.
  { key = "luahost_task", name = "luahost echo_task.lua",
    cmd = 'env "LUA_PATH_5_4=lua/?.lua;;" build/luahost examples/echo_task.lua 127.0.0.1:%d' },
  -- Debian's interpreter, which vendor/bench-packages.txt installs, whatever PATH finds.
  { key = "python", name = "Python selectors",
    cmd = "/usr/bin/python3 tests/bench/py_echo.py %d" },
  { key = "luv", name = "luv", cmd = "lua5.4 tests/bench/luv_echo.lua %d" },
  { key = "cqueues", name = "cqueues", cmd = "lua5.4 tests/bench/cqueues_echo.lua %d" },
  -- LuaSocket's select(2) cannot watch an fd past FD_SETSIZE (1024).
  { key = "copas", name = "copas", cmd = "lua5.4 tests/bench/copas_echo.lua %d",
    max_conns = 1000 },
}
local CHAT_SERVERS = {
  { key = "c", name = "C epoll (limit)", cmd = BIN .. "/c_chat %d" },
  { key = "luahost", name = "luahost chat.lua",
    cmd = "build/luahost --log-level warn scripts/chat.lua 127.0.0.1:%d" },
  { key = "luv", name = "luv", cmd = "lua5.4 tests/bench/luv_chat.lua %d" },
}

-- Scenarios ------------------------------------------------------------------------------

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
}

-- Setup ----------------------------------------------------------------------------------

local function setup()
  if not sh("vendor/install vendor/bench-packages.txt") then
    die("the bench's packages are missing (vendor/bench-packages.txt)")
  end
  sh("mkdir -p " .. BIN)
  for _, prog in ipairs({ "loadgen", "c_echo", "c_chat" }) do
    local cmd = string.format("cc -O2 -Wall -Wextra -std=c11 -o %s/%s tests/bench/%s.c",
                              BIN, prog, prog)
    if not sh(cmd) then die("cannot build %s", prog) end
  end
  if not sh("test -x build/luahost") then die("build/luahost is missing: run make build") end
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
local next_port = PORT_BASE

local function port_is_free(port)
  return not sh(string.format("%s/loadgen --mode probe --port %d --cap 0 2>/dev/null", BIN, port))
end

local function free_port()
  repeat next_port = next_port + 1 until port_is_free(next_port)
  return next_port
end

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("a")
  f:close()
  return not stat:match("%) Z ") -- a zombie is gone for our purposes
end

local function start_server(server, port, logfile)
  local cmd = string.format(server.cmd, port)
  local pid = capture(string.format(
    "sh -c 'exec prlimit --nofile=%d:%d taskset -c %d %s >%s 2>&1 </dev/null' & echo $!",
    FD_LIMIT, FD_LIMIT, SERVER_CPU, cmd, logfile))
  if not sh(string.format("%s/loadgen --mode probe --port %d --cap 10", BIN, port)) then
    return nil
  end
  return tonumber(pid)
end

local function stop_server(pid)
  sh("kill -TERM " .. pid .. " 2>/dev/null")
  for _ = 1, 40 do
    if not alive(pid) then return end
    sh("sleep 0.05")
  end
  sh("kill -KILL " .. pid .. " 2>/dev/null")
end

local function parse(line)
  local r = {}
  for k, v in line:gmatch("(%S+)=(%S+)") do
    r[k] = tonumber(v) or v
  end
  return r
end

-- Runs the load of scenario sc against server once; returns the loadgen's results.
local function measure(sc, server)
  local conns = sc.c
  if server.max_conns and conns > server.max_conns then
    return { skipped = string.format("cannot serve %d connections (select(2): FD_SETSIZE)",
                                     conns) }
  end
  local left = DEADLINE - (os.time() - started)
  if left < 15 then return { skipped = "not run: the bench is out of its 10 minutes" } end
  local port = free_port()
  local logfile = string.format("%s/%s-%s.log", BIN, sc.id, server.key)
  local pid = start_server(server, port, logfile)
  if not pid then return { skipped = "did not start: see " .. logfile } end
  local duration = sc.mode == "idle" and 1 or DURATION
  local cap = math.min(60, left)
  local cmd = string.format(
    "prlimit --nofile=%d:%d taskset -c %d %s/loadgen --mode %s --port %d -c %d -s %d -d %d "
      .. "--warmup %g --duration %g --cap %d --pid %d",
    FD_LIMIT, FD_LIMIT, LOAD_CPU, BIN, sc.mode, port, conns, sc.s, sc.d, WARMUP, duration,
    cap, pid)
  local r = parse(capture("timeout -k 5 " .. (cap + 10) .. " " .. cmd .. " 2>&1"))
  if not alive(pid) then r.died = true end
  stop_server(pid)
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
  for _ = 1, 2 do
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

-- Reporting ------------------------------------------------------------------------------

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
  local ref = res.by_key.c
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
  return md_table({ "server", unit, "vs C", "MB/s", "p50 µs", "p99 µs", "max µs",
                    "user µs/" .. per, "CPU µs/" .. per, "CPU vs C", "CPU server / load",
                    "notes" }, rows)
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

local function targets(results)
  local rows = {}
  local function add(what, target, measured, ok)
    rows[#rows + 1] = { what, target, measured, ok == nil and "-" or verdict(ok) }
  end
  for _, id in ipairs({ "echo-100", "echo-1000" }) do
    local res = results[id]
    local lh, c = res and res.by_key.luahost, res and res.by_key.c
    if lh and c and not lh.skipped and not c.skipped then
      add(id, "≤ 0.5 user-µs/msg", fmt(lh.user_us, "%.2f"), lh.user_us <= 0.5)
      add(id, "CPU/msg ≤ 1.1x C", string.format("%.2f vs %.2f µs (%.2fx)", lh.cpu_us, c.cpu_us,
                                                 lh.cpu_us / c.cpu_us),
          lh.cpu_us <= 1.1 * c.cpu_us)
      for _, key in ipairs(PEERS) do
        local peer = res.by_key[key]
        if peer then
          local ok, text = ahead(lh, peer, "msgs/s")
          add(id, "ahead of " .. key, text, ok)
        end
      end
    end
  end
  local chat = results.chat
  if chat and chat.by_key.luahost and not chat.by_key.luahost.skipped then
    local lh, luv = chat.by_key.luahost, chat.by_key.luv
    add("chat", "≤ 0.3 user-µs/delivery", fmt(lh.user_us, "%.2f"), lh.user_us <= 0.3)
    if luv and not luv.skipped then
      local ok, text = ahead(lh, luv, "deliveries/s")
      add("chat", "ahead of luv", text, ok)
    end
  end
  local idle = results.idle
  if idle and idle.by_key.luahost and idle.by_key.luahost.kib_per_conn then
    local k = idle.by_key.luahost.kib_per_conn
    add("idle", "≤ 0.25 KiB RSS/connection", fmt(k, "%.2f"), k <= 0.25)
  end
  return md_table({ "scenario", "target", "luahost measured", "verdict" }, rows)
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
local function headline(results)
  local out = {}
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
  local idle = results.idle
  if idle and idle.by_key.luahost and idle.by_key.luahost.kib_per_conn then
    local py = idle.by_key.python
    out[#out + 1] = string.format("- Idle: %.2f KiB of RSS per connection (Python selectors"
                                    .. " %.2f).", idle.by_key.luahost.kib_per_conn,
                                  py and py.kib_per_conn or 0)
  end
  return table.concat(out, "\n")
end

local function report(results, elapsed)
  local parts = {
    "# Benchmarks",
    "",
    "Generated by `make bench` (tests/bench/run.lua): do not edit by hand. The method comes"
      .. " from tests/bench/method.md and the findings at the end from tests/bench/findings.md.",
    "",
    string.format("Machine: %s. The run took %.0f s: %d round(s) of %g s measured after %g s"
                    .. " of warm-up, per server and scenario.", machine(), elapsed, ROUNDS,
                  DURATION, WARMUP),
    "",
    "luahost " .. BUILD .. "; packages: "
      .. versions() .. ".",
    "",
  }
  local function section(title, body)
    parts[#parts + 1] = "## " .. title .. "\n\n" .. body .. "\n"
    io.write("\n", title, "\n\n", body, "\n")
  end
  section("Headline", headline(results))
  section("Targets", targets(results))
  parts[#parts + 1] = "![echo throughput, p99 latency and server user CPU per message against"
    .. " connections](benchmarks.png)\n"
  for _, sc in ipairs(SCENARIOS) do
    local res = results[sc.id]
    if res then
      section(sc.title, sc.mode == "idle" and idle_table(res) or load_table(res))
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
local results = run_all()
plot(results)
report(results, os.time() - started)
log("bench: wrote %s/benchmarks.md and %s/benchmarks.png in %d s", OUT_DIR, OUT_DIR,
    os.time() - started)
