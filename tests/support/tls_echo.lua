-- tls_echo.lua: a TLS echo server for the TLS specs, which tells what the script saw.
-- luacheck: globals SEEN
-- Usage: tls_echo.lua ADDRESS CERT KEY [HANDSHAKE_TIMEOUT]
-- Logs "end: eof" or "end: error MESSAGE" (info) as each connection ends, and keeps in
-- the global SEEN the most bytes one connection had pending (largest_pending), the ends
-- (ends) and the tls_info of each connection once data came (infos).
local luahost = require "luahost"
local sel, READ = luahost.selector, luahost.EVENT_READ
local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 0))
local tls = assert(luahost.tls_context{cert = arg[2], key = arg[3],
  handshake_timeout = tonumber(arg[4]), alpn = {"echo/1", "http/1.1"}})

SEEN = {largest_pending = 0, ends = {}, infos = {}}

local function finish(conn, how)
  SEEN.ends[#SEEN.ends + 1] = how
  luahost.log("info", "end: " .. how)
  sel:unregister(conn)
  if how == "eof" then conn:close() else conn:abort() end
end

local function on_read(conn)
  local data, err = conn:recv(65536)
  if data == nil then
    if err ~= "wouldblock" then finish(conn, "error " .. err) end
  elseif data == "" then
    finish(conn, "eof")
  else
    SEEN.infos[conn] = SEEN.infos[conn] or conn:tls_info()
    conn:write(data)
    SEEN.largest_pending = math.max(SEEN.largest_pending, conn:pending())
  end
end

local server = assert(luahost.listen(host, port, {tls = tls}))
sel:register(server, READ, function()
  for _ = 1, 1000 do
    local conn = server:accept()
    if not conn then return end
    sel:register(conn, READ, on_read)
  end
end)
