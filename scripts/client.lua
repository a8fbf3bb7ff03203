-- client.lua: the multi-connection client of the Python selectors tutorials, in Lua.
-- It runs its own select loop in the main chunk, so the host exits when it returns.
-- Usage: luahost scripts/client.lua [HOST:]PORT [CONNECTIONS] [MESSAGES] [--tls [--ca FILE]]
--   Opens CONNECTIONS (default 2) connections, sends MESSAGES (default 2) messages on
--   each, and checks that every byte comes back. Exits 0 only if all of them did.
--   --tls speaks TLS, verifying the server against the system's CAs or FILE's.
local luahost = require "luahost"

local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local USAGE = "usage: luahost scripts/client.lua [HOST:]PORT [CONNECTIONS] [MESSAGES]"
  .. " [--tls [--ca FILE]]"
local TIMEOUT = 30 -- seconds for the whole run; a server that stops answering fails it

local words, tls = {}, nil
do
  local i = 1
  while arg[i] do
    if arg[i] == "--tls" then
      tls, i = tls or {}, i + 1
    elseif arg[i] == "--ca" and arg[i + 1] then
      tls = tls or {}
      tls.ca, i = arg[i + 1], i + 2
    else
      words[#words + 1], i = arg[i], i + 1
    end
  end
end
local host, port = luahost.parse_address(words[1] or "", "127.0.0.1", -1)
local nconns, nmessages = tonumber(words[2] or 2), tonumber(words[3] or 2)
if not host or port < 0 or not nconns or nconns < 1 or not nmessages or nmessages < 1 then
  error((host and "" or port .. "; ") .. USAGE, 0)
end

local sel = luahost.new_selector()
local open, failed, bytes_sent, bytes_received = 0, 0, 0, 0

local function finish(state, why)
  sel:unregister(state.sock)
  state.sock:close()
  open = open - 1
  if why then
    failed = failed + 1
    io.stderr:write(string.format("connection %d: %s\n", state.id, why))
  end
end

-- Starts connection id without blocking: connect_ex answers EINPROGRESS at once, and the
-- socket turns writable when the connection is made (or has failed).
local function start_connection(id)
  local sock = assert(luahost.socket(host:find(":") and "inet6" or "inet", "stream"))
  sock:setblocking(false)
  local err = sock:connect_ex(host, port)
  if err ~= 0 and err ~= 115 then -- 115: EINPROGRESS
    error(string.format("connection %d: connect failed (errno %s)", id, tostring(err)), 0)
  end
  if tls then assert(sock:starttls(tls, host)) end -- the handshake runs in the loop below
  local messages = {}
  for i = 1, nmessages do
    messages[i] = string.format("Message %d from connection %d.\n", i, id)
  end
  local expected = table.concat(messages)
  local state = { id = id, sock = sock, outgoing = messages, outb = "",
                  expected = expected, received = {}, nreceived = 0 }
  sel:register(sock, READ | WRITE, state)
  open = open + 1
end

-- With TLS, nothing moves before the handshake is done: true once it is.
local function handshake_done(state)
  if not tls or state.shaken then return true end
  local ok, err = state.sock:handshake()
  if not ok and err ~= "wouldblock" then finish(state, err) end
  state.shaken = ok
  return ok
end

local function on_readable(state)
  local data, err = state.sock:recv(4096)
  if data == nil then
    if err ~= "wouldblock" then finish(state, "receive failed: " .. err) end
    return
  end
  state.received[#state.received + 1] = data
  state.nreceived = state.nreceived + #data
  bytes_received = bytes_received + #data
  if data == "" or state.nreceived >= #state.expected then
    local got = table.concat(state.received)
    finish(state, got ~= state.expected and
      string.format("got %d bytes back, expected %d", #got, #state.expected) or nil)
  end
end

local function on_writable(state)
  if state.outb == "" and #state.outgoing > 0 then
    state.outb = table.remove(state.outgoing, 1)
  end
  if state.outb == "" then
    sel:modify(state.sock, READ, state) -- all sent: from now on only wait for replies
    return
  end
  local n, err = state.sock:send(state.outb)
  if not n then
    if err ~= "wouldblock" then finish(state, "send failed: " .. err) end
    return
  end
  state.outb = state.outb:sub(n + 1)
  bytes_sent = bytes_sent + n
end

for id = 1, nconns do start_connection(id) end
local deadline = luahost.now() + TIMEOUT
while open > 0 and luahost.now() < deadline do
  for key, mask in sel:select(deadline - luahost.now()) do
    local state = key.data
    if not handshake_done(state) then goto next end
    if mask & READ ~= 0 then on_readable(state) end
    if mask & WRITE ~= 0 and sel:get_key(state.sock) then on_writable(state) end
    ::next::
  end
end
for _, key in pairs(sel:get_map()) do finish(key.data, "timed out") end
sel:close()

local summary = string.format("%d connections, %d bytes sent, %d received, %d failed",
  nconns, bytes_sent, bytes_received, failed)
print(summary)
if failed > 0 then error("client: " .. summary, 0) end
