-- luahost/task.lua: sequential-style sockets (LuaSocket's names, as copas and OpenResty
-- give them) on coroutines, over the host's own selector: a stream's key holds the
-- resumer of the task waiting on it, so tasks and callbacks mix in one script.
-- See docs/task.md.
local luahost = require "luahost"

local sel = luahost.selector
local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local now, after, log = luahost.now, luahost.after, luahost.log
-- Taken when the module loads, so that under the executable it is the host's guarded
-- resume: each resume counts against the budget of the callback that runs it.
local create, resume, yield = coroutine.create, coroutine.resume, coroutine.yield
local costatus, coclose = coroutine.status, coroutine.close
local find, sub, byte = string.find, string.sub, string.byte

local task = {}
task.now = now

local MAXLINE = 64 * 1024 -- default bound of one receive, per stream (setmaxline)
-- send waits while more than this is buffered for output: a quarter of the default output
-- limit, where the host stops reading from the connection (see wait).
local HIGH_WATER = 256 * 1024
local CHUNK = 65536 -- the most one recv asks for
local CANCELLED = setmetatable({}, {__tostring = function() return "task cancelled" end})

-- The paths every message takes are in C (luahost._task_io, src/lua_task.c): a stream's
-- key callback resumes its reader, receiveany and send run without Lua when nothing is
-- unusual, and hand everything else to the functions of this file they stand in for.
-- The state they share with this file is in C (src/lua_task_core.h): a stream's core
-- (s[CORE]), a task's core (t[TCORE]) and the module's state, userdata this file reads
-- and writes by integer keys (s[CORE][BUF], state[CURRENT]). The slots and keys (checked
-- against theirs below): the state's, a stream's and a task's, a stream core's, a task
-- core's.
local CURRENT <const> = 1 -- the task running now, or false in a callback or the main chunk
local CORE <const>, TCORE <const> = 1, 1 -- in a stream's table, in a task's
local SOCK <const>, BUF <const>, READER <const>, DRAINER <const> = 1, 2, 3, 4
local DRAINED <const>, EVENTS <const>, TIMEOUT <const> = 5, 6, 7
local DISCARDING <const>, HIGH <const> = 8, 9
local CO <const>, STREAM <const>, SLOT <const>, TIMER <const>, CANCELLING <const> = 1, 2, 3, 4, 5
local state -- the module's state (fast.state): state[CURRENT]
local fast -- luahost._task_io's paths
local WAIT -- what a task yields when it waits through this module (fast.WAIT)
local hook -- fast.hook: a wait's bookkeeping
local READY -- what a stream's C resumer resumes its reader with: "ready" (fast.READY)
local live = setmetatable({}, {__mode = "k"}) -- tasks not yet ended

local Task = {}
Task.__index = Task
local Stream = {}
Stream.__index = Stream

---------------------------------------------------------------------------------------
-- Running and waking tasks

local finish -- defined below

-- What follows a resume of t that did not end in a wait: t returned or raised. A task
-- that yielded by itself, not through a wait of this module, could never be woken: it
-- fails.
local function after_resume(t, ok, err)
  local co = t[TCORE][CO]
  if costatus(co) == "dead" then
    if ok then
      finish(t, "done")
    elseif err == CANCELLED then
      finish(t, "cancelled")
    else
      local trace = debug.traceback(co, tostring(err))
      coclose(co) -- runs its <close> variables, as a cancel does
      finish(t, "failed", trace)
    end
  else
    coclose(co)
    finish(t, "failed", "a task yielded outside luahost.task; it can never be woken")
  end
end

-- Resumes t, which waits, with why it woke; ends it if it returned or raised.
local function step(t, why)
  local prev = state[CURRENT]
  state[CURRENT] = t
  local ok, waits = resume(t[TCORE][CO], why)
  state[CURRENT] = prev
  if ok and waits == WAIT then return end -- the usual case: it waits again
  after_resume(t, ok, waits)
end

