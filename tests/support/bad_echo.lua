-- bad_echo.lua: an echo server that fails its clients on purpose, for client_spec.lua.
-- Usage: luahost tests/support/bad_echo.lua [HOST:]PORT abort|upper
--   abort: resets each connection as soon as something arrives on it
--   upper: echoes what arrives in upper case
local luahost = require "luahost"

local sel, READ = luahost.selector, luahost.EVENT_READ
local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 0))
local mode = assert(({abort = true, upper = true})[arg[2]] and arg[2], "mode: abort or upper")

local function on_read(conn)
  local data, err = conn:recv(65536)
  if data == nil then
    if err ~= "wouldblock" then conn:abort() end
  elseif data == "" then
    conn:close()
  elseif mode == "abort" then
    conn:abort()
  else
    conn:write(data:upper())
  end
end

sel:register(assert(luahost.listen(host, port)), READ, function(listener)
  local conn = listener:accept()
  if conn then sel:register(conn, READ, on_read) end
end)
