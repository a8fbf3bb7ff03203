-- chat.lua: a newline-delimited chat server. Every message it sends is one JSON object
-- on one line; clients may send JSON objects or plain text, so `nc` works as a client.
--
-- Usage: luahost scripts/chat.lua [[HOST:]PORT] [--idle-timeout SECONDS] [--max-line BYTES]
--                                  [--redis HOST:PORT [--name-ttl SECONDS]]
--                                  [--tls-cert FILE --tls-key FILE]
--        (default 127.0.0.1:12345, idle timeout 300 s, max line 65536 bytes; with a
--        certificate and its key, clients connect over TLS)
-- A client that sends no complete line for the idle timeout is closed; bytes of a line
-- that does not end do not count.
--
-- A line starting with "{" or "[" is JSON and must be an object:
--   {"type":"say","text":"..."}  {"type":"nick","name":"..."}  {"type":"who"}
-- Any other line is plain text: "/nick NAME", "/who", or else something to say.
--
-- With --redis, every chat server on that Redis is one chat (luahost.redis, found on
-- LUA_PATH): each server publishes its events on one channel, in order, and relays the
-- others'; Redis owns the names (a key per name, owned by one server, with a TTL of
-- --name-ttl seconds, default 30, that the owner refreshes). With Redis away each server
-- chats locally and rejoins when it returns. docs/scaling.md says what is guaranteed.
local luahost = require "luahost"
local cjson = require "cjson.safe"

local sel, READ = luahost.selector, luahost.EVENT_READ
local USAGE = "usage: luahost scripts/chat.lua [[HOST:]PORT] [--idle-timeout SECONDS]"
  .. " [--max-line BYTES] [--redis HOST:PORT [--name-ttl SECONDS]]"
  .. " [--tls-cert FILE --tls-key FILE]"

local function parse_args(args)
  local opts = { host = "127.0.0.1", port = 12345, idle_timeout = 300, max_line = 65536,
                 name_ttl = 30 }
  local i = 1
  while args[i] do
    local a = args[i]
    if a == "--idle-timeout" or a == "--max-line" or a == "--name-ttl" then
      local v = tonumber(args[i + 1])
      if not v or v <= 0 then error(a .. " needs a positive number; " .. USAGE, 0) end
      if a == "--idle-timeout" then
        opts.idle_timeout = v
      elseif a == "--max-line" then
        opts.max_line = math.floor(v)
      else
        opts.name_ttl = v
      end
      i = i + 2
    elseif a == "--redis" then
      local host, port = (args[i + 1] or ""):match("^%[?([^%]]*)%]?:(%d+)$")
      if not host then error("--redis needs HOST:PORT; " .. USAGE, 0) end
      opts.redis = { host = host, port = tonumber(port) }
      i = i + 2
    elseif a == "--tls-cert" or a == "--tls-key" then
      if not args[i + 1] then error(a .. " needs a file; " .. USAGE, 0) end
      opts[a == "--tls-cert" and "cert" or "key"] = args[i + 1]
      i = i + 2
    elseif a:sub(1, 1) == "-" then
      error("unknown option " .. a .. "; " .. USAGE, 0)
    else
      local host, port = luahost.parse_address(a, opts.host, opts.port)
      if not host then error(port .. "; " .. USAGE, 0) end
      opts.host, opts.port = host, port
      i = i + 1
    end
  end
  if (opts.cert == nil) ~= (opts.key == nil) then
    error("--tls-cert and --tls-key go together; " .. USAGE, 0)
  end
  return opts
end

local opts = parse_args(arg)

-- What must outlive a reload lives in one global table: when this file is loaded anew
-- (SIGHUP, or luahost.reload), the new code finds the connected clients there.
CHAT = CHAT or { clients = {}, by_name = {}, guests = 0 }
-- conn -> { conn, name, pieces (of a partial line), held (its bytes), discarding,
--          last_active (when its last complete line came), gone }
local clients = CHAT.clients
local by_name = CHAT.by_name -- name -> client
-- The connections as a group: one write reaches them all, walked in C. An older version
-- of this script kept them in a sequence, or only in `clients`: a reload from it builds
-- the group from `clients`.
if not CHAT.room then
  CHAT.room = luahost.group()
  for conn, client in pairs(clients) do
    CHAT.room:add(conn)
    client.slot = nil
  end
  CHAT.members = nil
