-- client.lua: test clients built on the luahost module itself: non-blocking sockets and
-- a private selector, every wait bounded by a deadline that fails with a clear message.
-- Conn is one connection used step by step; echo_many drives many at once.
local luahost = require "luahost"

local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE

local M = {}

M.TIMEOUT = 5 -- default seconds for one wait

local now = luahost.now

-- Bytes from math.random: seed it first (math.randomseed) for a repeatable stream.
function M.random_bytes(n)
  local parts = {}
  for i = 1, n // 8 do parts[i] = string.pack("<i8", math.random(0)) end
  local tail = {}
  for i = 1, n % 8 do tail[i] = string.char(math.random(0, 255)) end
  return table.concat(parts) .. table.concat(tail)
end

-- Sizes between lo and hi (the last one smaller) that add up to total.
function M.random_chunks(total, lo, hi)
  local sizes, left = {}, total
  while left > 0 do
    local size = math.min(left, math.random(lo, hi))
    sizes[#sizes + 1] = size
    left = left - size
  end
  return sizes
end

local Conn = {}
Conn.__index = Conn

-- A non-blocking socket with a small receive buffer, connecting to host:port: a client
-- that reads slowly, so that the server's replies back up.
local function connect_small_rcvbuf(host, port, rcvbuf)
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

-- Connects to host:port and waits (bounded) until the connection is established.
-- opts.rcvbuf sets a receive buffer size before connecting. Returns a Conn, or nil and
-- a message.
function M.connect(host, port, timeout, opts)
  local sock, err
  if opts and opts.rcvbuf then
    sock, err = connect_small_rcvbuf(host, port, opts.rcvbuf)
  else
    sock, err = luahost.connect(host, port)
  end
  if not sock then return nil, string.format("connect %s:%s: %s", host, port, err) end
  local c = setmetatable({sock = sock, sel = luahost.new_selector(), host = host, port = port},
    Conn)
  local ok, why = c:wait(WRITE, now() + (timeout or M.TIMEOUT))
  if not ok then
    c:close()
    return nil, string.format("connect %s:%s: %s", host, port, why)
  end
  if not sock:getpeername() then
    -- Writable but not connected: the connect failed; recv reports why.
    local _, message = sock:recv(1)
    c:close()
    return nil, string.format("connect %s:%s: %s", host, port, message or "failed")
  end
  return c
end

-- Waits until the socket is ready for events, or the deadline passes.
function Conn:wait(events, deadline)
  local left = deadline - now()
  if left <= 0 then return nil, "timeout" end
  self.sel:register(self.sock, events)
  local ready = 0
  for _, mask in self.sel:select(left) do ready = ready | mask end
  self.sel:unregister(self.sock)
  if ready == 0 then return nil, "timeout" end
  return ready
end

function Conn:local_port()
  local _, port = self.sock:getsockname()
  return port
end

-- Sends all of data. Returns true, or nil and a message.
function Conn:send_all(data, timeout)
  local deadline = now() + (timeout or M.TIMEOUT)
  local sent = 0
  while sent < #data do
    local n, err = self.sock:send(data:sub(sent + 1))
    if n then
      sent = sent + n
    elseif err == "wouldblock" then
      if not self:wait(WRITE, deadline) then
        return nil, string.format("send: timeout with %d of %d bytes sent", sent, #data)
      end
    else
      return nil, string.format("send: %s after %d of %d bytes", err, sent, #data)
    end
  end
  return true
end

-- Sends data over and over until the peer stops taking it (send would block for settle
-- seconds) or limit bytes are sent. Returns the bytes sent, or nil and a message.
function Conn:send_until_blocked(limit, settle)
  local chunk = string.rep("x", 65536)
  local sent = 0
  while sent < limit do
    local n, err = self.sock:send(chunk:sub(1, limit - sent))
    if n then
      sent = sent + n
    elseif err ~= "wouldblock" then
      return nil, string.format("send: %s after %d bytes", err, sent)
    elseif not self:wait(WRITE, now() + (settle or 0.2)) then
      break
    end
  end
  return sent
end

-- Reads until n bytes have come (or EOF if n is nil). Returns the data and "eof" or
-- "complete"; or nil, a message, and what had come so far.
function Conn:recv_until(n, timeout)
  local deadline = now() + (timeout or M.TIMEOUT)
  local parts, got = {}, 0
  while n == nil or got < n do
    local data, err = self.sock:recv(65536)
    if data == "" then
      if n == nil then return table.concat(parts), "eof" end
      return nil, string.format("EOF after %d of %d bytes", got, n), table.concat(parts)
    elseif data then
      parts[#parts + 1] = data
      got = got + #data
    elseif err == "wouldblock" then
      if not self:wait(READ, deadline) then
        return nil, string.format("recv: timeout after %g s with %d of %s bytes",
          timeout or M.TIMEOUT, got, n or "(until EOF)"), table.concat(parts)
      end
    else
      return nil, string.format("recv: %s after %d bytes", err, got), table.concat(parts)
    end
  end
  return table.concat(parts), "complete"
end

function Conn:recv_exact(n, timeout)
  return self:recv_until(n, timeout)
end

function Conn:recv_all(timeout)
  return self:recv_until(nil, timeout)
end

-- Sends data and reads as much back, both at once so that neither side's buffers fill.
-- Returns what came back, or nil, a message and the part that came.
function Conn:echo(data, timeout)
  local deadline = now() + (timeout or M.TIMEOUT)
  local sent, parts, got = 0, {}, 0
  while got < #data do
    local events = READ | (sent < #data and WRITE or 0)
    local ready, why = self:wait(events, deadline)
    if not ready then
      return nil, string.format("echo: %s with %d sent and %d of %d back", why, sent, got, #data),
        table.concat(parts)
    end
    if ready & WRITE ~= 0 then
      local n, err = self.sock:send(data:sub(sent + 1, sent + 65536))
      if n then
        sent = sent + n
      elseif err ~= "wouldblock" then
        return nil, "echo: send: " .. err, table.concat(parts)
      end
    end
    if ready & READ ~= 0 then
      local chunk, err = self.sock:recv(65536)
      if chunk == "" then
        return nil, string.format("echo: EOF after %d of %d bytes", got, #data),
          table.concat(parts)
      elseif chunk then
        parts[#parts + 1] = chunk
        got = got + #chunk
      elseif err ~= "wouldblock" then
        return nil, "echo: recv: " .. err, table.concat(parts)
      end
    end
  end
  return table.concat(parts)
end

-- Waits for the peer to close: returns "eof" or "reset" (with the message), or nil and
-- "timeout". Data that arrives first is skipped and returned third.
function Conn:wait_closed(timeout)
  local data, why, partial = self:recv_until(nil, timeout)
  if data then return "eof", nil, data end
  if why:find("timeout", 1, true) then return nil, "timeout", partial end
  return "reset", why, partial
end

function Conn:shutdown(how)
  return self.sock:shutdown(how)
end

function Conn:close()
  if self.sock then self.sock:close() end
  if self.sel then self.sel:close() end
  self.sock, self.sel = nil, nil
end

-- Runs many echo clients at once over one selector. Each job: payload (the bytes to
-- send), chunks (send sizes; default all at once), shutdown (shut the write side after
-- sending, then read to EOF). opts: timeout (for everything), stall (give up when no
-- byte moved for this long, default 3 s), backend (the client's selector). Returns a
-- list of results, one per job: received (the bytes that came back), eof (EOF was seen),
-- error (a message, or nil), port (the client's own port).
function M.echo_many(host, port, jobs, opts)
  opts = opts or {}
  local timeout, stall = opts.timeout or 20, opts.stall or 3
  local deadline = now() + timeout
  local last_progress = now()
  local sel = luahost.new_selector(opts.backend)
  local results, open = {}, 0

  local function finish(st, message)
    st.result.error = st.result.error or message
    st.result.received = table.concat(st.parts)
    if sel:get_key(st.sock) then sel:unregister(st.sock) end
    st.sock:close()
    st.done = true
    open = open - 1
  end

  for i, job in ipairs(jobs) do
    local result = {received = "", eof = false}
    results[i] = result
    local sock, err = luahost.connect(host, port)
    if not sock then
      result.error = "connect: " .. tostring(err)
    else
      local st = {sock = sock, job = job, result = result, sent = 0, chunk = 1, parts = {},
        got = 0, chunks = job.chunks or {#job.payload}}
      result.port = select(2, sock:getsockname())
      sel:register(sock, READ | WRITE, st)
      open = open + 1
    end
  end

  local function on_write(st)
    local job = st.job
    if st.sent < #job.payload then
      local size = st.chunks[st.chunk]
      local n, err = st.sock:send(job.payload:sub(st.sent + 1, st.sent + size))
      if n then
        st.sent = st.sent + n
        last_progress = now()
        if n < size then
          st.chunks[st.chunk] = size - n -- the rest of this chunk goes next time
        else
          st.chunk = st.chunk + 1
        end
      elseif err ~= "wouldblock" then
        return finish(st, string.format("send: %s after %d bytes", err, st.sent))
      end
    end
    if st.sent == #job.payload then
      if job.shutdown then
        local ok, err = st.sock:shutdown("w")
        if not ok then return finish(st, "shutdown: " .. tostring(err)) end
      end
      sel:modify(st.sock, READ, st)
    end
  end

  local function on_read(st)
    local data, err = st.sock:recv(65536)
    if data == "" then
      st.result.eof = true
      if st.got < #st.job.payload then
        return finish(st, string.format("EOF after %d of %d bytes", st.got, #st.job.payload))
      end
      return finish(st)
    elseif data then
      st.parts[#st.parts + 1] = data
      st.got = st.got + #data
      last_progress = now()
      if st.got > #st.job.payload then
        return finish(st, string.format("got %d bytes, more than the %d sent", st.got,
          #st.job.payload))
      end
      if st.got == #st.job.payload and not st.job.shutdown then return finish(st) end
    elseif err ~= "wouldblock" then
      return finish(st, string.format("recv: %s after %d bytes", err, st.got))
    end
  end

  local why = string.format("timeout after %g s", timeout)
  while open > 0 do
    local left = deadline - now()
    if left <= 0 then break end
    if now() - last_progress > stall then
      why = string.format("stalled: no byte moved for %g s", stall)
      break
    end
    for key, mask in sel:select(math.min(left, 0.5)) do
      local st = key.data
      if not st.done and mask & WRITE ~= 0 then on_write(st) end
      if not st.done and mask & READ ~= 0 then on_read(st) end
    end
  end
  for _, key in pairs(sel:get_map()) do
    local st = key.data
    finish(st, string.format("%s: sent %d, got %d of %d bytes%s", why, st.sent, st.got,
      #st.job.payload, st.job.shutdown and " (waiting for EOF)" or ""))
  end
  sel:close()
  return results
end

-- Opens n connections to host:port, batch at a time (so that the listen backlog never
-- overflows into SYN retries), each batch waited for until connected. Returns the list
-- of sockets, or nil and a message (the sockets opened so far are closed).
function M.open_many(host, port, n, opts)
  opts = opts or {}
  local batch, deadline = opts.batch or 100, now() + (opts.timeout or 20)
  local socks, sel = {}, luahost.new_selector()
  local function fail(message)
    sel:close()
    for _, sock in ipairs(socks) do sock:close() end
    return nil, message
  end
  while #socks < n do
    local waiting = 0
    for _ = 1, math.min(batch, n - #socks) do
      local sock, err = luahost.connect(host, port)
      if not sock then return fail(string.format("connection %d: %s", #socks + 1, err)) end
      socks[#socks + 1] = sock
      sel:register(sock, WRITE)
      waiting = waiting + 1
    end
    while waiting > 0 do
      local left = deadline - now()
      if left <= 0 then
        return fail(string.format("timeout with %d of %d connected", #socks - waiting, n))
      end
      for key in sel:select(left) do
        if not key.fileobj:getpeername() then
          return fail("a connection failed: " .. tostring(select(2, key.fileobj:recv(1))))
        end
        sel:unregister(key.fileobj)
        waiting = waiting - 1
      end
    end
  end
  sel:close()
  return socks
end

-- Sends data on every socket and waits (bounded by timeout) for each to echo it or be
-- closed by the server. Returns a table of outcomes, one per socket: "echoed", "closed"
-- (EOF or reset), "wrong" (other bytes came back) or "timeout".
function M.echo_each(socks, data, timeout)
  local deadline = now() + (timeout or 5)
  local sel, outcomes, open = luahost.new_selector(), {}, 0
  for i, sock in ipairs(socks) do
    local n, err = sock:send(data) -- a few bytes: the socket buffer takes them at once
    if n == #data then
      sel:register(sock, READ, {index = i, got = ""})
      open = open + 1
    else
      outcomes[i] = (n or err == "wouldblock") and "timeout" or "closed"
    end
  end
  while open > 0 and now() < deadline do
    for key in sel:select(deadline - now()) do
      local st = key.data
      local chunk, err = key.fileobj:recv(65536)
      local outcome
      if chunk == "" or (chunk == nil and err ~= "wouldblock") then
        outcome = "closed"
      elseif chunk then
        st.got = st.got .. chunk
        if #st.got >= #data then outcome = st.got == data and "echoed" or "wrong" end
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
  return outcomes
end

return M
