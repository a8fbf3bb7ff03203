-- chatclient.lua: a line-oriented test client for scripts/chat.lua: non-blocking luahost
-- sockets, every server line decoded with cjson, every wait bounded by a deadline that
-- fails with a message naming the client, what it waited for and what it got instead.
local luahost = require "luahost"
local cjson = require "cjson"

local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local now = luahost.now

local M = {}

M.TIMEOUT = 3 -- default seconds for one wait

local Client = {}
Client.__index = Client

-- A short, printable form of a message (or of any value) for failure messages.
local function show(value)
  if type(value) ~= "table" then return tostring(value) end
  local ok, text = pcall(cjson.encode, value)
  return ok and text or tostring(value)
end
M.show = show

-- Waits until sock is ready for events or the deadline passes; returns the mask or nil.
local function wait_ready(self, events, deadline)
  local left = deadline - now()
  if left <= 0 then return nil end
  self.sel:register(self.sock, events)
  local ready = 0
  for _, mask in self.sel:select(left) do ready = ready | mask end
  self.sel:unregister(self.sock)
  return ready ~= 0 and ready or nil
end

-- Connects to host:port as `label` (used in failure messages) and waits, bounded, until
-- the connection is made. opts.rcvbuf sets SO_RCVBUF before connecting.
function M.connect(host, port, label, opts)
  opts = opts or {}
  local sock = assert(luahost.socket("inet", "stream"))
  if opts.rcvbuf then assert(sock:setsockopt("rcvbuf", opts.rcvbuf)) end
  assert(sock:setblocking(false))
  local rc = sock:connect_ex(host, port)
  if rc ~= 0 and rc ~= 115 then -- 115: EINPROGRESS
    sock:close()
    error(string.format("%s: connect %s:%d failed (errno %d)", label, host, port, rc), 2)
  end
  local self = setmetatable({sock = sock, sel = luahost.new_selector(), label = label,
    partial = "", queue = {}, seen = {}, eof = false}, Client)
  if not wait_ready(self, WRITE, now() + (opts.timeout or M.TIMEOUT))
      or not sock:getpeername() then
    self:close()
    error(string.format("%s: could not connect to %s:%d", label, host, port), 2)
  end
  return self
end

