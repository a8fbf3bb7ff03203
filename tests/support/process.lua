-- process.lua: start the real luahost executable (or any command) as a child process,
-- wait for it with deadlines, read what it logged, and always stop it.
--
-- Lua has no fork, so a child is started with io.popen running
--   echo $$; exec COMMAND </dev/null >OUT 2>ERR
-- The shell prints its own pid and then becomes COMMAND, so the pid is the command's and
-- the popen handle is its parent: closing the handle reaps it and returns its exit status.
-- The handle is only closed once /proc shows the child has exited (a zombie), so that
-- close never blocks. Every started process is remembered until it is reaped, and
-- process.stop_all() (call it from after_each) stops whatever a failed test left running.
local luahost = require "luahost"

local M = {}

M.bin = os.getenv("LUAHOST_BIN") or "build/luahost"
M.START_TIMEOUT = 5 -- seconds to wait for "listening on"
M.STOP_TIMEOUT = 5  -- seconds after SIGTERM before SIGKILL (the host's own grace is 3 s)

local live = {} -- every child not yet reaped

-- Sleeps without spinning: a selector with nothing registered waits out its timeout.
local idle = luahost.new_selector()
function M.sleep(seconds)
  for _ in idle:select(seconds) do end
end

function M.now()
  return luahost.now()
end

local function quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

function M.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- A temporary file holding text (a script, say), removed by process.cleanup().
local temp_files = {}
function M.temp_file(text, suffix)
  local path = os.tmpname()
  if suffix then
    os.remove(path)
    path = path .. suffix
  end
  M.write_file(path, text or "")
  temp_files[#temp_files + 1] = path
  return path
end

local Process = {}
Process.__index = Process

-- The state letter of /proc/PID/stat ("R", "S", "Z", ...), or nil if there is no such
-- process. The name in parentheses may hold spaces, so the state is read after the last ")".
local function proc_state(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return nil end
  local stat = f:read("a") or ""
  f:close()
  return stat:match("%)%s+(%a)")
end

-- Starts argv (a list: program then arguments). Returns a Process.
function M.spawn(argv)
  assert(type(argv) == "table" and #argv > 0, "spawn needs a list of program and arguments")
  local out, err = os.tmpname(), os.tmpname()
  local words = {}
  for i, a in ipairs(argv) do words[i] = quote(a) end
  local command = string.format("echo $$; exec %s </dev/null >%s 2>%s",
    table.concat(words, " "), quote(out), quote(err))
  local handle = assert(io.popen(command, "r"))
  local pid = tonumber(handle:read("l"))
  if not pid then
    handle:close()
    os.remove(out)
    os.remove(err)
    error("could not start " .. table.concat(argv, " "))
  end
  local p = setmetatable({
    argv = argv, pid = pid, handle = handle, out_path = out, err_path = err,
    started = M.now(),
  }, Process)
  live[p] = true
  return p
end

-- True while the process runs (a zombie is not running: it has exited, not yet reaped).
function Process:alive()
  if self.status then return false end
  local state = proc_state(self.pid)
  return state ~= nil and state ~= "Z" and state ~= "X"
end

function Process:stderr()
  if self.err_text then return self.err_text end
  return M.read_file(self.err_path)
end

function Process:stdout()
  if self.out_text then return self.out_text end
  return M.read_file(self.out_path)
end

-- The status once reaped: {how = "exit" | "signal", code = n}.
local function reap(self)
  if self.status then return self.status end
  local _, how, code = self.handle:close()
  self.status = {how = how, code = code}
  self.ended = M.now()
  self.out_text = M.read_file(self.out_path)
  self.err_text = M.read_file(self.err_path)
  os.remove(self.out_path)
  os.remove(self.err_path)
  live[self] = nil
  return self.status
end

-- Waits up to timeout seconds for the process to exit. Returns its status, or nil if it
-- is still running at the deadline.
function Process:wait(timeout)
  local deadline = M.now() + (timeout or M.STOP_TIMEOUT)
  while self:alive() do
    if M.now() >= deadline then return nil end
    M.sleep(0.01)
  end
  return reap(self)
end

function Process:signal(name)
  if self:alive() then
    os.execute(string.format("kill -%s %d 2>/dev/null", name, self.pid))
  end
end

-- Stops the process: SIGTERM (or the signal given), then SIGKILL if it has not exited
-- within timeout seconds. Returns its status and whether it had to be killed.
function Process:stop(signal, timeout)
  if self.status then return self.status, false end
  self:signal(signal or "TERM")
  local status = self:wait(timeout or M.STOP_TIMEOUT)
  if status then return status, false end
  self:signal("KILL")
  status = self:wait(5)
  -- A process SIGKILL cannot end within 5 s is stuck in the kernel: leave it to be
  -- reaped later rather than block the run forever on close().
  assert(status, "process " .. self.pid .. " survived SIGKILL")
  return status, true
end

-- Polls stderr until a line matches pattern. Returns the captures (or the line), or nil
-- and a message if the deadline passes or the process exits first.
function Process:wait_for_log(pattern, timeout)
  local deadline = M.now() + (timeout or M.START_TIMEOUT)
  while true do
    -- Read stderr before checking liveness: a line written just before exiting counts.
    local running = self:alive()
    for line in self:stderr():gmatch("[^\n]+") do
      local found = table.pack(line:match(pattern))
      if found[1] ~= nil then return table.unpack(found, 1, found.n) end
    end
    if not running then
      local status = self:wait(0)
      return nil, string.format("%s exited (%s %s) before logging /%s/; stderr:\n%s",
        self.argv[1], status.how, status.code, pattern, self:stderr())
    end
    if M.now() >= deadline then
      return nil, string.format("no line matching /%s/ within %g s; stderr so far:\n%s",
        pattern, timeout or M.START_TIMEOUT, self:stderr())
    end
    M.sleep(0.01)
  end
end

-- Starts `luahost [options] script args...` and waits for its "listening on HOST:PORT"
-- line. opts: selector, log_level, options (more host options), args (script arguments,
-- default {"127.0.0.1:0"}), timeout. Returns the Process with host and port set; on
-- failure the process is stopped and an error raised with what it logged.
function M.start(script, opts)
  opts = opts or {}
  local argv = {M.bin}
  if opts.selector then
    argv[#argv + 1] = "--selector"
    argv[#argv + 1] = opts.selector
  end
  if opts.log_level then
    argv[#argv + 1] = "--log-level"
    argv[#argv + 1] = opts.log_level
  end
  for _, o in ipairs(opts.options or {}) do argv[#argv + 1] = o end
  argv[#argv + 1] = script
  for _, a in ipairs(opts.args or {"127.0.0.1:0"}) do argv[#argv + 1] = a end
  local p = M.spawn(argv)
  local host, port = p:wait_for_log("listening on (.-):(%d+)%s*$", opts.timeout)
  if not host then
    local message = port
    p:stop("KILL")
    error(message, 2)
  end
  p.host = host:match("^%[(.*)%]$") or host
  p.port = tonumber(port)
  return p
end

-- Runs argv to completion, bounded by timeout seconds (killed past it). Returns
-- {how=, code=, stdout=, stderr=, elapsed=, timed_out=}.
function M.run(argv, timeout)
  local p = M.spawn(argv)
  local status = p:wait(timeout or 10)
  local timed_out = status == nil
  if timed_out then status = p:stop("KILL", 2) end
  return {
    how = status.how, code = status.code, timed_out = timed_out,
    stdout = p:stdout(), stderr = p:stderr(), elapsed = p.ended - p.started,
  }
end

-- Runs the luahost executable with the given arguments (see run).
function M.run_luahost(args, timeout)
  local argv = {M.bin}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return M.run(argv, timeout)
end

-- The TCP ports pid listens on, found through /proc: its socket inodes, matched with
-- the LISTEN entries (state 0A) of /proc/PID/net/tcp and tcp6.
function M.listening_ports(pid)
  local inodes = {}
  local ls = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  for inode in ls:read("a"):gmatch("socket:%[(%d+)%]") do inodes[inode] = true end
  ls:close()
  local ports = {}
  for _, table_name in ipairs({"tcp", "tcp6"}) do
    local f = io.open("/proc/" .. pid .. "/net/" .. table_name, "r")
    if f then
      for line in f:lines() do
        local port, state, inode =
          line:match("^%s*%d+:%s+%x+:(%x+)%s+%x+:%x+%s+(%x+)%s+%S+%s+%S+%s+%S+%s+%d+%s+%d+%s+(%d+)")
        if port and state == "0A" and inodes[inode] then
          ports[#ports + 1] = tonumber(port, 16)
        end
      end
      f:close()
    end
  end
  return ports
end

-- The kernel's send and receive queues (bytes) of the IPv4 TCP socket whose local port
-- is local_port and whose peer's port is remote_port, from /proc/net/tcp; nil if none.
function M.tcp_queues(local_port, remote_port)
  local f = io.open("/proc/net/tcp", "r")
  if not f then return nil end
  local tx, rx
  for line in f:lines() do
    local lp, rp, t, r = line:match("^%s*%d+:%s+%x+:(%x+)%s+%x+:(%x+)%s+%x+%s+(%x+):(%x+)")
    if lp and tonumber(lp, 16) == local_port and tonumber(rp, 16) == remote_port then
      tx, rx = tonumber(t, 16), tonumber(r, 16)
      break
    end
  end
  f:close()
  return tx, rx
end

-- Stops every process still running (SIGTERM, SIGKILL past the bound) and removes the
-- temporary files. Meant for after_each, so that nothing outlives its test.
function M.stop_all()
  for p in pairs(live) do
    p:stop("TERM")
  end
  for i = #temp_files, 1, -1 do
    os.remove(temp_files[i])
    temp_files[i] = nil
  end
end

-- How many started processes have not been reaped; after stop_all it must be 0.
function M.live_count()
  local n = 0
  for _ in pairs(live) do n = n + 1 end
  return n
end

return M
