-- echo.lua: the echo server of the Python selectors tutorials, done right.
-- Usage: luahost scripts/echo.lua [[HOST:]PORT] [--tls-cert FILE --tls-key FILE]
--        (default 127.0.0.1:7342; with a certificate and its key, echo over TLS)
local luahost = require "luahost"

local sel = luahost.selector
local READ = luahost.EVENT_READ
local USAGE = "usage: luahost scripts/echo.lua [[HOST:]PORT] [--tls-cert FILE --tls-key FILE]"

local address, cert, key
local i = 1
while arg[i] do
  local a = arg[i]
  if a == "--tls-cert" or a == "--tls-key" then
    if not arg[i + 1] then error(a .. " needs a file; " .. USAGE, 0) end
    if a == "--tls-cert" then cert = arg[i + 1] else key = arg[i + 1] end
    i = i + 2
  elseif a:sub(1, 1) == "-" or address then
    error("unexpected argument " .. a .. "; " .. USAGE, 0)
  else
    address, i = a, i + 1
  end
end
if (cert == nil) ~= (key == nil) then
  error("--tls-cert and --tls-key go together; " .. USAGE, 0)
end
local host, port = assert(luahost.parse_address(address, "127.0.0.1", 7342))
-- Made on every load, so a SIGHUP reload takes a renewed certificate (a bad one fails
-- the reload, and the old one keeps serving).
local tls = cert and assert(luahost.tls_context{cert = cert, key = key})

-- Called whenever a client connection is readable.
local function on_read(conn)
  local data, err = conn:recv(65536)
  if data == nil then
    if err ~= "wouldblock" then
      conn:abort() -- reset or other error: nothing more can be delivered
    end
  elseif data == "" then
    -- The client finished sending. close() still delivers whatever write() has not
    -- sent yet, so a client that shuts down its write side gets every byte back.
    conn:close()
  else
    -- write() never loses bytes to a partial send: the host keeps the rest and sends it
    -- when the client can take it (and stops reading from a client that never reads).
    conn:write(data)
  end
end

-- Called when the listening socket is readable: clients are waiting to be accepted.
-- All of them are taken, up to ACCEPTS_PER_EVENT: one accept per wakeup lets a burst of
-- connects overflow the kernel's listen queue, and a client whose handshake the kernel
-- then dropped believes it is connected while nobody serves it. (The host ends a round's
-- accepts at 64 with "wouldblock", so clients already connected are served in between.)
local ACCEPTS_PER_EVENT = 1000 -- as Redis
local function on_accept(server)
  for _ = 1, ACCEPTS_PER_EVENT do
    local conn = server:accept()
    if not conn then return end -- none left waiting (or one refused: the rest next time)
    sel:register(conn, READ, on_read)
  end
end

local server = assert(luahost.listen(host, port, {tls = tls}))
sel:register(server, READ, on_accept)
