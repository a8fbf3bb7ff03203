-- luahost/redis.lua: a Redis client on the host's selector. Commands are pipelined on one
-- connection, their replies handed to callbacks in order (or, inside a luahost.task task,
-- returned); subscriptions have a connection of their own. Both reconnect with backoff,
-- and the subscriptions are made again. RESP is hiredis's, through luahost.resp; nothing
-- here blocks the loop. See docs/api.md.
local luahost = require "luahost"
local task = require "luahost.task"

local resp = luahost.resp
local format = resp.format
local sel, READ, WRITE = luahost.selector, luahost.EVENT_READ, luahost.EVENT_WRITE
local log = luahost.log

local redis = {}

local DEFAULTS = {
  connect_timeout = 2, -- seconds a connection attempt may take
  queue = 1000,        -- commands that may wait while a connection attempt is under way
  min_backoff = 0.05,  -- seconds before the first retry; doubled after each failure
  max_backoff = 2,     -- ... up to this
  max_reply = 64 * 1024 * 1024, -- bytes one reply may take as it arrives
}

-- Calls fn(...) and logs an error it raises, with its traceback: a user's callback that
-- fails must not take the connection down with it (the host would reset the socket whose
-- callback raised).
local function call_logged(what, fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then log("error", "luahost.redis: error in " .. what .. ": " .. tostring(err)) end
end

---------------------------------------------------------------------------------------
-- A connection: one socket at a time, and the callbacks of the replies it awaits, in order.

local Conn = {}
Conn.__index = Conn

-- hooks: on_ready(conn) once a connection is up; on_down(conn, why) once an outage starts
-- (not at every failed retry); push(value, err) for replies no command awaits (pub/sub).
local function new_conn(host, port, opts, hooks)
  return setmetatable({host = host, port = port, opts = opts, hooks = hooks,
    state = "down", sock = false, reader = false, timer = false, why = "not connected yet",
    awaiting = {}, head = 1, tail = 0, queued = {}, backoff = opts.min_backoff,
    reported = false}, Conn)
end

function Conn:address()
  return (self.host:find(":", 1, true) and "[" .. self.host .. "]" or self.host) .. ":" .. self.port
end

-- Sends bytes on the connection that is up; cb (or nil) gets the reply.
function Conn:write(bytes, cb)
  if cb then
    self.tail = self.tail + 1
    self.awaiting[self.tail] = cb
  end
  local left, err = self.sock:write(bytes)
  if not left then self:lost("write failed: " .. tostring(err)) end
end

-- Sends a command's bytes; cb(reply, err) gets its reply. Up: sent now (pipelined).
-- Connecting: it waits, queue allowing, to be sent once the connection is up. Down or
-- the queue full: cb(nil, why) at once.
function Conn:send(bytes, cb)
  local state = self.state
  if state == "ready" then return self:write(bytes, cb) end
  if state == "connecting" and #self.queued < self.opts.queue then
    self.queued[#self.queued + 1] = {bytes, cb or false}
    return
  end
  local why = state == "connecting" and "queue full while connecting"
    or "not connected: " .. self.why
  if cb then cb(nil, why) end
end

-- The next reply goes to the oldest command awaiting one, else to the push hook.
function Conn:deliver(value, err)
  local head = self.head
  if head <= self.tail then
    local cb = self.awaiting[head]
    self.awaiting[head] = nil
    self.head = head + 1
    return call_logged("a reply's callback", cb, value, err)
  end
  local push = self.hooks.push
  if push then return call_logged("a message's callback", push, value, err) end
end

function Conn:on_readable(sock)
  local data, err = sock:recv(65536)
  if data == nil then
    if err ~= "wouldblock" then self:lost(tostring(err)) end
    return
  end
  if data == "" then return self:lost("closed by the server") end
  local reader = self.reader
  reader:feed(data)
  while self.sock == sock do -- a callback may close or lose the connection
    local got, value, message = reader:get()
    if got == false then return self:check_partial(reader) end
    if got == nil then return self:lost(value) end -- not RESP: the stream is lost
    self:deliver(value, message)
  end
end

-- A reply that is still coming is held whole in memory: past max_reply bytes the
-- connection is dropped, so a Redis (or something else on its port) that sends one
-- without end cannot take all the memory.
function Conn:check_partial(reader)
  local limit = self.opts.max_reply
  if reader:partial() > limit then
    self:lost("a reply longer than max_reply (" .. limit .. " bytes)")
  end
end

-- The connection is up: AUTH and SELECT go first, then what waited, then the hook's.
function Conn:up(sock)
  if self.timer then self.timer:cancel() end
  self.timer = false
  sel:modify(sock, READ, function() self:on_readable(sock) end)
  self.state, self.backoff, self.reported = "ready", self.opts.min_backoff, false
  local function check(what)
    return function(_, err)
      if err then self:lost(what .. " refused: " .. err) end
    end
  end
  if self.opts.password then self:write(format({"AUTH", self.opts.password}), check("AUTH")) end
  if self.opts.db then self:write(format({"SELECT", self.opts.db}), check("SELECT")) end
  local queued = self.queued
  self.queued = {}
  for _, q in ipairs(queued) do
    if self.state == "ready" then
      self:write(q[1], q[2] or nil)
    elseif q[2] then
      call_logged("a reply's callback", q[2], nil, "connection lost: " .. self.why)
    end
  end
  if self.state == "ready" and self.hooks.on_ready then
    call_logged("on_connect", self.hooks.on_ready, self)
  end
end

-- The socket became writable: connected, or failed (recv then says why).
function Conn:on_connect(sock)
  if sock:getpeername() then return self:up(sock) end
  local _, message = sock:recv(1)
  self:lost(message or "connect failed")
end

function Conn:open()
  self.state = "connecting"
  local sock, err = luahost.connect(self.host, self.port)
  if not sock then return self:lost(tostring(err)) end
  self.sock, self.reader = sock, resp.reader()
  sel:register(sock, WRITE, function() self:on_connect(sock) end)
  self.timer = luahost.after(self.opts.connect_timeout, function()
    self.timer = false
    self:lost("connect timed out")
  end)
end

-- Ends the socket and fails every callback awaiting a reply (whether Redis ran those
-- commands is not known). Unless closed for good, tries again after the backoff.
function Conn:lost(why, final)
  if self.state == "closed" then return end
  local sock = self.sock
  self.sock, self.reader, self.why = false, false, why
  self.state = final and "closed" or "down"
  if sock then sock:abort() end -- what it still had to send is dropped with it
  if self.timer then self.timer:cancel() end
  self.timer = false
  local awaiting, head, tail, queued = self.awaiting, self.head, self.tail, self.queued
  self.awaiting, self.head, self.tail, self.queued = {}, 1, 0, {}
  local message = (final and "" or "connection lost: ") .. why
  for i = head, tail do call_logged("a reply's callback", awaiting[i], nil, message) end
  for _, q in ipairs(queued) do
    if q[2] then call_logged("a reply's callback", q[2], nil, message) end
  end
  if final then return end
  if not self.reported then
    self.reported = true
    if self.hooks.on_down then call_logged("on_disconnect", self.hooks.on_down, self, why) end
  end
  if self.state ~= "down" then return end -- a hook closed it, or made it anew
  self.timer = luahost.after(self.backoff, function()
    self.timer = false
    self:open()
  end)
  self.backoff = math.min(self.backoff * 2, self.opts.max_backoff)
end

---------------------------------------------------------------------------------------
-- The client

local Client = {}
Client.__index = Client

-- redis.connect(host, port[, opts]): a client that connects now and whenever its
-- connection is lost. opts: password, db, connect_timeout, queue, min_backoff,
-- max_backoff, max_reply, on_connect(r), on_disconnect(r, why).
function redis.connect(host, port, opts)
  assert(type(host) == "string", "redis.connect: a host string expected")
  port = assert(math.tointeger(port), "redis.connect: an integer port expected")
  local o = {}
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  local r = setmetatable({host = host, port = port, opts = o, subs = {}, sub = false}, Client)
  r.cmd = new_conn(host, port, o, { -- o's hooks read at each call: r:set_hooks changes them
    on_ready = function() if o.on_connect then o.on_connect(r) end end,
    on_down = function(_, why) if o.on_disconnect then o.on_disconnect(r, why) end end,
  })
  r.cmd:open()
  return r
end

local function ignore() end

-- r:call({"SET", "k", "v"}, callback): callback(reply) or callback(nil, message). With no
-- callback inside a task: waits and returns the reply (or nil, message); elsewhere the
-- reply is dropped, by a callback that ignores it: replies are matched to callbacks by
-- their order, so every command must take its place in the line.
function Client:call(command, callback)
  local bytes = format(command)
  if callback == nil and task.current() then
    return task.await(function(done) self.cmd:send(bytes, done) end)
  end
  assert(callback == nil or type(callback) == "function", "r:call: a function expected")
  self.cmd:send(bytes, callback or ignore)
end

function Client:publish(channel, message, callback)
  return self:call({"PUBLISH", channel, message}, callback)
end

-- r:set_hooks{on_connect = fn, on_disconnect = fn}: replaces both (nil: none), so that a
-- script's next version (after a reload) can keep the client, and with it its
-- subscriptions, rather than make one whose subscriptions start late.
function Client:set_hooks(hooks)
  self.opts.on_connect, self.opts.on_disconnect = hooks.on_connect, hooks.on_disconnect
end

-- Whether the command connection is up.
function Client:connected()
  return self.cmd.state == "ready"
end

local function on_push(r, value)
  if type(value) ~= "table" or value[1] ~= "message" then return end -- confirmations
  local fn = r.subs[value[2]]
  if fn then fn(value[3], value[2]) end
end

-- r:subscribe(channel, fn): fn(message, channel) for each message published on channel,
-- on a connection of the client's own that subscribes again after each reconnect.
function Client:subscribe(channel, fn)
  assert(type(channel) == "string", "r:subscribe: a channel name expected")
  assert(type(fn) == "function", "r:subscribe: a function expected")
  self.subs[channel] = fn
  if not self.sub then
    self.sub = new_conn(self.host, self.port, self.opts, {
      push = function(value) on_push(self, value) end,
      on_ready = function(conn)
        local command = {"SUBSCRIBE"}
        for name in pairs(self.subs) do command[#command + 1] = name end
        if #command > 1 then conn:write(format(command)) end
      end,
    })
    self.sub:open()
  elseif self.sub.state == "ready" then
    self.sub:write(format({"SUBSCRIBE", channel}))
  end
end

function Client:unsubscribe(channel)
  if self.subs[channel] == nil then return end
  self.subs[channel] = nil
  if self.sub and self.sub.state == "ready" then
    self.sub:write(format({"UNSUBSCRIBE", channel}))
  end
end

-- Closes both connections for good; commands awaiting replies get nil, "closed".
function Client:close()
  self.cmd:lost("closed", true)
  if self.sub then self.sub:lost("closed", true) end
end

redis.Client = Client -- for getmetatable checks
return redis