end
local room = CHAT.room
-- An older version kept a partial line as one string, client.partial.
for _, client in pairs(clients) do
  if not client.pieces then
    local partial = client.partial
    client.pieces, client.held = { partial ~= "" and partial or nil }, #partial
    client.partial = nil
  end
end

local function encode(msg)
  return cjson.encode(msg) .. "\n"
end

local drop -- defined below; sending can fail and drop a client
-- With --redis: the other servers, through Redis (set up at the end of this file).
local fed

-- Sends an encoded line; a client whose output limit is exceeded is disconnected.
local function send_line(client, line)
  local pending, err = client.conn:write(line)
  if not pending then
    drop(client, err == "buffer full" and "slow consumer" or "write failed: " .. tostring(err))
  end
end

local function send(client, msg)
  send_line(client, encode(msg))
end

-- Drops the clients a group write failed to reach.
local function drop_failed(failed)
  for conn, err in pairs(failed or {}) do
    local client = clients[conn]
    if client then
      drop(client, err == "buffer full" and "slow consumer" or "write failed: " .. err)
    end
  end
end

-- Sends msg to every client but `except` (which may be nil), encoding it once; the
-- host writes it to every connection in one call. With --redis the other servers'
-- clients get it through Redis.
local function broadcast(msg, except)
  local line = encode(msg)
  local _, failed = room:write(line, except and except.conn)
  drop_failed(failed)
  if fed then fed.publish(line) end
end

drop = function(client, reason)
  if client.gone then return end
  client.gone = true
  room:remove(client.conn)
  clients[client.conn] = nil
  by_name[client.name] = nil
  client.conn:close() -- already closed when the host dropped a slow consumer: harmless
  if fed then fed.release(client.name) end
  luahost.log("info", client.name, "left:", reason)
  broadcast({ type = "leave", name = client.name, reason = reason })
end

local function reply_error(client, reason)
  send(client, { type = "error", reason = reason })
end

local function valid_name(name)
  return type(name) == "string" and #name >= 1 and #name <= 32
    and name:match("^[%w_%-]+$") ~= nil
end

-- Gives client a new name and tells everyone, client included (reason: why, if it did
-- not ask for it).
local function rename(client, name, reason)
  local old = client.name
  -- One at a time: a multiple assignment's order is not defined (Lua's is right to
  -- left), and renaming to one's own name would clear the new entry.
  by_name[old] = nil
  by_name[name] = client
  client.name = name
  broadcast({ type = "nick", from = old, name = name, reason = reason })
end

local function taken(client, name)
  return by_name[name] and by_name[name] ~= client
end

local handlers = {}

function handlers.say(client, msg)
  if type(msg.text) ~= "string" then return reply_error(client, "say needs a text string") end
  broadcast({ type = "say", from = client.name, text = msg.text }, client)
end

function handlers.nick(client, msg)
  local name = msg.name
  if not valid_name(name) then
    return reply_error(client, "a name is 1-32 letters, digits, '_' or '-'")
  end
  if taken(client, name) then return reply_error(client, "name " .. name .. " is taken") end
  if fed and fed.up and name ~= client.name then
    -- Redis decides; without its answer (down, or slow) this server does, and the name
    -- is registered when Redis answers again.
    return fed.ask(client, function(done) fed.claim_name(name, done) end, function(owned)
      if owned == 0 or taken(client, name) then
        return reply_error(client, "name " .. name .. " is taken")
      end
      local old = client.name
      rename(client, name)
      fed.release(old)
    end)
  end
  rename(client, name)
end