-- Ends t's current wait (its stream slot and its timer) without resuming it.
local function unhook(t)
  local s, slot = t[TCORE][STREAM], t[TCORE][SLOT]
  if s then
    if s[CORE][slot] == t then s[CORE][slot] = false end
    t[TCORE][STREAM] = false
  end
  local timer = t[TCORE][TIMER]
  if timer then
    timer:cancel()
    t[TCORE][TIMER] = false
  end
end

-- Wakes t, which waits, with why ("ready", "timeout", "closed").
local function wake(t, why)
  unhook(t)
  step(t, why)
end

-- A resume the budget cut short (--max-instructions or --max-memory raise past step, in
-- the callback that resumed) leaves its task current with a dead coroutine: the next
-- callback of the host ends it as failed, which resets its streams. The host has already
-- reset the one whose event ran it.
local function reap_cut_short()
  local t = state[CURRENT]
  state[CURRENT] = false
  if t and t[TCORE][CO] and costatus(t[TCORE][CO]) == "dead" and live[t] then
    finish(t, "failed", "its callback was cut short (--max-instructions or --max-memory)")
  end
end

-- The same, from a callback of the host (a key, a timer, on_drain): no task runs then,
-- whatever one the budget cut short left current.
local function wake_from_host(t, why)
  if state[CURRENT] then reap_cut_short() end
  unhook(t)
  step(t, why)
end

local pending -- a socket method, taken with the others below

-- What a stream's key callback (fast.resumer(s)) does beyond resuming a reader it can
-- resume itself: wakes the task that waits to read from (or connect or accept on) s,
-- else one waiting in send whose wait is over (the host dropped the output of a
-- connection whose peer is gone: no on_drain comes, but the read side reports it); with
-- neither, the key is removed, so a level-triggered event does not come back round after
-- round while the stream's task does something else.
local function on_ready(s)
  local t = s[CORE][READER]
  if t then return wake_from_host(t, "ready") end
  local d = s[CORE][DRAINER]
  if d and pending(s[CORE][SOCK]) <= s[CORE][HIGH] then return wake_from_host(d, "ready") end
  s[CORE][EVENTS] = false
  sel:unregister(s[CORE][SOCK])
end

local function ensure_registered(s, events)
  local registered = s[CORE][EVENTS]
  if registered == events then return end
  if registered then
    sel:modify(s[CORE][SOCK], events, s.on_ready)
  else
    sel:register(s[CORE][SOCK], events, s.on_ready)
  end
  s[CORE][EVENTS] = events
end

-- The running task waits, on s (slot READER: readiness for events; DRAINER: its output
-- all sent) or on nothing (a sleep), for at most timeout seconds (nil: no bound).
-- Returns why it woke: "ready", "timeout" or "closed".
local function wait(s, slot, events, timeout)
  -- The running task, made the one waiting on s in slot (fast.hook: in one C call what
  -- reads and writes of the cores would take), and what s's key is registered for.
  local t, registered = hook(s, slot)
  if not t then
    if registered == "cancelling" then error(CANCELLED, 0) end
    error(registered == "busy" and "luahost.task: another task already waits on this stream"
      or "luahost.task: a stream waits only inside a task (task.spawn)", 3)
  end
  if s then
    if events then
      if registered ~= events then ensure_registered(s, events) end
    else -- waiting for output to drain
      if not s.on_drain_set then
        s.on_drain_set = true
        s[CORE][SOCK]:on_drain(function()
          local d = s[CORE][DRAINER]
          if d then wake_from_host(d, "ready") end
        end)
      end
      -- Also for reading, which tells of a peer gone. With the high water at a quarter
      -- of the output limit the host does not read (nor report) the connection while
      -- send waits, so data the peer sends meanwhile wakes nobody round after round.
      ensure_registered(s, READ)
    end
  end
  if timeout then
    if timeout <= 0 then
      unhook(t)
      return "timeout"
    end
    t[TCORE][TIMER] = after(timeout, t.on_timeout)
  end
  local why = yield(WAIT)
  if why == READY then return "ready" end
  return why
end

---------------------------------------------------------------------------------------
-- Tasks

