-- luahost/test.lua: the test kit for busted specs. T.start runs a script in process on
-- a real backend or on "sim" (in-memory clients, a virtual clock), T.client talks to it
-- while driving its loop, T.spawn runs the luahost executable. See docs/testing.md.
local luahost = require "luahost"

local T = {}

T.TIMEOUT = 2 -- seconds a wait may take before the test fails with what it saw

local now = luahost.now -- the test's own host: always the real monotonic clock
local live_servers = setmetatable({}, {__mode = "k"})

local function quote(s)
  return string.format("%q", s):gsub("\\\n", "\\n")
end

-- error() at the first Lua caller outside this file, so that a failed wait names the
-- line of the spec, however the kit's functions called each other (tail calls included).
local KIT_SOURCE = debug.getinfo(1, "S").source
local function fail(message)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info or (info.source ~= KIT_SOURCE and info.what ~= "C") then break end
    level = level + 1
  end
  error(message, level)
end

-- Runs fn once the current busted test ends, pass or fail (after the test's own
-- `finally`, before after_each), wherever the kit was called from: the test itself, a
-- helper, or before_each. Returns false outside busted.
local pending_cleanups -- what to run when the running test ends, latest first
local function after_test(fn)
  if not pending_cleanups then
    local ok, busted = pcall(require, "busted")
    if not ok or type(busted) ~= "table" or type(busted.subscribe) ~= "function" then
      return false
    end
    pending_cleanups = {}
    busted.subscribe({"test", "end"}, function()
      local fns = pending_cleanups
      pending_cleanups = {}
      for k = #fns, 1, -1 do pcall(fns[k]) end
      return nil, true -- let busted's other subscribers (the output handlers) run
    end)
  end
  pending_cleanups[#pending_cleanups + 1] = fn
  return true
end

-- This process's pid: /proc/self opened by Lua itself (a child's would be the child's).
local function own_pid()
  local f = assert(io.open("/proc/self/stat", "r"))
  local pid = f:read("a"):match("^(%d+)")
  f:close()
  return pid
end

local function list_fds()
  local fds = {}
  local ls = io.popen("ls -l /proc/" .. own_pid() .. "/fd/ 2>/dev/null")
  for line in ls:lines() do
    local fd, target = line:match("(%d+) %-> (.*)$")
    if fd then fds[tonumber(fd)] = target end
  end
  ls:close()
  return fds
end

-- The fds this process has open, as a set of fd -> what it points at. Each listing
-- also shows the pipe it is read through, a new one each time: only what two listings
-- agree on is kept.
local function open_fds()
  local first, second = list_fds(), list_fds()
  for fd, target in pairs(second) do
    if first[fd] ~= target then second[fd] = nil end
  end
  return second
end

---------------------------------------------------------------------------------------
-- Servers run in process

local Server = {}
Server.__index = Server

-- Starts script in a host of its own inside this process. args are the script's
-- arguments (default {"127.0.0.1:0"}: loopback, any free port); opts.selector picks the
-- backend ("sim" for the simulated world), opts.log_level the host's (default "info"),
-- opts.log where its lines go: "capture" (the default: read them with srv:log()) or
-- "stderr", opts.max_output each connection's output limit (as --max-output).
-- The script sees its own globals, and require "luahost" gives it its own host.
function T.start(script, args, opts)
  opts = opts or {}
  args = args or {"127.0.0.1:0"}
  local fds_before = open_fds()
  local env = setmetatable({}, {__index = _G})
  local host = luahost.open{selector = opts.selector, script = script, args = args, env = env,
    log = opts.log or "capture", max_output = opts.max_output}
  host.log_level(opts.log_level or "info")
  env.arg = {[0] = script, table.unpack(args)}
  -- The script's own Lua modules load in its environment, once per server, so that
  -- theirs too is the server's host; C modules and the test's preloads are shared.
  local loaded = {luahost = host}
  env.require = function(name)
    if loaded[name] ~= nil then return loaded[name] end
    local path = package.searchpath(name, package.path)
    if not path or package.preload[name] then return require(name) end
    local value = assert(loadfile(path, "t", env))(name, path)
    if value == nil then value = true end
    loaded[name] = value
    return value
  end
  local chunk, err = loadfile(script, "t", env)
  local ok = chunk ~= nil
  if ok then ok, err = xpcall(chunk, debug.traceback, table.unpack(args)) end
  if not ok then
    host.shutdown(0)
    fail("T.start: " .. script .. " failed to load: " .. tostring(err))
  end
  local srv = setmetatable({
    luahost = host, sim = host.sim, env = env, script = script,
    fds_before = fds_before, clients = {},
  }, Server)
  srv.listener = host.listeners()[1]
  if srv.listener then srv.host, srv.port = srv.listener:getsockname() end
  live_servers[srv] = true
  after_test(function() srv:stop() end)
  return srv
end

-- What the server logged so far ("level message" lines), when its log is captured.
function Server:log()
  local text, dropped = self.luahost.captured_log()
  self.log_text = (self.log_text or "") .. text
  if dropped > 0 then
    self.log_text = self.log_text .. string.format("(%d lines dropped)\n", dropped)
  end
  return self.log_text
end

-- One round of the server's loop, waiting up to timeout seconds (default 0) for events.
function Server:step(timeout)
  return self.luahost.step(timeout or 0)
end

-- Runs the server's loop until pred() returns a true value, which it returns; fails the
-- test if that takes more than timeout seconds of real time.
function Server:run_until(pred, timeout, what)
  timeout = timeout or T.TIMEOUT
  local deadline = now() + timeout
  while true do
    local value = pred()
    if value then return value end
    if now() >= deadline then
      fail(string.format("run_until: %s still false after %g s", what or "the condition",
        timeout))
    end
    self:step(self.sim and 0 or 0.002)
  end
end

-- Moves the sim clock forward (firing the timers due on the way, in order).
function Server:advance(seconds)
  assert(self.sim, "advance needs a server started with {selector = \"sim\"}")
  return self.sim.advance(seconds)
end

-- Loads path (default: the script) as the new script, as SIGHUP does for the
-- executable. Returns true, or nil and the error.
function Server:reload(path)
  return self.luahost.reload(path or self.script)
end

-- Stops the server as the executable does on SIGTERM: the kit's clients are closed,
-- listeners and connections closed (flushed for up to a second, or at once on sim),
-- timers cancelled, the host closed. Called by itself when the test ends.
function Server:stop()
  if self.stopped then return end
  for _, c in ipairs(self.clients) do c:close() end -- the script sees them leave
  self.stopped = true
  self.luahost.shutdown(self.sim and 0 or 1)
  live_servers[self] = nil
end

-- Advances the clock of every running sim server.
function T.advance(seconds)
  for srv in pairs(live_servers) do
    if srv.sim and not srv.stopped then srv:advance(seconds) end
  end
end

-- Fails unless the stopped server left nothing behind: no registration, no connection
-- still flushing, no timer, and no fd opened since T.start (a socket or file the script
-- still holds, say). Start other servers before this one, or stop them first.
function T.assert_clean(srv)
  assert(srv.stopped, "assert_clean: stop the server first (srv:stop())")
  collectgarbage()
  collectgarbage()
  local problems = {}
  local stats = srv.luahost.stats()
  for _, field in ipairs({"registered", "flushing", "lingering", "timers", "connections"}) do
    if stats[field] ~= 0 then
      problems[#problems + 1] = string.format("%d %s", stats[field], field)
    end
  end
  local fds, now_open = {}, open_fds()
  for fd, target in pairs(now_open) do
    if srv.fds_before[fd] ~= target then fds[#fds + 1] = fd end
  end
  table.sort(fds)
  for _, fd in ipairs(fds) do
    problems[#problems + 1] = string.format("fd %d open (%s)", fd, now_open[fd])
  end
  if #problems > 0 then
    fail(srv.script .. " left behind: " .. table.concat(problems, ", "))
  end
end

---------------------------------------------------------------------------------------
-- Clients

local Client = {}
Client.__index = Client

local test_selector -- for clients of servers not run by the kit

-- A client of srv (a server from T.start: an in-memory one on sim), or of host:port.
-- Every wait drives srv's loop, so the server answers while the test waits.
function T.client(srv, port)
  local c = setmetatable({buffer = "", closed_by_peer = false}, Client)
  if type(srv) == "table" then
    assert(srv.listener and not srv.stopped, "T.client: the server is not listening")
    c.srv = srv
    if srv.sim then
      c.sock = assert(srv.sim.connect(srv.listener))
    else
      c.sock = assert(luahost.connect(srv.host, srv.port))
    end
    srv.clients[#srv.clients + 1] = c
  else
    c.sock = assert(luahost.connect(srv, port))
  end
  assert(c.sock:setblocking(false))
  if c.srv then c.srv:step(0) end -- the server accepts (and may greet) now
  return c
end

-- Reads what has arrived, without waiting.
function Client:pump()
  while not self.closed_by_peer do
    local data, err = self.sock:recv(65536)
    if data == nil and err == "wouldblock" then return end
    if data == nil or data == "" then
      self.closed_by_peer, self.error = true, err
      return
    end
    self.buffer = self.buffer .. data
  end
end

-- Lets the server (or, with no server in process, the kernel) move for a moment.
function Client:drive()
  if self.srv and not self.srv.stopped then
    self.srv:step(self.srv.sim and 0 or 0.002)
  else
    test_selector = test_selector or luahost.new_selector()
    test_selector:register(self.sock, luahost.EVENT_READ)
    test_selector:select(0.01)
    test_selector:unregister(self.sock)
  end
end

-- Waits until take(buffer) returns a value (and what is left of the buffer).
function Client:wait(take, what, timeout)
  timeout = timeout or T.TIMEOUT
  local deadline = now() + timeout
  while true do
    self:pump()
    local value, rest = take(self.buffer)
    if value ~= nil then
      self.buffer = rest
      return value
    end
    if self.closed_by_peer then
      fail(string.format("%s: the server closed the connection%s; received: %s", what,
        self.error and " (" .. self.error .. ")" or "", quote(self.buffer)))
    end
    if now() >= deadline then
      fail(string.format("%s: nothing within %g s; received: %s", what, timeout,
        quote(self.buffer)))
    end
    self:drive()
  end
end

-- Sends all of s, driving the server while the socket is full (for up to timeout
-- seconds, default T.TIMEOUT).
function Client:send(s, timeout)
  local sent, deadline = 0, now() + (timeout or T.TIMEOUT)
  while sent < #s do
    local n, err = self.sock:send(sent == 0 and s or s:sub(sent + 1))
    if n then
      sent = sent + n
    elseif err ~= "wouldblock" then
      fail("send: " .. tostring(err))
    elseif now() >= deadline then
      fail(string.format("send: %d of %d bytes sent within %g s", sent, #s,
        timeout or T.TIMEOUT))
    else
      self:pump() -- a server that answers while we send must not block on us
      self:drive()
    end
  end
  if self.srv then self.srv:step(0) end
  return self
end

-- The next line the server sent, without its "\n".
function Client:line(timeout)
  return self:wait(function(b)
    local i = b:find("\n", 1, true)
    if i then return b:sub(1, i - 1), b:sub(i + 1) end
  end, "line", timeout)
end

-- The next n lines, as a list.
function Client:lines(n, timeout)
  local lines = {}
  for i = 1, n do lines[i] = self:line(timeout) end
  return lines
end

-- The next line, decoded as JSON (lua-cjson).
function Client:json(timeout)
  return require("cjson").decode(self:line(timeout))
end

-- Exactly n bytes.
function Client:read(n, timeout)
  return self:wait(function(b)
    if #b >= n then return b:sub(1, n), b:sub(n + 1) end
  end, string.format("read(%d)", n), timeout)
end

-- Whether the server closes the connection within timeout seconds; what it sent
-- before stays readable.
function Client:closed(timeout)
  local deadline = now() + (timeout or T.TIMEOUT)
  repeat
    self:pump()
    if self.closed_by_peer then return true end
    self:drive()
  until now() >= deadline
  return false
end

-- What arrived and was not read yet (without waiting).
function Client:received()
  self:pump()
  return self.buffer
end

-- Shuts down the client's sending side: the server reads end of stream.
function Client:shutdown()
  assert(self.sock:shutdown("w"))
  if self.srv then self.srv:step(0) end
end

-- The connection is reset (sim only): the server's next read or write fails with
-- ECONNRESET.
function Client:reset()
  assert(self.srv and self.srv.sim, "reset needs a server on the sim backend")
  self.srv.sim.reset(self.sock)
  self.closed_by_peer = true
  self.srv:step(0)
end

-- Shapes the server's sends to this client (sim only): {max_write = n} caps each send
-- at n bytes, {would_block = k} makes the next k sends fail with EAGAIN.
function Client:shape(opts)
  assert(self.srv and self.srv.sim, "shape needs a server on the sim backend")
  return self.srv.sim.shape(self.sock, opts)
end

function Client:close()
  if self.sock:fileno() >= 0 then self.sock:close() end
  if self.srv and not self.srv.stopped then self.srv:step(0) end
end

---------------------------------------------------------------------------------------
-- The real executable

local Process = {}
Process.__index = Process

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local text = f:read("a")
  f:close()
  return text
end

local function sleep(seconds)
  test_selector = test_selector or luahost.new_selector()
  test_selector:select(seconds)
end

-- The luahost executable: $LUAHOST_BIN, else build/luahost if there is one, else the
-- one on PATH.
local function executable()
  local bin = os.getenv("LUAHOST_BIN")
  if bin and bin ~= "" then return bin end
  local f = io.open("build/luahost", "rb")
  if f then
    f:close()
    return "build/luahost"
  end
  return "luahost"
end

-- Runs `luahost [opts.options...] script args...` (args default {"127.0.0.1:0"}), waits
-- for its "listening on HOST:PORT" line and returns a process with host, port and pid.
-- It is stopped when the test ends (or with proc:stop()).
function T.spawn(script, args, opts)
  opts = opts or {}
  local words = {shell_quote(executable())}
  for _, o in ipairs(opts.options or {}) do words[#words + 1] = shell_quote(o) end
  words[#words + 1] = shell_quote(script)
  for _, a in ipairs(args or {"127.0.0.1:0"}) do words[#words + 1] = shell_quote(a) end
  local stderr_path = os.tmpname()
  local handle = io.popen(string.format("exec %s </dev/null >/dev/null 2>%s & echo $!",
    table.concat(words, " "), shell_quote(stderr_path)))
  local pid = tonumber(handle:read("l"))
  handle:close()
  assert(pid, "T.spawn: could not start " .. script)
  local proc = setmetatable({pid = pid, script = script, stderr_path = stderr_path}, Process)
  after_test(function() proc:stop() end)
  local deadline = now() + (opts.timeout or 5)
  while true do
    local host, port = proc:stderr():match("listening on (%S-):(%d+)")
    if host then
      proc.host, proc.port = host:match("^%[(.*)%]$") or host, tonumber(port)
      return proc
    end
    if not proc:alive() or now() >= deadline then
      local log = proc:stderr()
      proc:stop()
      fail(string.format("T.spawn: no \"listening on\" line from %s (it is logged at level "
        .. "info: a --log-level above that hides it); its log:\n%s", script, log))
    end
    sleep(0.01)
  end
end

function Process:alive()
  local f = io.open("/proc/" .. self.pid .. "/stat", "r")
  if not f then return false end
  local state = f:read("a"):match("%)%s+(%a)")
  f:close()
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- What the process logged so far.
function Process:stderr()
  return self.log or read_file(self.stderr_path)
end

-- SIGTERM (or signal), then SIGKILL if it is still running after timeout seconds.
function Process:stop(signal, timeout)
  if self.log then return end
  os.execute(string.format("kill -%s %d 2>/dev/null", signal or "TERM", self.pid))
  local deadline = now() + (timeout or 5)
  while self:alive() and now() < deadline do sleep(0.01) end
  if self:alive() then os.execute(string.format("kill -KILL %d 2>/dev/null", self.pid)) end
  self.log = read_file(self.stderr_path)
  os.remove(self.stderr_path)
end

return T
