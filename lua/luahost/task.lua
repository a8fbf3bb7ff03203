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

local current -- the task running now, or nil in a callback or the main chunk
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
  if costatus(t.co) == "dead" then
    if ok then
      finish(t, "done")
    elseif err == CANCELLED then
      finish(t, "cancelled")
    else
      local trace = debug.traceback(t.co, tostring(err))
      coclose(t.co) -- runs its <close> variables, as a cancel does
      finish(t, "failed", trace)
    end
  elseif not t.waiting then
    coclose(t.co)
    finish(t, "failed", "a task yielded outside luahost.task; it can never be woken")
  end
end

-- Resumes t, which waits, with why it woke; ends it if it returned or raised.
local function step(t, why)
  local prev = current
  current = t
  t.waiting = false
  local ok, err = resume(t.co, why)
  current = prev
  if ok and t.waiting then return end -- the usual case: it waits again
  after_resume(t, ok, err)
end

-- Ends t's current wait (its stream slot and its timer) without resuming it.
local function unhook(t)
  local s, slot = t.stream, t.slot
  if s then
    if s[slot] == t then s[slot] = false end
    t.stream = false
  end
  if t.timer then
    t.timer:cancel()
    t.timer = false
  end
end

-- Wakes t, which waits, with why: "ready", "timeout" or "closed".
local function wake(t, why)
  unhook(t)
  step(t, why)
end

-- A resume the budget cut short (--max-instructions or --max-memory raise past step, in
-- the callback that resumed) leaves its task in current with a dead coroutine: the next
-- callback of the host ends it as failed, which resets its streams. The host has already
-- reset the one whose event ran it.
local function reap_cut_short()
  local t = current
  current = nil
  if t and t.co and costatus(t.co) == "dead" and live[t] then
    finish(t, "failed", "its callback was cut short (--max-instructions or --max-memory)")
  end
end

-- The same, from a callback of the host (a key, a timer, on_drain): no task runs then,
-- whatever one the budget cut short left in current.
local function wake_from_host(t, why)
  if current then reap_cut_short() end
  unhook(t)
  step(t, why)
end

local pending -- a socket method, taken with the others below

-- The callback in a stream's key: wakes the task that waits to read from (or connect
-- or accept on) it, else one waiting in send whose wait is over (the host dropped the
-- output of a connection whose peer is gone: no on_drain comes, but the read side
-- reports it); with neither, the key is removed, so a level-triggered event does not
-- come back round after round while the stream's task does something else.
local function ready_callback(s)
  return function()
    local t = s.reader
    if t then -- wake_from_host and unhook, inlined: this is the path of every message
      if current then reap_cut_short() end
      s.reader, t.stream = false, false
      if t.timer then
        t.timer:cancel()
        t.timer = false
      end
      return step(t, "ready")
    end
    local d = s.drainer
    if d and pending(s.sock) <= s.high then return wake_from_host(d, "ready") end
    s.events = false
    sel:unregister(s.sock)
  end
end

local function ensure_registered(s, events)
  if s.events == events then return end
  if s.events then
    sel:modify(s.sock, events, s.on_ready)
  else
    sel:register(s.sock, events, s.on_ready)
  end
  s.events = events
end

-- The running task waits, on s (slot "reader": readiness for events; "drainer": its
-- output all sent) or on nothing (a sleep), for at most timeout seconds (nil: no
-- bound). Returns why it woke: "ready", "timeout" or "closed".
local function wait(s, slot, events, timeout)
  local t = current
  if not t then error("luahost.task: a stream waits only inside a task (task.spawn)", 3) end
  if t.cancelling then error(CANCELLED, 0) end
  if s then
    if s[slot] then error("luahost.task: another task already waits on this stream", 3) end
    s[slot], t.stream, t.slot = t, s, slot
    if events then
      if s.events ~= events then ensure_registered(s, events) end
    else -- waiting for output to drain
      if not s.on_drain_set then
        s.on_drain_set = true
        s.sock:on_drain(function()
          local d = s.drainer
          if d then wake_from_host(d, "ready") end
        end)
      end
      -- Also for reading, which tells of a peer gone. With the high water at a quarter
      -- of the output limit the host does not read (nor report) the connection while
      -- send waits, so data the peer sends meanwhile wakes nobody round after round.
      if s.events ~= READ then ensure_registered(s, READ) end
    end
  end
  if timeout then
    if timeout <= 0 then
      unhook(t)
      return "timeout"
    end
    t.timer = after(timeout, t.on_timeout)
  end
  t.waiting = true
  return yield()
end

---------------------------------------------------------------------------------------
-- Tasks

-- The running task: current, unless a resume the budget cut short (the error raised past
-- step) left a dead one there.
local function running_task()
  local t = current
  if t and (not t.co or costatus(t.co) == "dead") then
    reap_cut_short()
    return nil
  end
  return t