-- The running task: current, unless a resume the budget cut short (the error raised past
-- step) left a dead one there.
local function running_task()
  local t = state[CURRENT]
  if t and (not t[TCORE][CO] or costatus(t[TCORE][CO]) == "dead") then
    reap_cut_short()
    return nil
  end
  return t or nil
end

-- Runs fn(...) in a new task now, until it first waits. Streams among the arguments
-- become the new task's own: they are closed when it ends.
function task.spawn(fn, ...)
  assert(type(fn) == "function", "task.spawn: a function expected")
  -- Its core (CO, STREAM, SLOT, TIMER, CANCELLING) at TCORE, the rest named, every one
  -- set (false for none): a missing one would be looked up in Task on each read.
  local t = setmetatable({false, streams = {}, state = "running", awaiting = false}, Task)
  fast.task(t, create(fn))
  t.on_timeout = function()
    if t[TCORE][TIMER] then
      t[TCORE][TIMER] = false
      wake_from_host(t, "timeout")
    end
  end
  for i = 1, select("#", ...) do
    local s = select(i, ...)
    if getmetatable(s) == Stream then
      if s.owner then s.owner.streams[s] = nil end
      s.owner, t.streams[s] = t, true
    end
  end
  live[t] = true
  local prev = running_task() or false
  state[CURRENT] = t
  local ok, waits = resume(t[TCORE][CO], ...)
  state[CURRENT] = prev
  if not (ok and waits == WAIT) then after_resume(t, ok, waits) end
  return t
end

-- "running" (it runs, or started the one that runs), "waiting", "done", "failed" or
-- "cancelled".
function Task:status()
  if self.state ~= "running" then return self.state end
  return costatus(self[TCORE][CO]) == "suspended" and "waiting" or "running"
end

-- Ends the task: a waiting one at once (its <close> variables run, its streams close),
-- the running one by raising in it, one that started the running one when it next
-- waits. Returns false if it had already ended.
function Task:cancel()
  if self.state ~= "running" then return false end
  local status = costatus(self[TCORE][CO])
  if status == "running" then error(CANCELLED, 0) end
  if status == "normal" then
    self[TCORE][CANCELLING] = true
    return true
  end
  unhook(self)
  coclose(self[TCORE][CO])
  finish(self, "cancelled")
  return true
end

-- The address of the first of t's streams that has one, for the log.
local function peer_of(t)
  for s in pairs(t.streams) do
    if s.peer then return s.peer end
  end
  return "no peer"
end

finish = function(t, how, err)
  t.state = how
  live[t] = nil
  if err then log("error", "error in task for " .. peer_of(t) .. ": " .. err) end
  local streams = t.streams
  t.streams, t[TCORE][CO] = {}, false
  for s in pairs(streams) do
    s.owner = false
    -- A task that failed left its connections in no known state: reset them, as the
    -- host does a connection whose callback raised.
    if how == "failed" then s:abort() else s:close() end
  end
end

function task.sleep(seconds)
  assert(type(seconds) == "number", "task.sleep: seconds expected")
  wait(nil, nil, nil, math.max(seconds, 0.001))
end

-- Calls start(done) and waits until done(...) is called, at once or later from a callback
-- of the host, then returns what done was given: for a module whose results come through
-- callbacks (luahost.redis) to hand them to a task. Inside a task only. A done called after
-- its task was cancelled, or called again, does nothing.
function task.await(start)
  local t = running_task()
  if not t then error("luahost.task: await only inside a task (task.spawn)", 2) end
  local token, results = {}, nil
  start(function(...)
    if results then return end
    results = table.pack(...)
    if t.awaiting == token and t.state == "running" then
      t.awaiting = false
      -- From a host callback or from another task (which stays current): not wake_from_host,
      -- whose reaping would take the running task for one the budget cut short.
      local current = state[CURRENT]
      local co = current and current[TCORE][CO]
      if current and (not co or costatus(co) == "dead") then reap_cut_short() end
      step(t, "ready")
    end
  end)
  if not results then
    t.awaiting = token
    wait(nil, nil, nil, nil)
    t.awaiting = false
  end
  return table.unpack(results, 1, results.n)
end

-- The running task, or nil.
function task.current()
  return running_task()
