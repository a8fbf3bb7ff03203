-- task_leak_spec.lua: 10,000 luahost.task tasks, ended every way a task can end (it
-- returns, raises, times out, its peer resets, it is cancelled), leave no coroutine,
-- no registration, no timer and no fd behind. On the sim backend: the timeouts take no
-- real time.
local T = require "luahost.test"

local SCRIPT = [[
local luahost = require "luahost"
local task = require "luahost.task"
SEEN = setmetatable({}, {__mode = "k"}) -- every task's coroutine, held weakly
STARTED, ENDED, CANCEL = 0, {}, {}
local function ended(how) ENDED[how] = (ENDED[how] or 0) + 1 end

local function handle(s)
  SEEN[coroutine.running()] = true
  STARTED = STARTED + 1
  s:settimeout(5)
  local how = assert(s:receive("*l"))
  if how == "end" then
    s:send("bye\n")
    ended(how)
  elseif how == "error" then
    ended(how)
    error("raised on purpose")
  elseif how == "cancel" then
    CANCEL[#CANCEL + 1] = task.current()
    s:receive("*l")
    ended("not cancelled")
  else -- timeout or reset: the next receive fails so
    local _, err = s:receive("*l")
    if how == "timeout" and err == "timeout" or how == "reset" and err:find("reset") then
      ended(how)
    end
  end
end

local server = task.wrap(assert(luahost.listen("127.0.0.1", 0)))
task.spawn(function()
  while true do
    local client = server:accept()
    if client then task.spawn(handle, client) end
  end
end)
]]

local WAYS = {"end", "error", "timeout", "reset", "cancel"}

-- How many fds this process has open (each listing sees its own pipe once).
local function fd_count()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("a"):match("^(%d+)")
  f:close()
  local ls = io.popen("ls /proc/" .. pid .. "/fd")
  local n = 0
  for _ in ls:lines() do n = n + 1 end
  ls:close()
  return n
end

describe("luahost.task tasks ended every way", function()
  it("leave no coroutine, registration, timer or fd after 10,000 of them", function()
    local srv = T.start(T.tempfile(SCRIPT), nil, {selector = "sim", log_level = "warn"})
    local fds_before = fd_count() -- the host's and its listener's
    local env, task = srv.env, srv.env.require("luahost.task")
    local per_way = 2000
    for _ = 1, per_way // 20 do -- batches of 100 clients, 20 of each way
      local batch = {}
      for i = 1, 100 do
        local c = T.client(srv)
        c.way = WAYS[i % #WAYS + 1]
        c:send(c.way .. "\n")
        batch[i] = c
      end
      srv:step()
      for _, c in ipairs(batch) do
        if c.way == "reset" then c:reset() end
      end
      for _, t in ipairs(env.CANCEL) do assert.is_true(t:cancel()) end
      env.CANCEL = {}
      T.advance(5)
      for _, c in ipairs(batch) do
        assert.is_true(c:closed(), c.way .. ": the server did not close the connection")
        c:close()
      end
    end
    assert.equal(5 * per_way, env.STARTED)
    assert.same({["end"] = per_way, error = per_way, timeout = per_way, reset = per_way},
      env.ENDED)
    collectgarbage()
    collectgarbage()
    local left = 0
    for _ in pairs(env.SEEN) do left = left + 1 end
    assert.equal(0, left, "coroutines of ended tasks are still referenced")
    assert.equal(1, task.count(), "tasks left but the accept loop")
    local stats = srv.luahost.stats()
    assert.same({registered = 1, timers = 0, connections = 0, flushing = 0, lingering = 0},
      {registered = stats.registered, timers = stats.timers, connections = stats.connections,
       flushing = stats.flushing, lingering = stats.lingering})
    assert.equal(fds_before, fd_count(), "fds were left open")
    srv:stop()
    T.assert_clean(srv)
  end)
end)
