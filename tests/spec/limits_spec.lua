-- limits_spec.lua: what the host says and does at its limits. Refusals past
-- --max-connections are all counted in the log (regression: one line said "1 refused so
-- far" when 168 were refused in that second); the connection ceiling it logs is the real
-- one under --selector select (FD_SETSIZE), not the fd limit's; new_selector collects
-- unreferenced selectors when fds run out instead of failing.
local T = require "luahost.test"

local ECHO = "scripts/echo.lua"

local function without_prlimit()
  if T.has_prlimit() then return false end
  pending("needs prlimit (util-linux) to lower the host's fd limit")
  return true
end

describe("the host at its limits", function()
  it("counts every refused connection in its log, a flood's within a second", function()
    local server = T.spawn(ECHO, nil, {options = {"--max-connections", "3"}})
    server:wait_log("up to 3 connections", 5)
    local socks = T.clients("127.0.0.1", server.port, 40)
    local _, counts = T.echo_each(socks, "hi", 5)
    assert.same({echoed = 3, closed = 37, wrong = 0, timeout = 0}, counts)
    -- The lines said at most once a second add up to all 37.
    server:wait_log("%(%d+ refused since the last such line, 37 in all%)", 3)
    local said = 0
    for _, line in ipairs(server:log_lines("refusing connections", true)) do
      said = said + tonumber(line:match("%((%d+) refused since the last such line"))
    end
    assert.equal(37, said, server:stderr())
    for _, c in ipairs(socks) do c:close() end
    T.assert_graceful_stop(server)
  end)

  it("logs the ceiling select can hold, below FD_SETSIZE, not the fd limit's", function()
    local server = T.spawn(ECHO, nil, {selector = "select"})
    local most = tonumber(server:wait_log("fd limit %d+: up to (%d+) connections %(the select "
      .. "backend watches only fds below 1024%)", 5))
    assert(most > 1000 and most < 1024, server:stderr())
    T.assert_graceful_stop(server)

    local epoll = T.spawn(ECHO, nil, {selector = "epoll", nofile = T.has_prlimit() and 3000})
    if T.has_prlimit() then epoll:wait_log("fd limit 3000: up to 2936 connections$", 5) end
    assert.equal(0, #epoll:log_lines("backend watches only", true))
    T.assert_graceful_stop(epoll)
  end)

  it("makes 25,000 unreferenced epoll selectors under an fd limit of 64", function()
    if without_prlimit() then return end
    local script = T.tempfile([[
      local luahost = require "luahost"
      -- Held, they exhaust the fds: that is still an error, said as one.
      local held = {}
      local ok, err = pcall(function()
        for i = 1, 100 do held[i] = luahost.new_selector("epoll") end
      end)
      print(ok, err)
      held = nil
      for _ = 1, 25000 do luahost.new_selector("epoll") end
      print("made 25000")
    ]])
    local run = T.run({script}, {nofile = {64, 64}, timeout = 20})
    assert.same({"exit", 0}, {run.how, run.code}, tostring(run))
    assert.matches("^false\t.*cannot create epoll selector: Too many open files\n",
      run.stdout)
    assert.matches("made 25000\n", run.stdout, 1, true)
  end)
end)
