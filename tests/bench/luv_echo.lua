-- luv_echo.lua: an echo server in luv's own style (the TCP example of luv's README):
-- libuv owns the loop, read_start hands each chunk to a callback, write queues it.
-- Usage: lua5.4 luv_echo.lua PORT
local uv = require "luv"

-- libuv leaves SIGPIPE alone: without this, a write to a client that has gone kills the
-- server (node and luvit do the same at startup).
uv.new_signal():start("sigpipe", function() end)

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", tonumber(arg[1])))
assert(server:listen(511, function(err)
  assert(not err, err)
  local client = uv.new_tcp()
  server:accept(client)
  client:read_start(function(read_err, chunk)
    if read_err or not chunk then -- a reset, or the end of the stream
      return client:close()
    end
    client:write(chunk)
  end)
end))
uv.run()