-- Sends client the names here and those (a list, or nil) Redis has for every server.
local function send_who(client, everywhere)
  local set, names = {}, {}
  for name in pairs(by_name) do set[name] = true end
  for _, name in ipairs(everywhere or {}) do set[name] = true end
  for name in pairs(set) do names[#names + 1] = name end
  if #names == 0 then -- lua-cjson encodes an empty table as an object, {}
    return send_line(client, '{"type":"who","names":[]}\n')
  end
  table.sort(names)
  send(client, { type = "who", names = names })
end

function handlers.who(client)
  if fed and fed.up then
    return fed.ask(client, fed.all_names, function(names) send_who(client, names) end)
  end
  send_who(client)
end

-- What kind of JSON value a message's type is, for a reply: never tostring of a client's
-- value, which for an object or null tells the client a heap address ("table: 0x55..").
-- cjson decodes {} and [] alike, so for an empty one the line itself is read: with
-- escapes and strings masked, nested values collapsed, the last "type" member wins, as
-- in cjson.
local EMPTY_KIND = { ["{"] = "object", ["["] = "array" }
local function kind_of_type(msg, line)
  local v = msg.type
  if v == cjson.null then return "null" end
  if type(v) == "string" then return 'string "' .. v .. '"' end
  if type(v) ~= "table" then return type(v) end -- number, boolean: JSON names them alike
  local key = next(v)
  if key ~= nil then return type(key) == "number" and "array" or "object" end
  local plain = line:gsub("\\.", "__") -- a backslash is in a string: keep each position
  plain = plain:gsub('()"[^"]*"()', function(i, j)
    return cjson.decode(line:sub(i, j - 1)) == "type" and '"type"' or '""'
  end)
  local body = plain:match("^%s*{(.*)}%s*$") or ""
  local c = body:gsub("%b{}", "{}"):gsub("%b[]", "[]"):match('.*"type"%s*:%s*(.)')
  return EMPTY_KIND[c] or "object or array"
end

-- One complete line (without its line ending) from a client.
local function handle_line(client, line)
  if line == "" then return end
  if not utf8.len(line) then return reply_error(client, "invalid UTF-8") end
  local first = line:match("^%s*(.)")
  local msg
  if first == "{" or first == "[" then
    msg = cjson.decode(line)
    if msg == nil then return reply_error(client, "malformed JSON") end
    if first ~= "{" then return reply_error(client, "expected a JSON object") end
  elseif line == "/who" then
    msg = { type = "who" }
  elseif line:match("^/nick%f[%s%z]") then
    msg = { type = "nick", name = line:match("^/nick%s+(%S+)%s*$") or "" }
  else
    msg = { type = "say", text = line }
  end
  if msg.type == nil then return reply_error(client, "missing type") end
  local handler = type(msg.type) == "string" and handlers[msg.type]
  if not handler then return reply_error(client, "unknown type: " .. kind_of_type(msg, line)) end
  handler(client, msg)
end

-- A piece of a line shorter than this is joined to the piece before it when that is
-- short too: a line trickling in a byte at a time is kept in a few strings, not one a byte.
local SMALL_PIECE = 512

-- The line made of the client's pieces and data[i..j], without the CR of a CRLF. The
-- pieces are joined once, here: a line that arrives in n pieces costs O(its length),
-- where joining them at every recv cost O(length * n).
local function take_line(client, data, i, j)
  local pieces = client.pieces
  local cr = data:byte(j) == 13 -- the byte before i, if any, is a LF: never this CR
  if cr then j = j - 1 end
  if #pieces == 0 then return data:sub(i, j) end
  if j >= i then
    pieces[#pieces + 1] = data:sub(i, j)
  elseif not cr and pieces[#pieces]:byte(-1) == 13 then -- the CR came in the last piece
    pieces[#pieces] = pieces[#pieces]:sub(1, -2)
  end
  client.pieces, client.held = {}, 0
  return table.concat(pieces)
end

-- Keeps data[start..], the start of a line whose end has not come. A line longer than
-- max_line gets one error and is discarded up to its end, so memory stays bounded.
local function keep(client, data, start)
  local rest = start == 1 and data or data:sub(start)
  local pieces = client.pieces
  local n = #pieces
  if n > 0 and #rest < SMALL_PIECE and #pieces[n] < SMALL_PIECE then
    pieces[n] = pieces[n] .. rest
  else
    pieces[n + 1] = rest
  end
  client.held = client.held + #rest
  -- The limit is on the line without its ending, and a "\r" may still be waiting for "\n".
  if client.held - (rest:byte(-1) == 13 and 1 or 0) > opts.max_line then
    reply_error(client, "line too long")
    client.discarding, client.pieces, client.held = true, {}, 0
  end
end

-- Splits received bytes into lines. Only a complete line makes a client active: one
-- that sends a byte a minute and never a newline is idle, and is swept. A line that
-- waits on Redis (fed.ask) holds the client: the rest of what it sent is kept and it is
-- not read until the answer comes, so its lines keep their order.
local function feed(client, data)
  local start = 1
  while not client.gone do
    if client.waiting then
      if start <= #data then client.stash = data:sub(start) end
      client.paused = true
      sel:unregister(client.conn)
      return
    end
    local nl = data:find("\n", start, true)
    if not nl then break end
    client.last_active = luahost.now()
    if client.discarding then
      client.discarding = false
    else
      local line = take_line(client, data, start, nl - 1)
      if #line > opts.max_line then
        reply_error(client, "line too long")
      else
        handle_line(client, line)
      end
    end
    start = nl + 1
  end
  if start <= #data and not client.gone and not client.discarding then
    keep(client, data, start)
  end
end

local function on_readable(conn)
  local client = clients[conn]
  local data, err = conn:recv(65536)
  if data == nil then
    if err ~= "wouldblock" then drop(client, "connection error: " .. tostring(err)) end
  elseif data == "" then
    drop(client, "quit")
  else
    feed(client, data)
  end
end

-- With --redis a guest's name carries its server's tag, so servers seldom clash.
local function next_guest_name()
  local prefix = fed and "guest-" .. fed.tag .. "-" or "guest-"
  repeat CHAT.guests = CHAT.guests + 1 until not by_name[prefix .. CHAT.guests]
  return prefix .. CHAT.guests
end

-- The client's line that waited on Redis has been answered: read it again.
local function resume(client)
  client.waiting = false
  if client.gone or not client.paused then return end
  client.paused = false
  sel:register(client.conn, READ, on_readable)
  local stash = client.stash
  client.stash = nil
  if stash then feed(client, stash) end
end

-- Takes every client waiting, up to ACCEPTS_PER_EVENT: one accept per wakeup lets a
-- burst of connects overflow the kernel's listen queue, and a client whose handshake
-- the kernel then dropped believes it is connected while nobody serves it. (The host
-- ends a round's accepts at 64 with "wouldblock", so connected clients are served too.)
local ACCEPTS_PER_EVENT = 1000 -- as Redis
local function on_accept(server)
  for _ = 1, ACCEPTS_PER_EVENT do
    local conn = server:accept()
    if not conn then return end
    local client = { conn = conn, name = next_guest_name(), pieces = {}, held = 0,
                     last_active = luahost.now() }
    clients[conn], by_name[client.name] = client, client
    room:add(conn)
    sel:register(conn, READ, on_readable)
    send(client, { type = "welcome", name = client.name })
    broadcast({ type = "join", name = client.name }, client)
    if fed then fed.claim(client) end
  end
end

-- Disconnects clients that sent no complete line for idle_timeout seconds.
local function sweep_idle()
  local now = luahost.now()
  for _, client in pairs(clients) do
    if now - client.last_active >= opts.idle_timeout then
      send(client, { type = "error", reason = "idle timeout" })
      drop(client, "idle timeout")
    end
  end
end

-- On a reload, listen returns the listener already open and register replaces its
-- callback, so new clients reach the new code at once.
-- The TLS context is made on every load, so a reload takes a renewed certificate (and a
-- bad one fails the reload: the old one keeps serving).
local tls = opts.cert and assert(luahost.tls_context{cert = opts.cert, key = opts.key})
local server = assert(luahost.listen(opts.host, opts.port, {tls = tls}))
sel:register(server, READ, on_accept)
local sweeper = luahost.every(math.min(1, opts.idle_timeout / 4), sweep_idle)

-- The chat across servers (--redis). Each server publishes its clients' events, each
-- line prefixed with the server's id, on one channel, in the order it sent them to its
-- own clients, and sends its clients the lines of the others. A name is the key
-- NAMES .. name, whose value is the id of the server that owns it, with a TTL that the
-- owner refreshes every third of it: a server that dies leaves its names for one TTL.
local CHANNEL, NAMES = "luahost-chat:events", "luahost-chat:name:"
-- Takes a name that is free or already the server's, and (re)sets its TTL: 1, else 0.
local CLAIM = [[
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1]]
local RELEASE = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0]]
-- How long a client's nick or who waits on Redis before this server answers alone.
local REDIS_WAIT = 1

local function new_server_id()
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(8)
  if f then f:close() end
  bytes = bytes or tostring({}) .. os.time()
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function federate(where)
  local redis = require "luahost.redis"
  CHAT.server_id = CHAT.server_id or new_server_id()
  local id = CHAT.server_id
  local f = { id = id, tag = id:sub(1, 4), up = false }
  local address = where.host .. ":" .. where.port
  local ttl_ms = tostring(math.max(1, math.floor(opts.name_ttl * 1000)))
  local r

  function f.claim_name(name, done)
    r:call({ "EVAL", CLAIM, "1", NAMES .. name, id, ttl_ms }, done)
  end

  -- Claims client's name; if another server has it, renames the client and tells it.
  function f.claim(client)
    local name = client.name
    f.claim_name(name, function(owned)
      if owned ~= 0 or client.gone or client.name ~= name then return end
      luahost.log("info", "name", name, "is taken on another server: renaming the client here")
      rename(client, next_guest_name(), "name " .. name .. " is taken on another server")
      f.claim(client)
    end)
  end

  function f.release(name)
    r:call({ "EVAL", RELEASE, "1", NAMES .. name, id })
  end

  function f.publish(line)
    r:publish(CHANNEL, id .. " " .. line)
  end

  -- Every name Redis has, or nil if it did not answer (SCAN, a page at a time).
  function f.all_names(done)
    local names = {}
    local function page(cursor)
      r:call({ "SCAN", cursor, "MATCH", NAMES .. "*", "COUNT", "1000" }, function(reply)
        if type(reply) ~= "table" then return done(nil) end
        for _, key in ipairs(reply[2]) do names[#names + 1] = key:sub(#NAMES + 1) end
        if reply[1] == "0" then return done(names) end
        page(reply[1])
      end)
    end
    page("0")
  end

  -- Holds client while start(done) asks Redis; then[answer] runs on the answer, or on
  -- nil if none came within REDIS_WAIT seconds; then the client is read again.
  function f.ask(client, start, then_)
    client.waiting = true
    local finished, timer = false, nil
    local function finish(answer)
      if finished then return end
      finished = true
      if timer then timer:cancel() end
      if not client.gone then then_(answer) end
      resume(client)
    end
    timer = luahost.after(REDIS_WAIT, function()
      timer = nil
      finish(nil)
    end)
    start(finish)
  end

  local function refresh()
    if not f.up then return end
    for _, client in pairs(clients) do f.claim(client) end
  end

  local hooks = {
    on_connect = function()
      f.up = true
      local n = 0
      for _ in pairs(clients) do n = n + 1 end
      luahost.log("info", "redis", address, "connected: chatting across servers;",
        "registering", n, "names")
      refresh()
    end,
    on_disconnect = function(_, why)
      f.up = false
      luahost.log("warn", "redis", address, "unreachable (" .. why .. "):",
        "chatting locally until it returns")
    end,
  }
  -- A reload keeps the client: a subscription made anew would miss what the others
  -- publish until Redis has it, and those events would never reach this server.
  r = CHAT.redis
  if r then
    r:set_hooks(hooks)
    f.up = r:connected()
  else
    r = redis.connect(where.host, where.port, hooks)
    CHAT.redis = r
  end
  r:subscribe(CHANNEL, function(payload)
    local from, line = payload:match("^(%S+) (.*)$")
    if from and from ~= id then
      local _, failed = room:write(line)
      drop_failed(failed)
    end
  end)
  local refresher = luahost.every(opts.name_ttl / 3, refresh)
  function f.stop() -- before a reload: the next version takes r over
    refresher:cancel()
  end
  return f
end

if opts.redis then fed = federate(opts.redis) end

-- Before a newer version takes over: stop this version's timers (the new one has its
-- own); it takes the Redis client over, with the server's id.
luahost.on_reload(function()
  sweeper:cancel()
  if fed then fed.stop() end
end)

-- After a reload, every connection the old code served is handed to the new code.
function luahost.adopt(key)
  if clients[key.fileobj] then sel:modify(key.fileobj, key.events, on_readable) end
end
