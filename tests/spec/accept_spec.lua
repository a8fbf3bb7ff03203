-- accept_spec.lua: the bundled scripts and the README's example take every client
-- waiting when their listener is ready, not one a wakeup. Regression: each accepted one
-- connection per readiness event, and under --selector poll a burst of 6,000 connects
-- overflowed the kernel's listen queue: 1,910 clients believed they were connected and
-- were never served.
local cjson = require "cjson"
local luahost = require "luahost"
local T = require "luahost.test"
local helpers = require "support.helpers"

local SHARE = 64 -- the host's accepts a round (docs/api.md, Limits)

-- Each script, and whether a line is what it tells a client that sent "ping\n" first.
local SCRIPTS = {
  {"scripts/echo.lua", function(line) return line == "ping" end},
  {"scripts/chat.lua", function(line) return cjson.decode(line).type == "welcome" end},
  {"examples/upper.lua", function(line) return line == "PING" end},
}

-- The bursts on real backends: select watches fds below FD_SETSIZE (1024) only, so its
-- burst is one that fits. Each connection is an fd in this process and one in the host.
local BURSTS = {
  {"scripts/echo.lua", "poll", 3000},
  {"scripts/echo.lua", "epoll", 3000},
  {"scripts/echo.lua", "select", 900},
  {"examples/upper.lua", "poll", 3000},
}

-- Reads from every socket until each has received a line, running srv; each first line
-- must pass `answers`.
local function assert_each_answered(srv, socks, answers)
  local got = {}
  srv:run_until(function()
    local done = 0
    for i, sock in ipairs(socks) do
      local data = sock:recv(4096)
      if data then got[i] = (got[i] or "") .. data end
      if got[i] and got[i]:find("\n", 1, true) then done = done + 1 end
    end
    return done == #socks
  end, nil, "every client to be answered")
  for i = 1, #socks do
    local line = got[i]:match("^[^\n]*")
    assert(answers(line), ("client %d was told %q"):format(i, line))
  end
end

-- n connects started at once to p, then waited for until each believes it is connected
-- (as the clients of the regression did). Fails naming those that are not.
local function burst(p, n)
  local socks = T.clients(p.host, p.port, n, {wait = false})
  local sel = luahost.new_selector()
  for i, c in ipairs(socks) do sel:register(c.sock, luahost.EVENT_WRITE, i) end
  local waiting, deadline = n, luahost.now() + 20
  while waiting > 0 and luahost.now() < deadline do
    for key in sel:select(0.5) do
      assert(key.fileobj:getpeername(), "connection " .. key.data .. " failed")
      sel:unregister(key.fileobj)
      waiting = waiting - 1
    end
  end
  sel:close()
  assert.equal(0, waiting, "connections still not made after 20 s")
  return socks
end

describe("accepting", function()
  for _, case in ipairs(SCRIPTS) do
    local script, answers = table.unpack(case)
    it(script .. " takes every waiting client when its listener is ready, up to the "
      .. "host's share of a round", function()
      local srv = T.start(script, nil, {selector = "sim"})
      local n, socks = SHARE + 36, {}
      for i = 1, n do
        socks[i] = assert(srv.sim.connect(srv.listener))
        assert(socks[i]:setblocking(false))
      end
      assert.equal(n, srv.sim.waiting(srv.listener))
      srv:step(0) -- one readiness event of the listener
      assert.equal(n - SHARE, srv.sim.waiting(srv.listener), "waiting after one event")
      srv:step(0) -- the rest the next round
      assert.equal(0, srv.sim.waiting(srv.listener))
      assert.equal(n, srv.luahost.stats().connections)
      for _, sock in ipairs(socks) do assert(sock:send("ping\n")) end
      assert_each_answered(srv, socks, answers)
      for _, sock in ipairs(socks) do sock:close() end
      srv:stop()
      T.assert_clean(srv)
    end)
  end

  for _, case in ipairs(BURSTS) do
    local script, backend, n = table.unpack(case)
    it(("%s serves every client of a burst of %d connects (--selector %s)")
      :format(script, n, backend), function()
      local soft = helpers.raise_own_nofile() -- the host raises its own limit
      if soft < n + 100 then
        pending(("needs ulimit -n of at least %d, have %s"):format(n + 100, soft))
        return
      end
      local p = T.spawn(script, nil, {selector = backend})
      local socks = burst(p, n)
      -- Each sends its own number, so a reply crossed between connections shows.
      local _, counts = T.echo_each(socks, function(i) return ("%05d\n"):format(i) end, 20)
      assert.equal(n, counts.echoed, ("echoed %d, closed %d, wrong %d, unanswered %d; log:\n%s")
        :format(counts.echoed, counts.closed, counts.wrong, counts.timeout,
          p:stderr():sub(1, 2000)))
      for _, c in ipairs(socks) do c:close() end
      T.assert_graceful_stop(p)
    end)
  end

  it("is done in a loop in the README's example, which is examples/upper.lua", function()
    local f = assert(io.open("README.md"))
    local readme = f:read("a")
    f:close()
    f = assert(io.open("examples/upper.lua"))
    local example = f:read("a")
    f:close()
    assert.matches("for _ = 1, 1000 do\n    local conn = listener:accept()", example, 1, true)
    assert.truthy(readme:find("```lua\n" .. example .. "```", 1, true),
      "README.md does not quote examples/upper.lua as it is")
  end)
end)