end

-- Runs fn(...) in a new task now, until it first waits. Streams among the arguments
-- become the new task's own: they are closed when it ends.
function task.spawn(fn, ...)
  assert(type(fn) == "function", "task.spawn: a function expected")
  -- Every field is set (false for none): a missing one would be looked up in Task on
  -- each read, on the path of every message.
  local t = setmetatable({co = create(fn), streams = {}, state = "running", waiting = false,
    stream = false, slot = false, timer = false, cancelling = false, awaiting = false}, Task)
  t.on_timeout = function()
    if t.timer then
      t.timer = false
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
  local prev = running_task()
  current = t
  local ok, err = resume(t.co, ...)
  current = prev
  if not (ok and t.waiting) then after_resume(t, ok, err) end
  return t
end

-- "running" (it runs, or started the one that runs), "waiting", "done", "failed" or
-- "cancelled".
function Task:status()
  if self.state ~= "running" then return self.state end
  return costatus(self.co) == "suspended" and "waiting" or "running"
end

-- Ends the task: a waiting one at once (its <close> variables run, its streams close),
-- the running one by raising in it, one that started the running one when it next
-- waits. Returns false if it had already ended.
function Task:cancel()
  if self.state ~= "running" then return false end
  local status = costatus(self.co)
  if status == "running" then error(CANCELLED, 0) end
  if status == "normal" then
    self.cancelling = true
    return true
  end
  unhook(self)
  coclose(self.co)
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
  t.streams, t.co = {}, nil
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
      if current and (not current.co or costatus(current.co) == "dead") then reap_cut_short() end
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
  local s = setmetatable({sock = sock, buf = "", maxline = MAXLINE, high = HIGH_WATER,
    peer = peer or false, owner = running_task() or false, timeout = false, closed = false,
    reader = false, drainer = false, events = false, drained = false, discarding = false,
    accept_failed = false, on_drain_set = false}, Stream)
  s.on_ready = ready_callback(s)
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
  return not s.closed and s.sock:fileno() >= 0
end

-- Connects to host:port and returns a stream once the connection is up, or nil and why.
-- opts.timeout bounds the wait.
function task.connect(host, port, opts)
  local sock, err = luahost.connect(host, port)
  if not sock then return nil, err end
  local s = new_stream(sock, address(host, port))
  local why = wait(s, "reader", WRITE, opts and opts.timeout)
  if why == "ready" and sock:getpeername() then return s end
  if why == "ready" then
    local _, message = sock:recv(1) -- writable but not connected: recv says why
    why = message or "connect failed"
  end
  s:close()
  return nil, why
end

function Stream:socket()
  return self.sock
end

-- nil or a negative number: operations wait as long as it takes.
function Stream:settimeout(seconds)
  self.timeout = (seconds and seconds >= 0) and seconds or false
  return 1
end

function Stream:setmaxline(n)
  assert(math.type(n) == "integer" and n > 0, "setmaxline: a positive integer expected")
  self.maxline = n
end

-- The output limit of the socket; send then waits while a quarter of it is buffered, where
-- the host stops reading. (Under --max-output, call it with that limit.)
function Stream:setlimit(bytes)
  self.sock:setlimit(bytes)
  self.high = bytes // 4
end

function Stream:__tostring()
  return "luahost.task stream (" .. tostring(self.sock) .. ")"
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
  if how == "abort" then self.sock:abort() else self.sock:close() end -- unregisters it
  self.events = false
  for _, slot in ipairs({"reader", "drainer"}) do
    local t = self[slot]
    if t then wake(t, "closed") end
  end
  return 1
end

-- Closes the stream at once, dropping buffered output (with a reset if there was some).
function Stream:abort()
  return self:close("abort")
end

-- A stream for the next client, with its address and port; nil and a message when an
-- accept fails (the next call waits for the listener first).
function Stream:accept()
  local deadline = self.timeout and now() + self.timeout
  while true do
    if not is_open(self) then return nil, "closed" end
    if not self.accept_failed then
      local conn, host, port = self.sock:accept()
      if conn then return new_stream(conn, address(host, port)), host, port end
      if host ~= "wouldblock" then
        self.accept_failed = true
        return nil, host
      end
    end
    self.accept_failed = false
    local why = wait(self, "reader", READ, left(deadline))
    if why ~= "ready" then return nil, why end
  end
end

