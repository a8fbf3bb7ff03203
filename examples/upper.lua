-- upper.lua: replies to everything a client sends with the same text in upper case.
local luahost = require "luahost"
local sel = luahost.selector

local function on_read(conn)
  local data, err = conn:recv()
  if data == nil then                         -- nothing there yet, or the client is gone
    if err ~= "wouldblock" then conn:abort() end
    return
  end
  if data == "" then return conn:close() end  -- the client is done: flush, then close
  conn:write(data:upper())                    -- buffered: never loses bytes
end

-- Take every client waiting, not one per wakeup: a burst of connects would overflow the
-- kernel's listen queue, where a client can believe it is connected and never be served.
-- The bound is Redis's; the host itself ends a round's accepts at 64, so the clients
-- already connected are served in between.
local function on_accept(listener)
  for _ = 1, 1000 do
    local conn = listener:accept()
    if not conn then return end                 -- none left waiting
    sel:register(conn, luahost.EVENT_READ, on_read)
  end
end

local server = assert(luahost.listen("127.0.0.1", tonumber(arg and arg[1]) or 0))
sel:register(server, luahost.EVENT_READ, on_accept)
