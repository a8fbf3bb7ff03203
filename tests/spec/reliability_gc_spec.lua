-- reliability_gc_spec.lua: the host under --debug-gc, which collects all garbage after
-- every round: sockets that only the selector holds stay open and served; a socket a
-- callback closed and let go is collected without closing the fd a new connection took
-- in the same callback; a close still flushing its output is not cut short when the
-- socket is collected. On every backend.
local T = require "luahost.test"

local MiB = 1024 * 1024

-- Connections are held by the selector alone (the script keeps no reference). Commands:
--   "hold"       stop accepting, so that new connections wait in the backlog
--   "take"       close this connection and let go of it, accept a waiting one (which
--                takes the fd just freed) and accept again; logs whether the fd is the same
--   "flood N"    write N bytes, then close at once: the close goes on flushing
-- Anything else is echoed.
local GC_SCRIPT = [[
local sel, READ = luahost.selector, luahost.EVENT_READ
local server = assert(luahost.listen("127.0.0.1", 0))
local on_read
local function on_accept(listener)
  local conn = listener:accept()
  if conn then sel:register(conn, READ, on_read) end
end
on_read = function(conn)
  local data, err = conn:recv(65536)
  if data == nil then
    if err ~= "wouldblock" then conn:abort() end
    return
  end
  if data == "" then return conn:close() end
  local n = tonumber(data:match("^flood (%d+)$"))
  if data == "hold" then
    sel:unregister(server)
    conn:write("held")
  elseif data == "take" then
    local fd = conn:fileno()
    conn:close()
    local fresh = assert(server:accept())
    local same = fresh:fileno() == fd
    luahost.log("info", "the waiting connection took the same fd: " .. tostring(same))
    sel:register(fresh, READ, on_read)
    sel:register(server, READ, on_accept)
  elseif n then
    assert(conn:setlimit(n + 1))
    conn:write(("f"):rep(n))
    local pending = conn:pending()
    conn:close()
    luahost.log("info", "closed with " .. pending .. " bytes to flush")
  else
    conn:write(data)
  end
end
sel:register(server, READ, on_accept)
]]

-- GC_SCRIPT under --debug-gc on backend.
local function start_gc_script(backend)
  return T.spawn(T.tempfile(GC_SCRIPT), {}, {selector = backend, options = {"--debug-gc"}})
end

-- A client of the server, its waits bounded by 5 s.
local function connect(server, opts)
  opts = opts or {}
  opts.timeout = 5
  return T.client("127.0.0.1", server.port, opts)
end

describe("reliability: --debug-gc", function()
  for _, backend in ipairs({"epoll", "poll", "select"}) do
    describe("with --selector " .. backend, function()
      it("keeps serving connections only the selector holds, round after round, and "
        .. "releases their fds once they leave", function()
        local server = T.spawn("scripts/echo.lua", nil, {selector = backend,
          options = {"--debug-gc"}})
        local first = connect(server)
        first:echo("warm up")
        first:close()
        local base = server:settled_fd_count()
        local conns = {}
        for i = 1, 20 do conns[i] = connect(server) end
        for round = 1, 30 do -- every echo is at least one round, each with a full collection
          for i, c in ipairs(conns) do c:echo(("%d/%d"):format(i, round), 2) end
        end
        for _, c in ipairs(conns) do c:close() end
        T.wait_until(function()
          local n = server:fd_count()
          return n <= base, n
        end, 5, "the fds to come back to " .. base)
        T.assert_graceful_stop(server)
      end)

      it("collecting a socket its callback closed never closes the fd a waiting connection "
        .. "took in that callback", function()
        local server = start_gc_script(backend)
        local victim = connect(server)
        victim:echo("hello")
        victim:send("hold")
        assert.equal("held", victim:read(4, 3))
        local waiting = connect(server) -- now in the backlog
        victim:send("take")
        assert(victim:closed(3), "the closing connection stayed open")
        -- (setup: the waiting connection must land on the freed fd)
        server:wait_log("the waiting connection took the same fd: true", 3)
        for i = 1, 20 do -- twenty rounds, each ending with a full collection
          waiting:echo("on the reused fd " .. i, 2)
        end
        local after = connect(server)
        after:echo("a new client")
        after:close()
        T.assert_graceful_stop(server)
      end)

      it("collecting a socket whose close is still flushing delivers every byte, then the "
        .. "end", function()
        local server = start_gc_script(backend)
        local c = connect(server, {rcvbuf = 4096})
        local size = 8 * MiB
        c:send("flood " .. size)
        local pending = tonumber(server:wait_log("closed with (%d+) bytes to flush", 3))
        assert(pending > 0, "setup: nothing was left to flush at the close")
        local got = c:read_all(20) -- fails on a reset or no end within 20 s
        assert.equal(size, #got, "bytes delivered by the close while it was collected")
        assert(got == ("f"):rep(size), "the close delivered other bytes")
        T.assert_graceful_stop(server)
      end)
    end)
  end
end)