end

-- How many tasks have not ended.
function task.count()
  local n = 0
  for _ in pairs(live) do n = n + 1 end
  return n
end

---------------------------------------------------------------------------------------
-- Streams

local function address(host, port)
  if not host then return nil end
  return (find(host, ":", 1, true) and "[" .. host .. "]" or host) .. ":" .. port
end

-- The socket methods the hot paths call, taken from the first socket's metatable: a
-- call through it skips a metatable lookup per call.
local recv, write, fileno

-- A stream over sock, owned by the running task (if any); peer is its address.
local function new_stream(sock, peer)
  if not recv then
    local methods = getmetatable(sock).__index
    recv, write, pending, fileno = methods.recv, methods.write, methods.pending, methods.fileno
  end
  -- Its core in its array part, the rest named, every one set (false for none).
  local core = fast.core(sock)
  core[HIGH] = HIGH_WATER
  local s = setmetatable({core, maxline = MAXLINE, peer = peer or false,
    owner = running_task() or false, closed = false, accept_failed = false,
    on_drain_set = false, on_ready = false, receiveany = false, send = false}, Stream)
  -- Its key's callback, and receiveany and send made for it: found in the stream itself,
  -- a call on it needs no look-up in Stream, nor a check of its core in C.
  s.on_ready, s.receiveany, s.send = fast.paths(s)
  if s.owner then s.owner.streams[s] = true end
  return s
end

-- A stream over a luahost socket, listening or connected.
function task.wrap(sock)
  local ok, host, port = pcall(sock.getpeername, sock)
  return new_stream(sock, ok and address(host, port) or nil)
end

-- The seconds left until deadline (nil: none).
local function left(deadline)
  return deadline and deadline - now()
end

local function is_open(s)
  return not s.closed and s[CORE][SOCK]:fileno() >= 0
end

-- Connects to host:port and returns a stream once the connection is up, or nil and why.
-- opts.timeout bounds the wait.
function task.connect(host, port, opts)
  local sock, err = luahost.connect(host, port)
  if not sock then return nil, err end
  local s = new_stream(sock, address(host, port))
  local why = wait(s, READER, WRITE, opts and opts.timeout)
  if why == "ready" and sock:getpeername() then return s end
  if why == "ready" then
    local _, message = sock:recv(1) -- writable but not connected: recv says why
    why = message or "connect failed"
  end
  s:close()
  return nil, why
end

function Stream:socket()
  return self[CORE][SOCK]
end

-- nil or a negative number: operations wait as long as it takes.
function Stream:settimeout(seconds)
  self[CORE][TIMEOUT] = (seconds and seconds >= 0) and seconds or false
  return 1
end

function Stream:setmaxline(n)
  assert(math.type(n) == "integer" and n > 0, "setmaxline: a positive integer expected")
  self.maxline = n
end

-- The output limit of the socket; send then waits while a quarter of it is buffered, where
-- the host stops reading. (Under --max-output, call it with that limit.)
function Stream:setlimit(bytes)
  self[CORE][SOCK]:setlimit(bytes)
  self[CORE][HIGH] = bytes // 4
end

function Stream:__tostring()
  return "luahost.task stream (" .. tostring(self[CORE][SOCK]) .. ")"
end

-- Closes the stream (letting the socket send what it has buffered); a task waiting on it
-- wakes with "closed".
function Stream:close(how)
  if self.closed then return 1 end
  self.closed = true
  if self.owner then
    self.owner.streams[self] = nil
    self.owner = false
  end
  local core = self[CORE]
  if how == "abort" then core[SOCK]:abort() else core[SOCK]:close() end -- unregisters it
  core[EVENTS] = false
  for _, slot in ipairs({READER, DRAINER}) do
    local t = core[slot]
    if t then wake(t, "closed") end
  end
  core[READER] = false -- lets go of the last reader, which the core still holds
  return 1
end

-- Closes the stream at once, dropping buffered output (with a reset if there was some).
function Stream:abort()
  return self:close("abort")
end

