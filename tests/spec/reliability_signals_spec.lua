-- reliability_signals_spec.lua: a second SIGTERM or SIGINT ends the host at once, with
-- status 128 + the signal's number, even while a callback is stuck (the instruction
-- budget turned off with --max-instructions 0, so nothing else could stop it) or while
-- the graceful stop is still waiting for a client that does not read; a single one
-- leaves a stuck host running, since the graceful stop waits for the loop.
local T = require "luahost.test"

local now = require("luahost").now

local SIGNALS = {INT = 2, TERM = 15}

-- Once a connection arrives, its callback spins for good.
local STUCK = [[
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function(listener)
  local conn = listener:accept()
  if not conn then return end
  luahost.log("info", "stuck in a callback")
  local n = 0
  while true do n = n + 1 end
end)
]]

-- Starts the stuck script and gets it stuck. Returns the Process.
local function start_stuck()
  local server = T.spawn(T.tempfile(STUCK), {}, {options = {"--max-instructions", "0"}})
  T.client("127.0.0.1", server.port, {timeout = 5})
  server:wait_log("stuck in a callback", 5)
  return server
end

-- Waits (bounded) for p to exit; returns its status and how long it took.
local function exit_within(p, timeout)
  local t0 = now()
  local status = p:wait(timeout)
  return status, now() - t0
end

describe("reliability: stop signals", function()
  -- The SIGTERM with which the kit stops what a test left running cannot end a stuck host
  -- alone; the SIGKILL 5 s later does. Either way nothing outlives the test.

  for _, pair in ipairs({{"TERM", "TERM"}, {"INT", "INT"}, {"INT", "TERM"}}) do
    local first, second = pair[1], pair[2]
    it(("SIG%s leaves a host stuck in a callback running; SIG%s then ends it at once with "
      .. "status %d"):format(first, second, 128 + SIGNALS[second]), function()
      local server = start_stuck()
      server:signal(first)
      T.sleep(1)
      assert(not server:stderr():find("SIG" .. first .. " received, stopping", 1, true),
        "setup: the stuck loop logged the stop, so it was not stuck")
      assert(server:alive(), "one SIG" .. first .. " ended a host stuck in a callback:\n"
        .. server:stderr())
      server:signal(second)
      local status, took = exit_within(server, 2)
      assert(status, ("the host was still running 2 s after a second stop signal (SIG%s "
        .. "then SIG%s):\n%s"):format(first, second, server:stderr()))
      assert.same({"exit", 128 + SIGNALS[second]}, {status.how, status.code},
        "how a second stop signal ended the host")
      assert(took < 1, ("the host took %.2f s to exit after the second signal"):format(took))
    end)
  end

  it("a second SIGTERM during the graceful stop's wait for a client that does not read "
    .. "ends the host at once", function()
    -- echo.lua with 4 MiB queued for a client that never reads: the graceful stop waits
    -- up to its grace (3 s) to send it.
    local server = T.spawn("scripts/echo.lua", nil,
      {options = {"--max-output", tostring(64 * 1024 * 1024)}})
    local c = T.client("127.0.0.1", server.port, {timeout = 5, rcvbuf = 4096})
    c:echo("hello")
    local sent = c:fill(16 * 1024 * 1024, 0.3)
    assert(sent > 1024 * 1024, "setup: only " .. tostring(sent) .. " bytes went out")
    server:signal("TERM")
    server:wait_log("SIGTERM received, stopping", 2)
    assert(server:wait(0.5) == nil, "setup: the graceful stop did not wait for the output "
      .. "(nothing was left to send?)")
    server:signal("TERM")
    local status, took = exit_within(server, 2)
    assert(status, "the host was still running 2 s after the second SIGTERM:\n"
      .. server:stderr())
    assert.same({"exit", 128 + 15}, {status.how, status.code})
    assert(took < 1, ("the host took %.2f s to exit after the second SIGTERM"):format(took))
  end)
end)
