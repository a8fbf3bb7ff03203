-- luv_chat.lua: the chat of scripts/chat.lua, as far as the bench uses it, in luv's own
-- style: a welcome line to a new client, a join line to the others, and every plain
-- text line broadcast as {"type":"say","from":NAME,"text":TEXT} to every other client.
-- Usage: lua5.4 luv_chat.lua PORT
local uv = require "luv"

-- libuv leaves SIGPIPE alone: without this, a write to a client that has gone kills the
-- server (node and luvit do the same at startup).
uv.new_signal():start("sigpipe", function() end)
local cjson = require "cjson"

local clients = {} -- tcp handle -> name
local guests = 0

local function encode(msg)
  return cjson.encode(msg) .. "\n"
end

local function broadcast(line, except)
  for client in pairs(clients) do
    if client ~= except then client:write(line) end
  end
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", tonumber(arg[1])))
assert(server:listen(511, function(err)
  assert(not err, err)
  local client = uv.new_tcp()
  server:accept(client)
  guests = guests + 1
  local name, partial = "guest-" .. guests, ""
  clients[client] = name
  client:write(encode({ type = "welcome", name = name }))
  broadcast(encode({ type = "join", name = name }), client)

  client:read_start(function(read_err, chunk)
    if read_err or not chunk then
      clients[client] = nil
      client:close()
      return broadcast(encode({ type = "leave", name = name, reason = "quit" }))
    end
    partial = partial .. chunk
    for line in partial:gmatch("([^\n]*)\n") do
      line = line:gsub("\r$", "")
      if line ~= "" then
        broadcast(encode({ type = "say", from = name, text = line }), client)
      end
    end
    partial = partial:match("[^\n]*$")
  end)
end))
uv.run()
