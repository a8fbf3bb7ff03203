-- luahost/test.lua: the test kit for busted specs. T.start runs a script in process on
-- a real backend or on "sim" (in-memory clients, a virtual clock), T.client talks to it
-- (or to any server) while driving its loop, T.spawn and T.run run the luahost
-- executable. See docs/testing.md.
local luahost = require "luahost"

local T = {}

T.TIMEOUT = 2 -- seconds a wait may take before the test fails with what it saw

local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local now = luahost.now -- the test's own host: always the real monotonic clock
local live_servers = setmetatable({}, {__mode = "k"})

-- s quoted for a failure message; a long s is cut, so that a failed read of a megabyte
-- does not print it.
local function quote(s)
  local cut = #s > 300
  local q = string.format("%q", cut and s:sub(1, 200) or s):gsub("\\\n", "\\n")
  if cut then q = q .. string.format(" (the first 200 of %d bytes)", #s) end
  return q
end

-- The end of a long log, for a failure message.
local function tail(text)
  if #text <= 4000 then return text end
  return string.format("(%d bytes before)\n", #text - 4000) .. text:sub(-4000)
end

local KIT_SOURCE = debug.getinfo(1, "S").source

-- error(message) at the first Lua caller outside this file and outside the file whose
-- chunk source is `source` (a helper module of a spec's own: debug.getinfo(1, "S").source
-- in it), so that a failed wait names the line of the spec, however the functions called
-- each other (tail calls included).
function T.fail_outside(source, message)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info or (info.source ~= KIT_SOURCE and info.source ~= source
                    and info.what ~= "C") then
      break
    end
    level = level + 1
  end
  error(message, level)
end

-- The same for the kit's own failures.
local function fail(message)
  T.fail_outside(KIT_SOURCE, message)
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

-- The fds of process pid, as fd -> what it points at ({} once it is gone).
local function list_fds(pid)
  local fds = {}
  local ls = io.popen("ls -l /proc/" .. pid .. "/fd/ 2>/dev/null")
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
  local first, second = list_fds(own_pid()), list_fds(own_pid())
  for fd, target in pairs(second) do
    if first[fd] ~= target then second[fd] = nil end
  end
  return second
end

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

local idle_selector -- for waits on nothing, and on the sockets of clients of processes

-- Sleeps for seconds without driving anything: a wait on a selector with nothing
-- registered. Servers from T.start do not run meanwhile.
function T.sleep(seconds)
  idle_selector = idle_selector or luahost.new_selector()
  for _ in idle_selector:select(seconds) do end
end

-- Calls pred() every 10 ms (sleeping in between) until it returns a true value, which
-- it returns; fails the test after timeout seconds (default T.TIMEOUT) naming what
-- (a string, or a function called then for one) and the second value pred last returned.
function T.wait_until(pred, timeout, what)
  timeout = timeout or T.TIMEOUT
  local deadline = now() + timeout
  while true do
    local value, seen = pred()
    if value then return value end
    if now() >= deadline then
      if type(what) == "function" then what = what() end
      fail(string.format("wait_until: %s still false after %g s%s", what or "the condition",
        timeout, seen ~= nil and "; last seen: " .. tostring(seen) or ""))
    end
    T.sleep(0.01)
  end
end

-- n bytes from math.random: seed it first (math.randomseed) for a repeatable stream.
function T.random_bytes(n)
  local parts = {}
  for i = 1, n // 8 do parts[i] = string.pack("<i8", math.random(0)) end
  for _ = 1, n % 8 do parts[#parts + 1] = string.char(math.random(0, 255)) end
  return table.concat(parts)
end

-- A TCP port on host (default 127.0.0.1) that nothing listens on: the kernel chose it for
-- a socket a moment ago. For a server that must keep its port across reloads, where
-- port 0 would not do.
function T.free_port(host)
  local probe = assert(luahost.listen(host or "127.0.0.1", 0))
  local _, port = probe:getsockname()
  probe:close()
  return port
end

-- Writes text to a new file named name (default "script.lua") in a new temporary
-- directory, and returns its path; the directory and all in it go when the test ends.
function T.tempfile(text, name)
  name = name or "script.lua"
  assert(not name:find("/", 1, true), "T.tempfile: a name, not a path: " .. name)
  local mk = io.popen("mktemp -d 2>/dev/null")
  local dir = mk:read("l")
  mk:close()
  if not dir or dir == "" then fail("T.tempfile: mktemp -d failed") end
  after_test(function() os.execute("rm -rf -- " .. shell_quote(dir)) end)
  local path = dir .. "/" .. name
  local f = assert(io.open(path, "wb"))
  f:write(text or "")
  f:close()
  return path
end

local tls_dir, tls_certs -- the certificates T.tls_cert made, in one directory
-- tls_dir's removal, when this table is collected: as the process ends.
T._tls_cleanup = nil

-- A certificate and its key for tests, made with the openssl command: an ECDSA P-256
-- key, subject CN=name (default "localhost"), alternative names name, 127.0.0.1 and ::1,
-- self-signed (so it is its own CA: pass its cert as a client's ca). opts.expired makes
-- one whose validity ended a day ago. Returns {cert = path, key = path}; the same opts
-- give the same files, made once per process (they go when it ends).
function T.tls_cert(opts)
  opts = opts or {}
  local name = opts.name or "localhost"
  local id = name .. (opts.expired and "-expired" or "")
  assert(id:match("^[%w.-]+$"), "T.tls_cert: name must be a host name")
  tls_certs = tls_certs or {}
  if tls_certs[id] then return tls_certs[id] end
  if not tls_dir then
    local mk = io.popen("mktemp -d 2>/dev/null")
    tls_dir = mk:read("l")
    mk:close()
    if not tls_dir or tls_dir == "" then fail("T.tls_cert: mktemp -d failed") end
    local dir = tls_dir
    T._tls_cleanup = setmetatable({}, {__gc = function()
      os.execute("rm -rf -- " .. shell_quote(dir))
    end})
  end
  local base = tls_dir .. "/" .. id
  local ext = assert(io.open(base .. ".ext", "w"))
  ext:write("subjectAltName=DNS:", name, ",IP:127.0.0.1,IP:::1\n",
    "basicConstraints=critical,CA:TRUE\n")
  ext:close()
  local q = shell_quote
  local command = string.format("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
    .. "-nodes -keyout %s -out %s -subj %s 2>&1 && openssl x509 -req -in %s -signkey %s "
    .. "-out %s -days %d -extfile %s 2>&1", q(base .. ".key"), q(base .. ".csr"),
    q("/CN=" .. name), q(base .. ".csr"), q(base .. ".key"), q(base .. ".pem"),
    opts.expired and -1 or 2, q(base .. ".ext"))
  local p = io.popen(command)
  local out = p:read("a")
  if not p:close() then fail("T.tls_cert: openssl failed: " .. out) end
  tls_certs[id] = {cert = base .. ".pem", key = base .. ".key"}
  return tls_certs[id]
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

-- Loads path (default: the script) as the new script, as luahost.reload does: as SIGHUP
-- does for the executable, except that a load that registers nothing, makes no timer and
-- asks for no listener is taken (SIGHUP refuses it). Returns true, or nil and the error.
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

-- A non-blocking TCP socket connecting to host:port, its receive buffer set to rcvbuf
-- first (a client that reads slowly), or nil and a message.
local function connect_rcvbuf(host, port, rcvbuf)
  local sock, err = luahost.socket(host:find(":", 1, true) and "inet6" or "inet", "stream")
  if not sock then return nil, err end
  assert(sock:setsockopt("rcvbuf", rcvbuf))
  assert(sock:setblocking(false))
  local rc = sock:connect_ex(host, port)
  if rc ~= 0 and rc ~= 115 then -- EINPROGRESS
    sock:close()
    return nil, "errno " .. tostring(rc)
  end
  return sock
end

-- Waits (up to timeout seconds) until sock, connecting to host:port, is connected;
-- fails the test saying why it did not.
local function await_connected(sock, host, port, timeout)
  idle_selector = idle_selector or luahost.new_selector()
  idle_selector:register(sock, WRITE)
  local ready = false
  for _ in idle_selector:select(timeout) do ready = true end
  idle_selector:unregister(sock)
  local where = string.format("T.client: connect %s:%s: ", host, port)
  if not ready then fail(where .. string.format("not connected within %g s", timeout)) end
  if not sock:getpeername() then
    local _, message = sock:recv(1) -- writable but not connected: recv says why
    fail(where .. tostring(message or "failed"))
  end
end

-- A client of srv (a server from T.start: an in-memory one on sim), or of host:port.
-- Every wait drives srv's loop, so the server answers while the test waits. opts:
-- timeout (the default of this client's waits, T.TIMEOUT), rcvbuf (the receive buffer
-- size, set before connecting; not on sim), wait = false (for host:port: do not wait
-- until connected). Closed when the test ends.
function T.client(srv, port, opts)
  if type(srv) == "table" then opts = port end
  opts = opts or {}
  local c = setmetatable({buffer = "", more = {}, size = 0, closed_by_peer = false,
    timeout = opts.timeout}, Client)
  local host = srv
  if type(srv) == "table" then
    assert(srv.listener and not srv.stopped, "T.client: the server is not listening")
    c.srv, host, port = srv, srv.host, srv.port
    if srv.sim then
      assert(not opts.rcvbuf, "T.client: rcvbuf needs a real backend, not sim")
      c.sock = assert(srv.sim.connect(srv.listener))
      -- TLS over the sim's socketpair: the client side turns TLS here. A sim client has
      -- no address of its own to check, so the server is verified as "localhost".
      if opts.tls then
        assert(c.sock:starttls(opts.tls, type(opts.tls) == "table" and opts.tls.servername
          or "localhost"))
      end
    end
    srv.clients[#srv.clients + 1] = c
  end
  if not c.sock then
    local err
    if opts.tls then
      c.sock, err = luahost.connect(host, port, {tls = opts.tls})
    elseif opts.rcvbuf then
      c.sock, err = connect_rcvbuf(host, port, opts.rcvbuf)
    else
      c.sock, err = luahost.connect(host, port)
    end
    if not c.sock then fail(string.format("T.client: connect %s:%s: %s", host, port, err)) end
  end
  assert(c.sock:setblocking(false))
  after_test(function() c:close() end)
  if c.srv then
    c.srv:step(0) -- the server accepts (and may greet) now
  elseif opts.wait ~= false then
    await_connected(c.sock, host, port, c.timeout or T.TIMEOUT)
  end
  if opts.tls and opts.handshake ~= false then
    local ok, err = c:handshake()
    if not ok then
      fail(string.format("T.client: TLS handshake with %s:%s: %s", host, port, err))
    end
  end
  return c
end

-- For a TLS client: runs its handshake (driving the server meanwhile) for up to timeout
-- seconds. true, or nil and why it failed (the server's certificate refused, ...).
function Client:handshake(timeout)
  local deadline = now() + (timeout or self.timeout or T.TIMEOUT)
  while true do
    local ok, err = self.sock:handshake()
    if ok then return true end
    if err ~= "wouldblock" then return nil, err end
    if now() >= deadline then return nil, "no handshake within the timeout" end
    self:drive(READ)
  end
end

-- n clients of host:port, connected batch (default 100) at a time, so that the listen
-- backlog never overflows into SYN retries; fails unless all are connected within
-- timeout seconds (default 20). opts.wait = false starts the n connects and returns at
-- once (a connect storm). opts.rcvbuf as for T.client.
function T.clients(host, port, n, opts)
  opts = opts or {}
  local list = {}
  local one = {wait = false, rcvbuf = opts.rcvbuf}
  if opts.wait == false then
    for i = 1, n do list[i] = T.client(host, port, one) end
    return list
  end
  local timeout = opts.timeout or 20
  local deadline = now() + timeout
  local sel = luahost.new_selector()
  while #list < n do
    local waiting = 0
    for _ = 1, math.min(opts.batch or 100, n - #list) do
      local c = T.client(host, port, one)
      list[#list + 1] = c
      sel:register(c.sock, WRITE, #list)
      waiting = waiting + 1
    end
    while waiting > 0 do
      local left = deadline - now()
      if left <= 0 then
        sel:close()
        fail(string.format("T.clients: %d of %d connected to %s:%s within %g s",
          #list - waiting, n, host, port, timeout))
      end
      for key in sel:select(math.min(left, 0.5)) do
        if not key.fileobj:getpeername() then
          local _, message = key.fileobj:recv(1)
          sel:close()
          fail(string.format("T.clients: connection %d of %d to %s:%s: %s", key.data, n, host,
            port, tostring(message or "failed")))
        end
        sel:unregister(key.fileobj)
        waiting = waiting - 1
      end
    end
  end
  sel:close()
  return list
end

-- Sends data (a few bytes: one send each) on every client and waits, all at once, up to
-- timeout seconds (default T.TIMEOUT) for each to get it back or be closed. data may be
-- a function of the client's index, so that each sends its own (a reply crossed between
-- connections then shows). Returns the outcomes, one per client: "echoed", "closed"
-- (end of stream or reset), "wrong" (other bytes came back) or "timeout"; and their
-- counts.
function T.echo_each(clients, data, timeout)
  local deadline = now() + (timeout or T.TIMEOUT)
  local sel, outcomes, open = luahost.new_selector(), {}, 0
  for i, c in ipairs(clients) do
    local want = type(data) == "function" and data(i) or data
    local n, err = c.sock:send(want)
    if n == #want then
      sel:register(c.sock, READ, {index = i, want = want, got = ""})
      open = open + 1
    else
      outcomes[i] = (n or err == "wouldblock") and "timeout" or "closed"
    end
  end
  while open > 0 and now() < deadline do
    for key in sel:select(math.max(deadline - now(), 0)) do
      local st = key.data
      local chunk, err = key.fileobj:recv(65536)
      local outcome
      if chunk == "" or (chunk == nil and err ~= "wouldblock") then
        outcome = "closed"
      elseif chunk then
        st.got = st.got .. chunk
        if #st.got >= #st.want then outcome = st.got == st.want and "echoed" or "wrong" end
      end
      if outcome then
        outcomes[st.index] = outcome
        sel:unregister(key.fileobj)
        open = open - 1
      end
    end
  end
  for _, key in pairs(sel:get_map()) do outcomes[key.data.index] = "timeout" end
  sel:close()
  local counts = {echoed = 0, closed = 0, wrong = 0, timeout = 0}
  for _, o in ipairs(outcomes) do counts[o] = counts[o] + 1 end
  return outcomes, counts
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
    self.more[#self.more + 1] = data -- joined only when needed: a long read stays linear
    self.size = self.size + #data
  end
end

-- What arrived and was not taken yet, as one string.
function Client:buffered()
  if #self.more > 0 then
    self.buffer = self.buffer .. table.concat(self.more)
    self.more = {}
  end
  return self.buffer
end

-- Removes the first n bytes of what arrived, and returns them.
function Client:take(n)
  local b = self:buffered()
  self.buffer = b:sub(n + 1)
  self.size, self.scanned = #self.buffer, 0
  return b:sub(1, n)
end

-- Lets the server (or, with no server in process, the kernel) move for a moment: up to
-- max_wait seconds (0.01) for the socket to be ready for events (default READ).
function Client:drive(events, max_wait)
  if self.srv and not self.srv.stopped then
    self.srv:step(self.srv.sim and 0 or 0.002)
  else
    idle_selector = idle_selector or luahost.new_selector()
    idle_selector:register(self.sock, events or READ)
    for _ in idle_selector:select(math.max(math.min(max_wait or 0.01, 0.01), 0)) do end
    idle_selector:unregister(self.sock)
  end
end

-- Waits until take(self) returns a value, which it returns.
function Client:wait_for(take, what, timeout)
  timeout = timeout or self.timeout or T.TIMEOUT
  local deadline = now() + timeout
  while true do
    self:pump()
    local value = take(self)
    if value ~= nil then return value end
    if self.closed_by_peer then
      fail(string.format("%s: the server closed the connection%s; received: %s", what,
        self.error and " (" .. self.error .. ")" or "", quote(self:buffered())))
    end
    if now() >= deadline then
      fail(string.format("%s: nothing within %g s; received: %s", what, timeout,
        quote(self:buffered())))
    end
    self:drive()
  end
end

-- Sends all of s, driving the server while the socket is full (for up to timeout
-- seconds); what the server sends meanwhile is read and kept.
function Client:send(s, timeout)
  timeout = timeout or self.timeout or T.TIMEOUT
  local sent, deadline = 0, now() + timeout
  while sent < #s do
    local n, err = self.sock:send(sent == 0 and s or s:sub(sent + 1))
    if n then
      sent = sent + n
    elseif err ~= "wouldblock" then
      fail(string.format("send: %s after %d of %d bytes", err, sent, #s))
    elseif now() >= deadline then
      fail(string.format("send: %d of %d bytes sent within %g s", sent, #s, timeout))
    else
      self:pump() -- a server that answers while we send must not block on us
      -- (once it has closed its side, readable says nothing: wait for room only)
      self:drive(self.closed_by_peer and WRITE or READ | WRITE)
    end
  end
  if self.srv then self.srv:step(0) end
  return self
end

-- Sends filler bytes, never reading, until the connection takes no more for settle
-- seconds (default 0.2) or limit bytes went; returns how many went. For a client that
-- does not read: the server's replies back up.
function Client:fill(limit, settle)
  settle = settle or 0.2
  local chunk, sent, blocked_since = string.rep("x", 65536), 0, nil
  while sent < limit do
    local n, err = self.sock:send(limit - sent >= #chunk and chunk or chunk:sub(1, limit - sent))
    if n then
      sent, blocked_since = sent + n, nil
    elseif err ~= "wouldblock" then
      fail(string.format("fill: send: %s after %d bytes", err, sent))
    else
      blocked_since = blocked_since or now()
      if now() - blocked_since >= settle then break end
      self:drive(WRITE)
    end
  end
  return sent
end

-- The next line the server sent, without its "\n".
function Client:line(timeout)
  return self:wait_for(function(c)
    local b = c:buffered()
    local i = b:find("\n", (c.scanned or 0) + 1, true) -- a long line is searched once
    if i then
      c:take(i)
      return b:sub(1, i - 1)
    end
    c.scanned = #b
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
  return self:wait_for(function(c)
    if c.size >= n then return c:take(n) end
  end, string.format("read(%d)", n), timeout)
end

-- Everything until the server closes the connection; fails if it does not within
-- timeout seconds, or if the connection ends in an error (a reset) instead.
function Client:read_all(timeout)
  timeout = timeout or self.timeout or T.TIMEOUT
  local deadline = now() + timeout
  while true do
    self:pump()
    if self.closed_by_peer then
      if self.error then
        fail(string.format("read_all: the connection ended in an error (%s) after %d bytes",
          self.error, self.size))
      end
      return self:take(self.size)
    end
    if now() >= deadline then
      fail(string.format("read_all: the server did not close the connection within %g s; "
        .. "received: %s", timeout, quote(self:buffered())))
    end
    self:drive()
  end
end

-- Where two byte strings first differ, for a failure message.
local function difference(want, got)
  for i = 1, math.min(#want, #got) do
    if want:byte(i) ~= got:byte(i) then return "first difference at byte " .. i end
  end
  return string.format("%d bytes expected, %d received", #want, #got)
end

-- Sends data and waits for the same bytes back; fails if other bytes come (or none
-- within timeout seconds). Returns the seconds the round trip took.
function Client:echo(data, timeout)
  timeout = timeout or self.timeout or T.TIMEOUT
  local t0 = now()
  self:send(data, timeout)
  local got = self:wait_for(function(c)
    if c.size >= #data then return c:take(#data) end
  end, string.format("echo(%d bytes)", #data), math.max(timeout - (now() - t0), 0))
  if got ~= data then
    fail(string.format("echo: sent %s, got back %s (%s)", quote(data), quote(got),
      difference(data, got)))
  end
  return now() - t0
end

-- Whether the server closes the connection within timeout seconds (c:closed(0) asks
-- without waiting), and then how: "eof", or the error that ended it (a reset). What it
-- sent before stays readable.
function Client:closed(timeout)
  local deadline = now() + (timeout or self.timeout or T.TIMEOUT)
  repeat
    self:pump()
    if self.closed_by_peer then return true, self.error or "eof" end
    self:drive(READ, deadline - now())
  until now() >= deadline
  return false
end

-- What arrived and was not read yet (without waiting).
function Client:received()
  self:pump()
  return self:buffered()
end

-- The client's own port, as the server sees it in getpeername.
function Client:local_port()
  local _, port = self.sock:getsockname()
  return port
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
-- The real executable, and other programs

local Process = {}
Process.__index = Process

-- The luahost executable: $LUAHOST_BIN, else build/luahost if there is one, else the
-- one on PATH.
function T.executable()
  local bin = os.getenv("LUAHOST_BIN")
  if bin and bin ~= "" then return bin end
  local f = io.open("build/luahost", "rb")
  if f then
    f:close()
    return "build/luahost"
  end
  return "luahost"
end

local prlimit_found
-- Whether prlimit(1) (util-linux), which opts.nofile needs, is installed.
function T.has_prlimit()
  if prlimit_found == nil then
    prlimit_found = os.execute("command -v prlimit >/dev/null 2>&1") == true
  end
  return prlimit_found
end

-- The words of argv run under opts.env (name -> value, or false to unset it) and
-- opts.nofile (a limit on open files: n, or {soft, hard}).
local function command_words(argv, opts)
  local words = {}
  if opts.env and next(opts.env) then
    words[1] = "env"
    local names = {}
    for name in pairs(opts.env) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do -- env(1) takes its options before the assignments
      if opts.env[name] == false then
        words[#words + 1] = "-u"
        words[#words + 1] = name
      end
    end
    for _, name in ipairs(names) do
      local value = opts.env[name]
      if value ~= false then words[#words + 1] = name .. "=" .. tostring(value) end
    end
  end
  if opts.nofile then
    if not T.has_prlimit() then fail("opts.nofile needs prlimit (util-linux), not installed") end
    local soft, hard = opts.nofile, opts.nofile
    if type(soft) == "table" then soft, hard = soft[1], soft[2] end
    words[#words + 1] = "prlimit"
    words[#words + 1] = string.format("--nofile=%d:%d", soft, hard)
  end
  for _, a in ipairs(argv) do words[#words + 1] = a end
  return words
end

-- Starts argv with stdin from /dev/null and stdout and stderr kept in files. Lua has no
-- fork: the shell that io.popen runs prints its pid and becomes the command, so the
-- popen handle is the command's parent, and closing it (once the command has exited,
-- so that it never blocks) reaps it and gives its exit status.
local function start(argv, opts, name)
  local out, err = os.tmpname(), os.tmpname()
  local words = command_words(argv, opts)
  for i, w in ipairs(words) do words[i] = shell_quote(w) end
  local handle = assert(io.popen(string.format("echo $$; exec %s </dev/null >%s 2>%s",
    table.concat(words, " "), shell_quote(out), shell_quote(err)), "r"))
  local pid = tonumber(handle:read("l"))
  if not pid then
    handle:close()
    os.remove(out)
    os.remove(err)
    fail("could not start " .. table.concat(argv, " "))
  end
  local p = setmetatable({pid = pid, name = name, handle = handle, out_path = out,
    err_path = err, started = now()}, Process)
  after_test(function() p:stop() end)
  return p
end

-- Whether the process runs (neither gone nor a zombie: exited, not yet reaped).
function Process:alive()
  if self.status then return false end
  local f = io.open("/proc/" .. self.pid .. "/stat", "r")
  if not f then return false end
  local state = f:read("a"):match("%)%s+(%a)") -- the name in parentheses may hold spaces
  f:close()
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- What the process wrote on stdout and stderr so far.
function Process:stdout()
  return self.out_text or read_file(self.out_path)
end

function Process:stderr()
  return self.err_text or read_file(self.err_path)
end

-- Waits up to timeout seconds (default T.TIMEOUT) for the process to exit. Returns its
-- status, {how = "exit" | "signal", code = n}, or nil if it still runs then.
function Process:wait(timeout)
  if self.status then return self.status end
  local deadline = now() + (timeout or T.TIMEOUT)
  while self:alive() do
    if now() >= deadline then return nil end
    T.sleep(0.01)
  end
  local _, how, code = self.handle:close()
  self.status, self.ended = {how = how, code = code}, now()
  self.out_text, self.err_text = read_file(self.out_path), read_file(self.err_path)
  os.remove(self.out_path)
  os.remove(self.err_path)
  return self.status
end

-- Sends the signal ("TERM", "HUP", ...), if the process still runs.
function Process:signal(name)
  if self:alive() then
    os.execute(string.format("kill -%s %d 2>/dev/null", name, self.pid))
  end
end

-- Sends SIGTERM (or signal) and waits up to timeout seconds (default 5) for the process
-- to exit, then SIGKILL. Returns its status, and whether it had to be killed.
function Process:stop(signal, timeout)
  if self.status then return self.status, false end
  self:signal(signal or "TERM")
  local status = self:wait(timeout or 5)
  if status then return status, false end
  self:signal("KILL")
  status = self:wait(5)
  -- One that SIGKILL cannot end is stuck in the kernel: fail rather than block on close.
  if not status then fail(string.format("%s (pid %d) survived SIGKILL", self.name, self.pid)) end
  return status, true
end

function Process:__tostring()
  local status = self:alive() and "running" or self:wait(0)
  if type(status) == "table" then status = "ended with " .. status.how .. " " .. status.code end
  return string.format("%s (pid %d): %s; its log:\n%s", self.name, self.pid, status,
    tail(self:stderr()))
end

-- The log, its last line left out while the process may still be writing it.
local function whole_lines(p)
  local text = p:stderr()
  if p.status then return text end
  return text:match("^.*\n") or ""
end

-- The lines of the log that match pattern (found as string.find would, plain or not).
function Process:log_lines(pattern, plain)
  local found = {}
  for line in whole_lines(self):gmatch("[^\n]+") do
    if line:find(pattern, 1, plain) then found[#found + 1] = line end
  end
  return found
end

-- Waits until the log holds an nth (default first) line matching pattern, and returns
-- what string.match gives for that line. Fails if the process exits first or no such
-- line comes within timeout seconds (default T.TIMEOUT).
function Process:wait_log(pattern, timeout, nth)
  nth, timeout = nth or 1, timeout or T.TIMEOUT
  local deadline = now() + timeout
  while true do
    local running = self:alive()
    if not running then self:wait(0) end -- a line written just before exiting counts
    local n = 0
    for line in whole_lines(self):gmatch("[^\n]+") do
      local found = table.pack(line:match(pattern))
      if found[1] ~= nil then
        n = n + 1
        if n == nth then return table.unpack(found, 1, found.n) end
      end
    end
    local what = nth == 1 and "a line" or string.format("%d lines (it has %d)", nth, n)
    if not running then
      fail(string.format("wait_log: %s ended with %s %s before logging %s matching /%s/; "
        .. "its log:\n%s", self.name, self.status.how, self.status.code, what, pattern,
        tail(self:stderr())))
    end
    if now() >= deadline then
      fail(string.format("wait_log: not %s matching /%s/ within %g s; its log:\n%s", what,
        pattern, timeout, tail(self:stderr())))
    end
    T.sleep(0.01)
  end
end

-- The fds the process has open, as fd -> what it points at.
function Process:fds()
  return list_fds(self.pid)
end

function Process:fd_count()
  local n = 0
  for _ in pairs(self:fds()) do n = n + 1 end
  return n
end

-- The fd count once it holds still (the same over 0.15 s; at most 3 s). Take a baseline
-- after the host has served something: until its loop runs it still opens fds of its own.
function Process:settled_fd_count()
  local last, same, deadline = -1, 0, now() + 3
  while same < 3 and now() < deadline do
    local n = self:fd_count()
    same = n == last and same + 1 or 0
    last = n
    T.sleep(0.05)
  end
  return last
end

local function proc_file(p, name)
  local f = io.open("/proc/" .. p.pid .. "/" .. name, "r")
  if not f then fail(string.format("%s (pid %d) has no /proc/%d/%s: it has exited", p.name,
    p.pid, p.pid, name)) end
  local text = f:read("a")
  f:close()
  return text
end

-- The resident set size, in bytes.
function Process:rss()
  return tonumber(proc_file(self, "status"):match("VmRSS:%s*(%d+)%s*kB")) * 1024
end

local clk_tck
-- The CPU time (user and system) the process has used so far, in seconds.
function Process:cpu_seconds()
  if not clk_tck then
    local sh = io.popen("getconf CLK_TCK")
    clk_tck = tonumber(sh:read("a")) or 100
    sh:close()
  end
  local fields = {}
  for word in proc_file(self, "stat"):match("%)%s+(.*)$"):gmatch("%S+") do
    fields[#fields + 1] = word
  end
  return (tonumber(fields[12]) + tonumber(fields[13])) / clk_tck -- utime, stime
end

-- The TCP ports the process listens on: its sockets matched with the LISTEN entries
-- (state 0A) of /proc/PID/net/tcp and tcp6. Sorted.
function Process:listening_ports()
  local inodes = {}
  for _, target in pairs(self:fds()) do
    local inode = target:match("^socket:%[(%d+)%]$")
    if inode then inodes[inode] = true end
  end
  local ports = {}
  for _, table_name in ipairs({"tcp", "tcp6"}) do
    local f = io.open("/proc/" .. self.pid .. "/net/" .. table_name, "r")
    if f then
      for line in f:lines() do
        local port, state, inode = line:match(
          "^%s*%d+:%s+%x+:(%x+)%s+%x+:%x+%s+(%x+)%s+%S+%s+%S+%s+%S+%s+%d+%s+%d+%s+(%d+)")
        if port and state == "0A" and inodes[inode] then ports[#ports + 1] = tonumber(port, 16) end
      end
      f:close()
    end
  end
  table.sort(ports)
  return ports
end

-- Runs the script given first with the rest as its arguments, as the host would, and
-- logs luahost.stats() after a full collection every 0.1 s, for p:stats().
local STATS_MARK = "luahost.test stats:"
local STATS_WRAPPER = [[
-- The test kit's stats wrapper (lua/luahost/test.lua): see T.spawn's opts.stats.
local script = assert(arg[1], "usage: luahost WRAPPER SCRIPT [ARGS...]")
local args = {[0] = script}
for i = 2, #arg do args[i - 1] = arg[i] end
arg = args
local chunk, err = loadfile(script)
if not chunk then error(err, 0) end
chunk(table.unpack(args))
luahost.every(0.1, function()
  collectgarbage()
  collectgarbage()
  local s, names = luahost.stats(), {}
  for name, value in pairs(s) do
    if math.type(value) == "integer" then names[#names + 1] = name end
  end
  table.sort(names)
  for i, name in ipairs(names) do names[i] = name .. "=" .. s[name] end
  luahost.log("info", "]] .. STATS_MARK .. [[ " .. table.concat(names, " "))
end)
]]

-- luahost.stats() of the host (started with {stats = true}), as logged after the call:
-- a table of numbers (connections, lua_bytes, registered, refused, timers, ...).
function Process:stats(timeout)
  if not self.stats_logged then
    fail("stats: start the process with T.spawn(..., {stats = true})")
  end
  local pattern = STATS_MARK:gsub("%p", "%%%0") .. " (.*)$"
  local before = #self:log_lines(STATS_MARK, true)
  -- The next line may have been computed before the call: the one after it was not.
  local fields = self:wait_log(pattern, timeout or 3, before + 2)
  local s = {}
  for k, v in fields:gmatch("([%w_]+)=(%d+)") do s[k] = tonumber(v) end
  return s
end

-- Runs `luahost [options...] script args...` (args default {"127.0.0.1:0"}), waits for
-- its "listening on HOST:PORT" line (opts.listen = false: does not) and returns the
-- process with host, port and pid. Stopped when the test ends. opts: selector,
-- log_level, options, stats, nofile, env, timeout (for the listening line, 5 s).
function T.spawn(script, args, opts)
  opts = opts or {}
  local argv = {T.executable()}
  local function add(...)
    for _, word in ipairs({...}) do argv[#argv + 1] = word end
  end
  if opts.selector then add("--selector", opts.selector) end
  if opts.log_level then add("--log-level", opts.log_level) end
  add(table.unpack(opts.options or {}))
  if opts.stats then add(T.tempfile(STATS_WRAPPER, "stats_wrapper.lua")) end
  add(script, table.unpack(args or {"127.0.0.1:0"}))
  local p = start(argv, opts, script)
  p.stats_logged = opts.stats
  if opts.listen == false then return p end
  local ok, host, port = pcall(p.wait_log, p, "listening on (%S+):(%d+)%s*$", opts.timeout or 5)
  if not ok then
    p:stop("KILL")
    fail(string.format("T.spawn: no \"listening on\" line from %s (it is logged at level "
      .. "info: a --log-level above that hides it); %s", script, host:match("wait_log: (.*)")
      or host))
  end
  p.host, p.port = host:match("^%[(.*)%]$") or host, tonumber(port)
  return p
end

-- SIGTERM (or signal), and fails unless the process exits by itself with status 0
-- within timeout seconds (default 5), as a graceful stop does.
function T.assert_graceful_stop(p, signal, timeout)
  signal = signal or "TERM"
  local status, killed = p:stop(signal, timeout)
  if killed then
    fail(string.format("%s did not stop within %g s of SIG%s and was killed; its log:\n%s",
      p.name, timeout or 5, signal, tail(p:stderr())))
  end
  if status.how ~= "exit" or status.code ~= 0 then
    fail(string.format("%s ended with %s %s on SIG%s, not exit 0; its log:\n%s", p.name,
      status.how, status.code, signal, tail(p:stderr())))
  end
end

local Run = {}
Run.__index = Run

function Run:__tostring()
  return string.format("status %s %s%s\nstdout:\n%s\nstderr:\n%s", self.how, self.code,
    self.timed_out and " (timed out, killed)" or "", self.stdout, self.stderr)
end

-- Runs argv (program, then arguments) to completion, killed past opts.timeout seconds
-- (default 10). opts: env, nofile, as for T.spawn. Returns {how, code, stdout, stderr,
-- elapsed, timed_out}, which tostring shows whole.
function T.run_command(argv, opts)
  opts = opts or {}
  local p = start(argv, opts, argv[1])
  local status = p:wait(opts.timeout or 10)
  local timed_out = status == nil
  if timed_out then status = p:stop("KILL", 2) end
  return setmetatable({how = status.how, code = status.code, stdout = p:stdout(),
    stderr = p:stderr(), elapsed = p.ended - p.started, timed_out = timed_out}, Run)
end

-- Starts argv (program, then arguments) in the background, as T.spawn does the
-- executable: a process stopped when the test ends. opts: env, nofile.
function T.spawn_command(argv, opts)
  return start(argv, opts or {}, argv[1])
end

-- Runs `luahost args...` to completion (T.run_command).
function T.run(args, opts)
  return T.run_command({T.executable(), table.unpack(args)}, opts)
end

return T
