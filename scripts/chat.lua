-- chat.lua: a newline-delimited chat server. Every message it sends is one JSON object
-- on one line; clients may send JSON objects or plain text, so `nc` works as a client.
--
-- Usage: luahost scripts/chat.lua [[HOST:]PORT] [--idle-timeout SECONDS] [--max-line BYTES]
--                                  [--tls-cert FILE --tls-key FILE]
--        (default 127.0.0.1:12345, idle timeout 300 s, max line 65536 bytes; with a
--        certificate and its key, clients connect over TLS)
-- A client that sends no complete line for the idle timeout is closed; bytes of a line
-- that does not end do not count.
--
-- A line starting with "{" or "[" is JSON and must be an object:
--   {"type":"say","text":"..."}  {"type":"nick","name":"..."}  {"type":"who"}
-- Any other line is plain text: "/nick NAME", "/who", or else something to say.
local luahost = require "luahost"
local cjson = require "cjson.safe"

local sel, READ = luahost.selector, luahost.EVENT_READ
local USAGE = "usage: luahost scripts/chat.lua [[HOST:]PORT] [--idle-timeout SECONDS]"
  .. " [--max-line BYTES] [--tls-cert FILE --tls-key FILE]"

local function parse_args(args)
  local opts = { host = "127.0.0.1", port = 12345, idle_timeout = 300, max_line = 65536 }
  local i = 1
  while args[i] do
    local a = args[i]
    if a == "--idle-timeout" or a == "--max-line" then
      local v = tonumber(args[i + 1])
      if not v or v <= 0 then error(a .. " needs a positive number; " .. USAGE, 0) end
      if a == "--idle-timeout" then opts.idle_timeout = v else opts.max_line = math.floor(v) end
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

-- Sends msg to every client but `except` (which may be nil), encoding it once; the
-- host writes it to every connection in one call.
local function broadcast(msg, except)
  local _, failed = room:write(encode(msg), except and except.conn)
  for conn, err in pairs(failed or {}) do
    local client = clients[conn]
    if client then
      drop(client, err == "buffer full" and "slow consumer" or "write failed: " .. err)
    end
  end
end

drop = function(client, reason)
  if client.gone then return end
  client.gone = true
  room:remove(client.conn)
  clients[client.conn] = nil
  by_name[client.name] = nil
  client.conn:close() -- already closed when the host dropped a slow consumer: harmless
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
  if by_name[name] and by_name[name] ~= client then
    return reply_error(client, "name " .. name .. " is taken")
  end
  local old = client.name
  -- One at a time: a multiple assignment's order is not defined (Lua's is right to
  -- left), and renaming to one's own name would clear the new entry.
  by_name[old] = nil
  by_name[name] = client
  client.name = name
  broadcast({ type = "nick", from = old, name = name })
end

function handlers.who(client)
  local names = {}
  for name in pairs(by_name) do names[#names + 1] = name end
  if #names == 0 then -- lua-cjson encodes an empty table as an object, {}
    return send_line(client, '{"type":"who","names":[]}\n')
  end
  table.sort(names)
  send(client, { type = "who", names = names })
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
-- that sends a byte a minute and never a newline is idle, and is swept.
local function feed(client, data)
  local start = 1
  while not client.gone do
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

local function next_guest_name()
  repeat CHAT.guests = CHAT.guests + 1 until not by_name["guest-" .. CHAT.guests]
  return "guest-" .. CHAT.guests
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

-- Before a newer version takes over: stop this version's timer (the new one has its own).
luahost.on_reload(function() sweeper:cancel() end)

-- After a reload, every connection the old code served is handed to the new code.
function luahost.adopt(key)
  if clients[key.fileobj] then sel:modify(key.fileobj, key.events, on_readable) end
end
