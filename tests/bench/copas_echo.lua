-- copas_echo.lua: an echo server in copas' own style (its manual's echo handler): one
-- coroutine per client over LuaSocket, receiving lines and sending them back. The
-- bench's echo messages end in a newline, so line servers echo every byte.
-- Debian's lua-copas (1.2.0, "Copas 1.1.7") installs only for Lua 5.1 and 5.2; it is
-- plain Lua that runs unchanged on 5.4, so its directory (and coxpcall's) is searched
-- after 5.4's own. LuaSocket waits with select(2): no fd past FD_SETSIZE (1024).
-- Usage: lua5.4 copas_echo.lua PORT
package.path = package.path .. ";/usr/share/lua/5.2/?.lua"
local copas = require "copas"
local socket = require "socket"

local server = assert(socket.bind("127.0.0.1", tonumber(arg[1])))

copas.addserver(server, function(skt)
  skt = copas.wrap(skt)
  while true do
    local line = skt:receive("*l")
    if not line then break end
    skt:send(line .. "\n")
  end
end)
copas.loop()
