-- chat_task.lua: the chat of scripts/chat.lua (the same protocol, the same options), with
-- each client served by a luahost.task task in straight-line code: read a line, handle
-- it, again. The idle timeout is the receive's own timeout, the line bound its maxline.
--
-- Usage: luahost examples/chat_task.lua [[HOST:]PORT] [--idle-timeout SECONDS]
--        [--max-line BYTES]   (default 127.0.0.1:12345, 300 s, 65536 bytes)
-- (luahost.task is found on LUA_PATH: installed, or LUA_PATH="lua/?.lua;;" in the repo.)
-- A line starting with "{" or "[" is JSON and must be an object:
--   {"type":"say","text":"..."}  {"type":"nick","name":"..."}  {"type":"who"}
-- Any other line is plain text: "/nick NAME", "/who", or else something to say.
local luahost = require "luahost"
local task = require "luahost.task"
local cjson = require "cjson.safe"

local USAGE = "usage: luahost examples/chat_task.lua [[HOST:]PORT] [--idle-timeout SECONDS]"
  .. " [--max-line BYTES]"

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
    elseif a:sub(1, 1) == "-" then
      error("unknown option " .. a .. "; " .. USAGE, 0)
    else
      local host, port = luahost.parse_address(a, opts.host, opts.port)
      if not host then error(port .. "; " .. USAGE, 0) end
      opts.host, opts.port = host, port
      i = i + 1
    end
  end
  return opts
end

local opts = parse_args(arg)

-- What outlives a reload: the clients, and the accept loop, which keeps running and
-- spawns each new client's task with the serve function of the latest load.
CHAT_TASK = CHAT_TASK or { clients = {}, by_name = {}, members = {}, guests = 0 }
local state = CHAT_TASK
local clients = state.clients -- socket -> { stream, conn, name, slot, gone }
local by_name = state.by_name
local members = state.members -- the sockets as a sequence, for luahost.write_all

local function encode(msg)
  return cjson.encode(msg) .. "\n"
end

local drop -- defined below

-- Sends to the client whose task runs: a client that does not read its replies holds up
-- its own task (send waits at the high water) and no other.
local function send_line(client, line)
  local ok, err = client.stream:send(line)
  if not ok then
    drop(client, err == "buffer full" and "slow consumer" or "write failed: " .. tostring(err))
  end
end

local function send(client, msg)
  send_line(client, encode(msg))
end

-- Sends msg to every client but `except`; the host writes to all in one call. A client
-- past its output limit is dropped, and its task wakes to "closed".
local function broadcast(msg, except)
  local _, failed = luahost.write_all(members, encode(msg), except and except.conn)
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
  local last = members[#members]
  members[#members] = nil
  if last ~= client.conn then
    members[client.slot] = last
    clients[last].slot = client.slot
  end
  clients[client.conn] = nil
  by_name[client.name] = nil
  luahost.log("info", client.name, "left:", reason)
  client.stream:close() -- wakes its task if another task dropped it
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
  by_name[old] = nil -- one at a time: renaming to one's own name keeps the entry
  by_name[name] = client
  client.name = name
  broadcast({ type = "nick", from = old, name = name })
end

function handlers.who(client)
  local names = {}
  for name in pairs(by_name) do names[#names + 1] = name end
  if #names == 0 then return send_line(client, '{"type":"who","names":[]}\n') end
  table.sort(names)
  send(client, { type = "who", names = names })
end

-- The JSON kind of a message's unknown type, for the reply (never a Lua value's tostring,
-- which would tell a heap address). cjson decodes {} and [] alike: for an empty one the
-- line itself is read, as scripts/chat.lua does.
local EMPTY_KIND = { ["{"] = "object", ["["] = "array" }
local function kind_of_type(msg, line)
  local v = msg.type
  if v == cjson.null then return "null" end
  if type(v) == "string" then return 'string "' .. v .. '"' end
  if type(v) ~= "table" then return type(v) end
  local key = next(v)
  if key ~= nil then return type(key) == "number" and "array" or "object" end
  local plain = line:gsub("\\.", "__")
  plain = plain:gsub('()"[^"]*"()', function(i, j)
    return cjson.decode(line:sub(i, j - 1)) == "type" and '"type"' or '""'
  end)
  local body = plain:match("^%s*{(.*)}%s*$") or ""
  local c = body:gsub("%b{}", "{}"):gsub("%b[]", "[]"):match('.*"type"%s*:%s*(.)')
  return EMPTY_KIND[c] or "object or array"
end

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

local function next_guest_name()
  repeat state.guests = state.guests + 1 until not by_name["guest-" .. state.guests]
  return "guest-" .. state.guests
end

-- One client, from its welcome to its leaving. The receive's timeout is the idle
-- timeout: only a complete line starts a new receive, so bytes of a line that does not
-- end do not count as activity.
local function serve(stream)
  local conn = stream:socket()
  local client = { stream = stream, conn = conn, name = next_guest_name() }
  clients[conn], by_name[client.name] = client, client
  members[#members + 1] = conn
  client.slot = #members
  stream:setmaxline(opts.max_line)
  stream:settimeout(opts.idle_timeout)
  send(client, { type = "welcome", name = client.name })
  broadcast({ type = "join", name = client.name }, client)
  while not client.gone do
    local line, err = stream:receive("*l")
    if line then
      handle_line(client, line)
    elseif err == "line too long" then -- the rest of that line is discarded as it comes
      reply_error(client, "line too long")
    elseif err == "timeout" then
      reply_error(client, "idle timeout")
      drop(client, "idle timeout")
    else
      drop(client, err == "closed" and "quit" or "connection error: " .. tostring(err))
    end
  end
end
state.serve = serve

-- Asked for again at each load, so that a reload keeps the listener open.
local listener = assert(luahost.listen(opts.host, opts.port))
if not state.acceptor then
  local server = task.wrap(listener)
  state.acceptor = task.spawn(function()
    while true do
      local stream = server:accept()
      if stream then task.spawn(state.serve, stream) end
    end
  end)
end
