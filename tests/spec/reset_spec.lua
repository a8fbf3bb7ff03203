-- reset_spec.lua: output the host drops ends the connection with a reset, never with the
-- FIN of a normal close, which would let the peer take a cut stream for a whole one: at
-- shutdown past the grace period, on a write past the limit after the kernel took part of
-- it, and when a callback raised. The peer's recv fails with "connection reset", and the
-- log names the peer and the bytes dropped. Real sockets only: a sim connection is a
-- socketpair, which has no reset.
local T = require "luahost.test"

local BACKENDS = {"epoll", "poll", "select"}
local MIB = 1024 * 1024

-- Each connection is sent arg[2] bytes at once with s:write (its limit set to arg[3] bytes
-- if given), and the result logged; a connection that sends "boom" makes its callback
-- raise after another arg[2] bytes were written.
local WRITER = [[
local luahost = require "luahost"
local size, limit = tonumber(arg[2]), tonumber(arg[3])
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function()
  local conn = server:accept()
  if not conn then return end
  if limit then conn:setlimit(limit) end
  local pending, err = conn:write(string.rep("x", size))
  luahost.log("info", "wrote: " .. tostring(pending) .. ", " .. tostring(err))
  if not pending then return end
  luahost.selector:register(conn, luahost.EVENT_READ, function(c)
    local data = c:recv(100)
    if data == "boom" then
      c:write(string.rep("y", size))
      error("boom")
    elseif data == "" or not data then
      c:close()
    end
  end)
end)
]]

-- The reset line the host logged for client c: why, and the bytes dropped by the host and
-- left unacknowledged in the kernel.
local function reset_line(log, c, why)
  local pattern = "closing 127%.0%.0%.1:" .. c:local_port() .. ": " .. why
    .. "; reset, (%d+) bytes of output dropped %(and (%d+) unacknowledged in the kernel%)"
  local dropped, unacked = log:match(pattern)
  assert(dropped, "no reset line matching " .. pattern .. " in:\n" .. log)
  return tonumber(dropped), tonumber(unacked)
end

-- c was reset, not closed: it reads what arrived, then a reset. What it got and what the
-- host says it dropped add up to what the script wrote (the kernel's unacknowledged
-- bytes may or may not have arrived).
local function assert_reset(c, total, dropped, unacked)
  local closed, how = c:closed(5)
  assert(closed, "the connection stayed open")
  assert.matches("[Cc]onnection reset", how)
  local got = #c:received()
  assert(got + dropped <= total and got + dropped + unacked >= total, string.format(
    "received %d + dropped %d (+ up to %d unacknowledged) does not make the %d written",
    got, dropped, unacked, total))
end

describe("output the host drops", function()
  for _, backend in ipairs(BACKENDS) do
    describe("on " .. backend, function()
      it("at shutdown past the grace period resets the peer and logs what it lost", function()
        local srv = T.start(T.tempfile(WRITER), {"127.0.0.1:0", tostring(8 * MIB)},
          {selector = backend, max_output = 16 * MIB})
        local c = T.client("127.0.0.1", srv.port, {rcvbuf = 4096, timeout = 5})
        local pending = tonumber(srv:run_until(function()
          return srv:log():match("wrote: (%d+)")
        end, 5, "the write"))
        assert(pending > 0, "the kernel took all 8 MiB: nothing left to drop")
        srv:stop() -- a grace of 1 s, in which the client reads nothing
        local dropped, unacked = reset_line(srv:log(), c, "the host is stopping")
        assert.equal(pending, dropped)
        assert_reset(c, 8 * MIB, dropped, unacked)
      end)

      it("when a write passes the limit after the kernel took part of it resets the peer",
        function()
          local srv = T.start(T.tempfile(WRITER), {"127.0.0.1:0", tostring(8 * MIB), "65536"},
            {selector = backend})
          local c = T.client("127.0.0.1", srv.port, {rcvbuf = 4096, timeout = 5})
          srv:run_until(function() return srv:log():match("wrote: ") end, 5, "the write")
          assert.matches("wrote: nil, buffer full", srv:log(), 1, true)
          local dropped, unacked = reset_line(srv:log(), c,
            "output buffer full %(0 bytes pending, limit 65536%)")
          assert(dropped > 0 and dropped < 8 * MIB, string.format(
            "%d bytes dropped: the kernel took none of the 8 MiB, or all", dropped))
          assert_reset(c, 8 * MIB, dropped, unacked)
        end)

      it("when a callback raises resets the peer, dropping what it had written", function()
        local srv = T.start(T.tempfile(WRITER), {"127.0.0.1:0", tostring(4 * MIB)},
          {selector = backend, max_output = 16 * MIB})
        local c = T.client("127.0.0.1", srv.port, {rcvbuf = 4096, timeout = 5})
        local pending = tonumber(srv:run_until(function()
          return srv:log():match("wrote: (%d+)")
        end, 5, "the write"))
        assert(c.sock:send("boom"))
        srv:run_until(function() return srv:log():find("its callback failed", 1, true) end, 5,
          "the callback to fail")
        assert.matches("error in callback for 127%.0%.0%.1:%d+: .*boom", srv:log())
        local dropped, unacked = reset_line(srv:log(), c, "its callback failed")
        assert.equal(pending + 4 * MIB, dropped)
        assert_reset(c, 8 * MIB, dropped, unacked)
      end)
    end)
  end

  it("at SIGTERM past the executable's grace period resets the peer", function()
    local server = T.spawn(T.tempfile(WRITER), {"127.0.0.1:0", tostring(8 * MIB)},
      {options = {"--max-output", tostring(16 * MIB)}})
    local c = T.client("127.0.0.1", server.port, {rcvbuf = 4096, timeout = 5})
    local pending = tonumber(server:wait_log("wrote: (%d+)", 5))
    assert(pending > 0, "the kernel took all 8 MiB: nothing left to drop")
    assert.same({how = "exit", code = 0}, (server:stop("TERM", 8)))
    local dropped, unacked = reset_line(server:stderr(), c, "the host is stopping")
    assert.equal(pending, dropped)
    assert_reset(c, 8 * MIB, dropped, unacked)
  end)
end)