-- Sends all of data within timeout seconds, or raises.
function Client:send(data, timeout)
  local deadline = now() + (timeout or M.TIMEOUT)
  local sent = 0
  while sent < #data do
    local n, err = self.sock:send(data:sub(sent + 1))
    if n then
      sent = sent + n
    elseif err ~= "wouldblock" then
      error(string.format("%s: send failed (%s) after %d of %d bytes", self.label, err, sent,
        #data), 2)
    elseif not wait_ready(self, WRITE, deadline) then
      error(string.format("%s: send timed out after %d of %d bytes", self.label, sent, #data), 2)
    end
  end
end

function Client:say(text)
  self:send(text .. "\n")
end

function Client:send_json(msg)
  self:send(cjson.encode(msg) .. "\n")
end

-- Splits received bytes into lines and decodes each; a line that is not JSON raises.
function Client:feed(data)
  local buf = self.partial .. data
  local start = 1
  while true do
    local nl = buf:find("\n", start, true)
    if not nl then break end
    local line = buf:sub(start, nl - 1)
    start = nl + 1
    local ok, msg = pcall(cjson.decode, line)
    if not ok or type(msg) ~= "table" then
      error(string.format("%s: the server sent a line that is not a JSON object: %q",
        self.label, line), 0)
    end
    self.queue[#self.queue + 1] = msg
  end
  self.partial = buf:sub(start)
end

-- Reads what has arrived, waiting up to the deadline for something. Returns true if
-- bytes came (or EOF), false at the deadline. Raises on a receive error other than reset.
function Client:pump(deadline)
  while true do
    local data, err = self.sock:recv(65536)
    if data == "" then
      self.eof = true
      return true
    elseif data then
      self:feed(data)
      return true
    elseif err ~= "wouldblock" then
      self.eof, self.reset = true, err
      return true
    end
    if not deadline or not wait_ready(self, READ, deadline) then return false end
  end
end

-- The next message, waiting up to timeout seconds; raises naming what was awaited.
function Client:next(what, timeout)
  local deadline = now() + (timeout or M.TIMEOUT)
  while #self.queue == 0 do
    if self.eof then
      error(string.format("%s: connection closed (%s) while waiting for %s; got before: %s",
        self.label, self.reset or "EOF", what or "a message", show(self.seen)), 2)
    end
    if not self:pump(deadline) and now() >= deadline then
      error(string.format("%s: no message within %g s while waiting for %s; unparsed: %q",
        self.label, timeout or M.TIMEOUT, what or "a message", self.partial), 2)
    end
  end
  local msg = table.remove(self.queue, 1)
  self.seen[#self.seen + 1] = msg
  if #self.seen > 20 then table.remove(self.seen, 1) end
  return msg
end

-- True if every field of want is equal in msg (arrays compared element by element).
local function matches(want, msg)
  for k, v in pairs(want) do
    if type(v) == "table" then
      if type(msg[k]) ~= "table" or #msg[k] ~= #v then return false end
      for i = 1, #v do
        if msg[k][i] ~= v[i] then return false end
      end
    elseif msg[k] ~= v then
      return false
    end
  end
  return true
end
M.matches = matches

-- The next message must have the fields of want; returns it, or raises with both.
function Client:expect(want, timeout)
  local msg = self:next(show(want), timeout)
  if not matches(want, msg) then
    error(string.format("%s: expected %s, got %s", self.label, show(want), show(msg)), 2)
  end
  return msg
end

-- Skips messages until one has the fields of want (bounded); returns it and the skipped.
function Client:expect_eventually(want, timeout)
  local deadline = now() + (timeout or M.TIMEOUT)
  local skipped = {}
  while true do
    local left = deadline - now()
    local ok, msg = pcall(self.next, self, show(want), math.max(left, 0.001))
    if not ok then
      error(string.format("%s (skipped %d: %s)", msg, #skipped, show(skipped)), 2)
    end
    if matches(want, msg) then return msg, skipped end
    skipped[#skipped + 1] = msg
  end
end

-- Asks the server for `who` and returns the names. Since the server handles one client's
-- lines in order, every message it meant for this client before the request has been
-- queued before the reply: the messages skipped on the way are returned too.
function Client:who(timeout)
  self:send("/who\n")
  local msg, skipped = self:expect_eventually({type = "who"}, timeout)
  return msg.names, skipped
end

-- Reads until the server closes the connection (bounded); returns the messages that came
-- first and "eof" or the reset message.
function Client:expect_closed(timeout)
  local deadline = now() + (timeout or M.TIMEOUT)
  local got = {}
  while true do
    while #self.queue > 0 do got[#got + 1] = table.remove(self.queue, 1) end
    if self.eof then return got, self.reset or "eof" end
    if not self:pump(deadline) and now() >= deadline then
      error(string.format("%s: still connected %g s later; got meanwhile: %s", self.label,
        timeout or M.TIMEOUT, show(got)), 2)
    end
  end
end

-- Asserts that nothing is queued or readable right now (after the caller synchronized).
function Client:expect_nothing_queued()
  self:pump(nil)
  if #self.queue > 0 then
    error(string.format("%s: unexpected message %s", self.label, show(self.queue[1])), 2)
  end
end

function Client:close()
  if self.sock then self.sock:close() end
  if self.sel then self.sel:close() end
  self.sock, self.sel = nil, nil
end

-- Connects n clients, each reading its welcome; the others read the joins. Returns the
-- list; clients are labelled with the given labels (or c1, c2, ...). `into` collects
-- every client so that an after_each can close them even when a test failed.
function M.connect_all(host, port, labels, into)
  local clients = {}
  for i, label in ipairs(labels) do
    local c = M.connect(host, port, label)
    if into then into[#into + 1] = c end
    local welcome = c:expect({type = "welcome"})
    c.name = welcome.name
    for j = 1, i - 1 do clients[j]:expect({type = "join", name = c.name}) end
    clients[i] = c
  end
  return clients
end

return M
