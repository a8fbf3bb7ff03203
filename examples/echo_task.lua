-- echo_task.lua: scripts/echo.lua written with luahost.task: one task per client, in
-- straight-line code, on the host's own selector.
-- Usage: luahost examples/echo_task.lua [[HOST:]PORT]     (default 127.0.0.1:7342)
-- (luahost.task is found on LUA_PATH: installed, or LUA_PATH="lua/?.lua;;" in the repo.)
local luahost = require "luahost"
local task = require "luahost.task"

local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 7342))

-- One client: whatever comes is sent back. At end of stream or on an error the task
-- returns, and the stream it owns is closed (output still buffered is delivered first).
local function serve(client)
  while true do
    local data = client:receiveany()
    if not data then return end
    client:send(data) -- waits only while this client's output is over its high water
  end
end

local server = task.wrap(assert(luahost.listen(host, port)))
task.spawn(function()
  while true do
    local client = server:accept()
    if client then task.spawn(serve, client) end -- the new task owns the client's stream
  end
end)
