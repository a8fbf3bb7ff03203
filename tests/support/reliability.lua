-- reliability.lua: what the reliability specs share: a host started under a lowered fd
-- limit, a wrapper script that logs luahost.stats(), and readings of another process
-- from /proc (CPU time, fds, RSS, CLOSE_WAIT sockets) and of its log.
local luahost = require "luahost"
local process = require "support.process"

local M = {}

M.BACKENDS = {"epoll", "poll", "select"}

-- Runs a script under the host, with its own arguments, and every 0.1 s logs
--   stats lua_bytes=N connections=N refused=N registered=N
-- after a full collection, so that a spec can watch the host's Lua memory and counts.
-- Usage: luahost [options] STATS_WRAPPER SCRIPT [ARGS...]
M.STATS_WRAPPER = [[
local script = assert(arg[1], "usage: wrapper SCRIPT [ARGS...]")
local args = {[0] = script}
for i = 2, #arg do args[i - 1] = arg[i] end
arg = args
dofile(script)
luahost.every(0.1, function()
  collectgarbage()
  collectgarbage()
  local s = luahost.stats()
  luahost.log("info", string.format("stats lua_bytes=%d connections=%d refused=%d registered=%d",
    s.lua_bytes, s.connections, s.refused, s.registered))
end)
]]

-- For after_each: stops every process the test started, and fails the test if one
-- outlived it.
function M.stop_processes()
  process.stop_all()
  local left = process.live_count()
  assert(left == 0, left .. " process(es) outlived the test")
end

-- The wrapper as a temporary file (process.stop_all removes it, so it is made anew when
-- it is gone).
local wrapper_path
function M.stats_wrapper()
  local f = wrapper_path and io.open(wrapper_path)
  if f then
    f:close()
  else
    wrapper_path = process.temp_file(M.STATS_WRAPPER, ".lua")
  end
  return wrapper_path
end

local prlimit_found
-- Whether prlimit(1) (util-linux) is installed.
function M.have_prlimit()
  if prlimit_found == nil then
    prlimit_found = os.execute("command -v prlimit >/dev/null 2>&1") == true
  end
  return prlimit_found
end

