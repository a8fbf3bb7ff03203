-- reliability_gc_spec.lua: the host under --debug-gc, which collects all garbage after
-- every round: sockets that only the selector holds stay open and served; a socket a
-- callback closed and let go is collected without closing the fd a new connection took
-- in the same callback; a close still flushing its output is not cut short when the
-- socket is collected. On every backend.
local process = require "support.process"
local client = require "support.client"
local rel = require "support.reliability"

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
  return rel.start(process.temp_file(GC_SCRIPT, ".lua"), {selector = backend,
    options = {"--debug-gc"}, args = {}})
end

describe("reliability: --debug-gc", function()
  after_each(rel.stop_processes)

  for _, backend in ipairs(rel.BACKENDS) do
    describe("with --selector " .. backend, function()
      it("keeps serving connections only the selector holds, round after round, and "
        .. "releases their fds once they leave", function()
        local server = rel.start("scripts/echo.lua", {selector = backend,
          options = {"--debug-gc"}})
        local first = assert(client.connect("127.0.0.1", server.port))
        rel.timed_echo(first, "warm up")
        first:close()
        local base = rel.settled_fd_count(server.pid)
        local conns = {}
        finally(function() for _, c in ipairs(conns) do c:close() end end)
        for i = 1, 20 do conns[i] = assert(client.connect("127.0.0.1", server.port)) end
        for round = 1, 30 do -- every echo is at least one round, each with a full collection
          for i, c in ipairs(conns) do rel.timed_echo(c, ("%d/%d"):format(i, round), 2) end
        end
        for _, c in ipairs(conns) do c:close() end
        rel.wait_until("the fds to come back to " .. base, 5, function()
          return rel.fd_count(server.pid) <= base
        end)
        rel.assert_graceful_stop(server)
      end)

      it("collecting a socket its callback closed never closes the fd a waiting connection "
        .. "took in that callback", function()
        local server = start_gc_script(backend)
        local victim = assert(client.connect("127.0.0.1", server.port))
        local waiting
        finally(function()
          victim:close()
          if waiting then waiting:close() end
        end)
        rel.timed_echo(victim, "hello")
        assert(victim:send_all("hold"))
        assert.equal("held", assert(victim:recv_exact(4, 3)))
        waiting = assert(client.connect("127.0.0.1", server.port)) -- now in the backlog
        assert(victim:send_all("take"))
        local closed, why = victim:wait_closed(3)
        assert(closed, "the closing connection: " .. tostring(why))
        assert(server:wait_for_log("the waiting connection took the same fd: true", 3),
          "setup: the waiting connection did not land on the freed fd:\n" .. server:stderr())
        for i = 1, 20 do -- twenty rounds, each ending with a full collection
          rel.timed_echo(waiting, "on the reused fd " .. i, 2)
        end
        local after = assert(client.connect("127.0.0.1", server.port))
        rel.timed_echo(after, "a new client")
        after:close()
        rel.assert_graceful_stop(server)
      end)

      it("collecting a socket whose close is still flushing delivers every byte, then the "
        .. "end", function()
        local server = start_gc_script(backend)
        local c = assert(client.connect("127.0.0.1", server.port, 5, {rcvbuf = 4096}))
        finally(function() c:close() end)
        local size = 8 * MiB
        assert(c:send_all("flood " .. size))
        local pending = tonumber(assert(server:wait_for_log("closed with (%d+) bytes to flush",
          3)))
        assert(pending > 0, "setup: nothing was left to flush at the close")
        local got, how = c:recv_until(nil, 20)
        assert(got, "reading the flushed output: " .. tostring(how))
        assert.equal("eof", how)
        assert.equal(size, #got, "bytes delivered by the close while it was collected")
        assert(got == ("f"):rep(size), "the close delivered other bytes")
        rel.assert_graceful_stop(server)
      end)
    end)
  end
end)