-- A stream for the next client, with its address and port; nil and a message when an
-- accept fails (the next call waits for the listener first).
function Stream:accept()
  local timeout = self[CORE][TIMEOUT]
  local deadline = timeout and now() + timeout
  while true do
    if not is_open(self) then return nil, "closed" end
    if not self.accept_failed then
      local conn, host, port = self[CORE][SOCK]:accept()
      if conn then return new_stream(conn, address(host, port)), host, port end
      if host ~= "wouldblock" then
        self.accept_failed = true
        return nil, host
      end
    end
    self.accept_failed = false
    local why = wait(self, READER, READ, left(deadline))
    if why ~= "ready" then return nil, why end
  end
end

-- Reads once into the buffer, waiting for data first when the last read drained the
-- socket. Returns true, or nil and why not ("closed" at end of stream).
local function fill(s, deadline)
  local sock = s[CORE][SOCK]
  if s.closed or fileno(sock) < 0 then return nil, "closed" end
  while true do
    local l = deadline and deadline - now()
    if s[CORE][DRAINED] and (not l or l > 0) then -- past the deadline: one last try, no wait
      local why = wait(s, READER, READ, l)
      if why ~= "ready" then return nil, why end -- ready: still registered, so open
    end
    local data, err = recv(sock, CHUNK)
    s[CORE][DRAINED] = data == nil or #data < CHUNK
    if err == "wouldblock" and l and l <= 0 then return nil, "timeout" end
    if data == "" then
      return nil, "closed"
    elseif data then
      if s[CORE][DISCARDING] then -- the rest of a line too long, up to its end
        local nl = find(data, "\n", 1, true)
        if nl then
          s[CORE][DISCARDING] = false
          data = sub(data, nl + 1)
        else
          data = ""
        end
      end
      local buf = s[CORE][BUF]
      s[CORE][BUF] = buf == "" and data or buf .. data
      return true
    elseif err ~= "wouldblock" then
      return nil, err
    end
  end
end

-- Whatever the buffer holds, as the partial result of a failed operation.
local function fail(s, err)
  local partial = s[CORE][BUF]
  s[CORE][BUF] = ""
  return nil, err, partial
end

local function read_line(s, deadline)
  local from = 1
  while true do
    local buf = s[CORE][BUF]
    local nl = find(buf, "\n", from, true)
    if nl then
      local j = nl - 1
      if byte(buf, j) == 13 then j = j - 1 end
      s[CORE][BUF] = sub(buf, nl + 1)
      if j > s.maxline then return nil, "line too long" end
      return sub(buf, 1, j)
    end
    -- The bound is on the line without its ending, and a CR may wait for its LF.
    if #buf - (byte(buf, -1) == 13 and 1 or 0) > s.maxline then
      s[CORE][BUF], s[CORE][DISCARDING] = "", true
      return nil, "line too long"
    end
    from = #buf + 1
    local ok, err = fill(s, deadline)
    if not ok then return fail(s, err) end
  end
end

local function read_count(s, n, deadline)
  while #s[CORE][BUF] < n do
    local ok, err = fill(s, deadline)
    if not ok then return fail(s, err) end
  end
  local buf = s[CORE][BUF]
  if #buf == n then
    s[CORE][BUF] = ""
    return buf
  end
  s[CORE][BUF] = sub(buf, n + 1)
  return sub(buf, 1, n)
end

local function read_all(s, deadline)
  while true do
    if #s[CORE][BUF] > s.maxline then
      s[CORE][BUF] = ""
      return nil, "too long"
    end
    local ok, err = fill(s, deadline)
    if not ok then
      if err ~= "closed" then return fail(s, err) end
      local buf = s[CORE][BUF]
      s[CORE][BUF] = ""
      return buf
    end
  end
end