-- Reads once into the buffer, waiting for data first when the last read drained the
-- socket. Returns true, or nil and why not ("closed" at end of stream).
local function fill(s, deadline)
  local sock = s.sock
  if s.closed or fileno(sock) < 0 then return nil, "closed" end
  while true do
    local l = deadline and deadline - now()
    if s.drained and (not l or l > 0) then -- past the deadline: one last try, no wait
      local why
      local t = current
      if not l and s.events == READ and t and not s.reader and not t.cancelling then
        s.reader, t.stream, t.slot, t.waiting = t, s, "reader", true -- wait(), inlined
        why = yield()
      else
        why = wait(s, "reader", READ, l)
      end
      if why ~= "ready" then return nil, why end -- ready: still registered, so open
    end
    local data, err = recv(sock, CHUNK)
    s.drained = data == nil or #data < CHUNK
    if err == "wouldblock" and l and l <= 0 then return nil, "timeout" end
    if data == "" then
      return nil, "closed"
    elseif data then
      if s.discarding then -- the rest of a line too long, up to its end
        local nl = find(data, "\n", 1, true)
        if nl then
          s.discarding = false
          data = sub(data, nl + 1)
        else
          data = ""
        end
      end
      s.buf = s.buf == "" and data or s.buf .. data
      return true
    elseif err ~= "wouldblock" then
      return nil, err
    end
  end
end

-- Whatever the buffer holds, as the partial result of a failed operation.
local function fail(s, err)
  local partial = s.buf
  s.buf = ""
  return nil, err, partial
end

local function read_line(s, deadline)
  local from = 1
  while true do
    local buf = s.buf
    local nl = find(buf, "\n", from, true)
    if nl then
      local j = nl - 1
      if byte(buf, j) == 13 then j = j - 1 end
      s.buf = sub(buf, nl + 1)
      if j > s.maxline then return nil, "line too long" end
      return sub(buf, 1, j)
    end
    -- The bound is on the line without its ending, and a CR may wait for its LF.
    if #buf - (byte(buf, -1) == 13 and 1 or 0) > s.maxline then
      s.buf, s.discarding = "", true
      return nil, "line too long"
    end
    from = #buf + 1
    local ok, err = fill(s, deadline)
    if not ok then return fail(s, err) end
  end
end

local function read_count(s, n, deadline)
  while #s.buf < n do
    local ok, err = fill(s, deadline)
    if not ok then return fail(s, err) end
  end
  local buf = s.buf
  if #buf == n then
    s.buf = ""
    return buf
  end
  s.buf = sub(buf, n + 1)
  return sub(buf, 1, n)
end

local function read_all(s, deadline)
  while true do
    if #s.buf > s.maxline then
      s.buf = ""
      return nil, "too long"
    end
    local ok, err = fill(s, deadline)
    if not ok then
      if err ~= "closed" then return fail(s, err) end
      local buf = s.buf
      s.buf = ""
      return buf
    end
  end
end

-- receive("*l") a line without its end (LF or CRLF), "*a" all until the peer closes, or
-- n bytes; prefix is put before the result. On failure: nil, why ("closed", "timeout",
-- "line too long", a system message) and the partial data, as LuaSocket.
function Stream:receive(pattern, prefix)
  pattern = pattern or "*l"
  local deadline = self.timeout and now() + self.timeout
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
  local deadline = self.timeout and now() + self.timeout
  local from = 1
  while true do
    local buf = self.buf
    local i, j = find(buf, delimiter, from, true)
    if i then
      self.buf = sub(buf, j + 1)
      if i - 1 > max then return nil, "too long" end
      return sub(buf, 1, i - 1)
    end
    if #buf > max + #delimiter - 1 then
      self.buf = ""
      return nil, "too long"
    end
    from = math.max(1, #buf - #delimiter + 2)
    local ok, err = fill(self, deadline)
    if not ok then return fail(self, err) end
  end
end

-- What has come (at most max bytes, default 65536), waiting only if nothing has.
function Stream:receiveany(max)
  local buf = self.buf
  if buf == "" then
    local deadline = self.timeout and now() + self.timeout
    repeat -- a read may bring only the discarded end of a line too long
      local ok, err = fill(self, deadline)
      if not ok then return nil, err end
      buf = self.buf
    until buf ~= ""
  end
  max = max or CHUNK
  if #buf <= max then
    self.buf = ""
    return buf
  end
  self.buf = sub(buf, max + 1)
  return sub(buf, 1, max)
end

-- Buffers data for sending (the host sends it as the peer takes it), first waiting while
-- the output buffered is over the high water. Returns #data, or nil, why and 0.
function Stream:send(data)
  local sock = self.sock
  if self.closed or fileno(sock) < 0 then return nil, "closed", 0 end
  if pending(sock) > self.high then
    local deadline = self.timeout and now() + self.timeout
    repeat
      local why = wait(self, "drainer", nil, left(deadline))
      if why ~= "ready" then return nil, why, 0 end
      if not is_open(self) then return nil, "closed", 0 end
    until pending(sock) <= self.high
  end
  local left_over, err = write(sock, data)
  if not left_over then return nil, err, 0 end
  return #data
end

task.Stream = Stream -- for getmetatable checks
return task