-- Starts `[prlimit --nofile=SOFT:HARD] luahost [--selector B] [options] script [args]` and
-- waits for its listening line, as process.start does. opts: selector, options, args
-- (default {"127.0.0.1:0"}), nofile ({soft, hard}), stats (run the script under the
-- stats wrapper), timeout.
function M.start(script, opts)
  opts = opts or {}
  local argv = {}
  if opts.nofile and not M.have_prlimit() then
    error("prlimit (util-linux) is needed to lower the host's fd limit", 2)
  end
  if opts.nofile then
    argv[#argv + 1] = "prlimit"
    argv[#argv + 1] = string.format("--nofile=%d:%d", opts.nofile[1], opts.nofile[2])
  end
  argv[#argv + 1] = process.bin
  if opts.selector then
    argv[#argv + 1] = "--selector"
    argv[#argv + 1] = opts.selector
  end
  for _, o in ipairs(opts.options or {}) do argv[#argv + 1] = o end
  if opts.stats then argv[#argv + 1] = M.stats_wrapper() end
  argv[#argv + 1] = script
  for _, a in ipairs(opts.args or {"127.0.0.1:0"}) do argv[#argv + 1] = a end
  local p = process.spawn(argv)
  local host, port = p:wait_for_log("listening on (.-):(%d+)%s*$", opts.timeout)
  if not host then
    p:stop("KILL")
    error(port, 2)
  end
  p.host, p.port = host, tonumber(port)
  return p
end

-- Waits for a stats line logged after the call and returns it as a table of numbers.
function M.stats(p, timeout)
  local _, before = p:stderr():gsub("stats lua_bytes=", "")
  local deadline = process.now() + (timeout or 3)
  while true do
    local log = p:stderr()
    local n, last = 0, nil
    for line in log:gmatch("[^\n]*stats lua_bytes=[^\n]*") do
      n = n + 1
      last = line
    end
    if n > before + 1 then -- the first one after the call may have been half written
      local s = {}
      for k, v in last:gmatch("([%w_]+)=(%d+)") do s[k] = tonumber(v) end
      return s
    end
    if not p:alive() then error("the host exited:\n" .. log, 2) end
    if process.now() >= deadline then error("no stats line within the deadline:\n" .. log, 2) end
    process.sleep(0.02)
  end
end

local clk_tck
-- The CPU time (user + system, in seconds) pid has used so far.
function M.cpu_seconds(pid)
  if not clk_tck then
    local sh = io.popen("getconf CLK_TCK")
    clk_tck = tonumber(sh:read("a")) or 100
    sh:close()
  end
  local f = assert(io.open("/proc/" .. pid .. "/stat"), "no /proc entry for " .. pid)
  local stat = f:read("a")
  f:close()
  -- After the name in parentheses: state is field 3, utime and stime fields 14 and 15.
  local fields = {}
  for word in stat:match("%)%s+(.*)$"):gmatch("%S+") do fields[#fields + 1] = word end
  return (tonumber(fields[12]) + tonumber(fields[13])) / clk_tck
end

-- The fds pid has open, as a table fd -> what it points at.
function M.fds(pid)
  local ls = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  local fds = {}
  for fd, target in ls:read("a"):gmatch("%s(%d+) %-> ([^\n]*)") do fds[tonumber(fd)] = target end
  ls:close()
  return fds
end

function M.fd_count(pid)
  local n = 0
  for _ in pairs(M.fds(pid)) do n = n + 1 end
  return n
end

-- The fd count of pid once it holds still (the same over 0.15 s). Take a baseline only
-- after the host has served something: until its loop runs it is still opening fds of
-- its own (the signal pipe).
function M.settled_fd_count(pid)
  local last, same = -1, 0
  local deadline = process.now() + 3
  while same < 3 and process.now() < deadline do
    local n = M.fd_count(pid)
    same = n == last and same + 1 or 0
    last = n
    process.sleep(0.05)
  end
  return last
end

-- The resident set size of pid, in bytes.
function M.rss(pid)
  local f = assert(io.open("/proc/" .. pid .. "/status"), "no /proc entry for " .. pid)
  local status = f:read("a")
  f:close()
  return tonumber(assert(status:match("VmRSS:%s*(%d+)%s*kB"))) * 1024
end

-- The soft and hard fd limits of pid, from /proc/PID/limits.
function M.nofile(pid)
  local f = assert(io.open("/proc/" .. pid .. "/limits"))
  local text = f:read("a")
  f:close()
  local soft, hard = text:match("Max open files%s+(%S+)%s+(%S+)")
  return tonumber(soft) or soft, tonumber(hard) or hard
end

-- How many TCP sockets on local port `port` are in a given state (hex, as in
-- /proc/net/tcp: "08" is CLOSE_WAIT, "01" ESTABLISHED).
function M.tcp_state_count(port, state)
  local n = 0
  for _, name in ipairs({"/proc/net/tcp", "/proc/net/tcp6"}) do
    local f = io.open(name)
    if f then
      for line in f:lines() do
        local lp, st = line:match("^%s*%d+:%s+%x+:(%x+)%s+%x+:%x+%s+(%x+)")
        if lp and tonumber(lp, 16) == port and st == state then n = n + 1 end
      end
      f:close()
    end
  end
  return n
end

-- The lines of text that contain `plain` (no patterns).
function M.lines_with(text, plain)
  local found = {}
  for line in text:gmatch("[^\n]+") do
    if line:find(plain, 1, true) then found[#found + 1] = line end
  end
  return found
end

-- Seconds since midnight of a log line's UTC stamp (2026-01-02T03:04:05.678Z).
function M.stamp(line)
  local h, m, s = line:match("^%d+%-%d+%-%d+T(%d+):(%d+):([%d.]+)Z")
  return tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s)
end

-- Waits, sleeping in between, until check() returns a true value, which it returns;
-- raises naming `what` after timeout seconds.
function M.wait_until(what, timeout, check)
  local deadline = process.now() + timeout
  while true do
    local value = check()
    if value then return value end
    if process.now() >= deadline then
      error(string.format("timed out after %g s waiting for %s", timeout, what), 2)
    end
    process.sleep(0.02)
  end
end

M.HOSTILE = "tests/support/hostile.py"

-- Runs tests/support/hostile.py (bounded); the sanitizer runtime a sanitized build
-- preloads is meant for luahost, not python3, so it is left out. Returns process.run's
-- result.
function M.python(args, timeout)
  local argv = {"env", "-u", "LD_PRELOAD", "python3", M.HOSTILE}
  for _, a in ipairs(args) do argv[#argv + 1] = tostring(a) end
  return process.run(argv, timeout or 60)
end

function M.show_run(r)
  return string.format("status %s %s%s\nstdout:\n%s\nstderr:\n%s", r.how, r.code,
    r.timed_out and " (timed out, killed)" or "", r.stdout, r.stderr)
end

-- One round trip on a client.lua Conn, timed. Returns the seconds it took, or raises.
function M.timed_echo(conn, text, timeout)
  local t0 = luahost.now()
  local got, why = conn:echo(text, timeout or 5)
  assert(got == text, string.format("echo of %q: %s", text, tostring(got and "got " .. got or why)))
  return luahost.now() - t0
end

-- The server is still running; otherwise fails with how it ended and its log.
function M.assert_alive(p, what)
  if p:alive() then return end
  local status = p:wait(1) or {}
  error(string.format("the server died%s (%s %s):\n%s", what and (" " .. what) or "",
    tostring(status.how), tostring(status.code), p:stderr()), 2)
end

-- Stops the server with SIGTERM and checks it exited 0 in time (not by a signal).
function M.assert_graceful_stop(p)
  local status, killed = p:stop("TERM")
  assert(not killed, "the server ignored SIGTERM and had to be killed:\n" .. p:stderr())
  assert(status.how == "exit" and status.code == 0, string.format(
    "the server ended with %s %s:\n%s", status.how, status.code, p:stderr()))
end

return M
