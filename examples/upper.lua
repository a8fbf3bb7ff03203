-- upper.lua: replies to everything a client sends with the same text in upper case.
local luahost = require "luahost"
local sel = luahost.selector

local function on_read(conn)
  local data = conn:recv()
  if data == nil then return end              -- nothing there yet (or an error)
  if data == "" then return conn:close() end  -- the client is done: flush, then close
  conn:write(data:upper())                    -- buffered: never loses bytes
end

local server = assert(luahost.listen("127.0.0.1", tonumber(arg and arg[1]) or 0))
sel:register(server, luahost.EVENT_READ, function(listener)
  local conn = listener:accept()
  if conn then sel:register(conn, luahost.EVENT_READ, on_read) end
end)