-- receive("*l") a line without its end (LF or CRLF), "*a" all until the peer closes, or
-- n bytes; prefix is put before the result. On failure: nil, why ("closed", "timeout",
-- "line too long", a system message) and the partial data, as LuaSocket.
function Stream:receive(pattern, prefix)
  pattern = pattern or "*l"
  local timeout = self[CORE][TIMEOUT]
  local deadline = timeout and now() + timeout
  local data, err, partial
  if pattern == "*l" or pattern == "l" then
    data, err, partial = read_line(self, deadline)
  elseif pattern == "*a" or pattern == "a" then
    data, err, partial = read_all(self, deadline)
  elseif math.type(pattern) == "integer" and pattern >= 0 then
    data, err, partial = read_count(self, pattern, deadline)
  else
    error("receive: pattern must be \"*l\", \"*a\" or a byte count", 2)
  end
  if prefix then
    if data then return prefix .. data end
    return nil, err, partial and prefix .. partial
  end
  return data, err, partial
end

-- The bytes before the next delimiter (which is consumed); nil, "too long" when more
-- than max (default the stream's maxline) come without it.
function Stream:receive_until(delimiter, max)
  assert(type(delimiter) == "string" and #delimiter > 0, "receive_until: a delimiter expected")
  max = max or self.maxline
  local timeout = self[CORE][TIMEOUT]
  local deadline = timeout and now() + timeout
  local from = 1
  while true do
    local buf = self[CORE][BUF]
    local i, j = find(buf, delimiter, from, true)
    if i then
      self[CORE][BUF] = sub(buf, j + 1)
      if i - 1 > max then return nil, "too long" end
      return sub(buf, 1, i - 1)
    end
    if #buf > max + #delimiter - 1 then
      self[CORE][BUF] = ""
      return nil, "too long"
    end
    from = math.max(1, #buf - #delimiter + 2)
    local ok, err = fill(self, deadline)
    if not ok then return fail(self, err) end
  end
end

-- What has come (at most max bytes, default 65536), waiting only if nothing has. (In C,
-- fast.receiveany, for an empty buffer read or waited for the usual way.)
local function receiveany(self, max)
  local buf = self[CORE][BUF]
  if buf == "" then
    local timeout = self[CORE][TIMEOUT]
    local deadline = timeout and now() + timeout
    repeat -- a read may bring only the discarded end of a line too long
      local ok, err = fill(self, deadline)
      if not ok then return nil, err end
      buf = self[CORE][BUF]
    until buf ~= ""
  end
  max = max or CHUNK
  if #buf <= max then
    self[CORE][BUF] = ""
    return buf
  end
  self[CORE][BUF] = sub(buf, max + 1)
  return sub(buf, 1, max)
end

-- Buffers data for sending (the host sends it as the peer takes it), first waiting while
-- the output buffered is over the high water. Returns #data, or nil, why and 0. (In C,
-- fast.send, under the high water.)
local function send(self, data)
  local sock = self[CORE][SOCK]
  if self.closed or fileno(sock) < 0 then return nil, "closed", 0 end
  if pending(sock) > self[CORE][HIGH] then
    local timeout = self[CORE][TIMEOUT]
    local deadline = timeout and now() + timeout
    repeat
      local why = wait(self, DRAINER, nil, left(deadline))
      if why ~= "ready" then return nil, why, 0 end
      if not is_open(self) then return nil, "closed", 0 end
    until pending(sock) <= self[CORE][HIGH]
  end
  local left_over, err = write(sock, data)
  if not left_over then return nil, err, 0 end
  return #data
end

fast = luahost._task_io{on_ready = on_ready, after_resume = after_resume,
  receiveany = receiveany, send = send}
WAIT, READY, state, hook = fast.WAIT, fast.READY, fast.state, fast.hook
for name, slot in pairs({CURRENT = CURRENT, CORE = CORE, TCORE = TCORE, SOCK = SOCK, BUF = BUF,
  READER = READER, DRAINER = DRAINER, DRAINED = DRAINED, EVENTS = EVENTS, TIMEOUT = TIMEOUT,
  DISCARDING = DISCARDING, HIGH = HIGH, CO = CO, STREAM = STREAM, SLOT = SLOT, TIMER = TIMER,
  CANCELLING = CANCELLING}) do
  assert(fast[name] == slot, "luahost.task: its slots differ from luahost's")
end
Stream.receiveany, Stream.send = fast.receiveany, fast.send

task.Stream = Stream -- for getmetatable checks
return task
