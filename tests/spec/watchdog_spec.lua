-- watchdog_spec.lua: --max-callback-seconds, the way out of a callback stuck in one long
-- C call, where no instruction is counted and the budget cannot abort it: the process
-- ends with status 70 and one line naming the script and line where the stuck callback
-- is defined and the fd it was called for, so a supervisor can restart it. Callbacks
-- that return in time are never ended however long the server runs; a main chunk stuck
-- so (at start or on a reload) is ended the same way; without the option nothing is.
-- On every backend.
local T = require "luahost.test"

local BACKENDS = {"epoll", "poll", "select"}
local STATUS = 70

-- An echo server whose callback, on "find", makes one string.find that backtracks for
-- ages: no Lua instruction runs until it returns.
local STUCK = [[
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function(listener)
  local conn = listener:accept()
  if not conn then return end
  luahost.selector:register(conn, luahost.EVENT_READ, function(c)
    local data = c:recv(4096)
    if data == "" then c:close() return end
    if not data then return end
    if data:find("find", 1, true) then
      luahost.log("info", "stuck in fd " .. c:fileno())
      return ("a"):rep(30000):find(".-.-.-b")
    end
    c:write(data)
  end)
end)
]]
-- Where the connection's callback is defined.
local CALLBACK_LINE = select(2, STUCK:sub(1, STUCK:find("function(c)", 1, true))
  :gsub("\n", "")) + 1

-- The watchdog's line in the log, if any.
local function watchdog_line(p)
  return p:stderr():match("(luahost: watchdog:[^\n]*)")
end

-- Waits (bounded) for p to exit; fails with its log if it does not.
local function exited(p, timeout)
  local status = p:wait(timeout)
  assert(status, "still running " .. timeout .. " s later: " .. tostring(p))
  return status
end

describe("--max-callback-seconds", function()
  for _, backend in ipairs(BACKENDS) do
    it("ends a host stuck in one long C call with status 70, naming the callback's script "
      .. "and line and its fd, and never ends callbacks that return (--selector " .. backend
      .. ")", function()
      local path = T.tempfile(STUCK)
      local server = T.spawn(path, nil, {selector = backend,
        options = {"--max-callback-seconds", "1"}})
      local c = T.client("127.0.0.1", server.port, {timeout = 5})
      -- The server runs past the limit, serving callbacks that return in time.
      for i = 1, 6 do
        c:echo("round " .. i)
        T.sleep(0.3)
      end
      assert(server:alive(), "ended while no callback was stuck: " .. tostring(server))
      c:send("find")
      local fd = server:wait_log("stuck in fd (%d+)", 5)
      local status = exited(server, 10)
      assert.same({"exit", STATUS}, {status.how, status.code}, tostring(server))
      local line = watchdog_line(server)
      assert(line, "no watchdog line in the log: " .. tostring(server))
      assert.equal("luahost: watchdog: a callback has run for more than 1 s "
        .. "(--max-callback-seconds): defined at " .. path .. ":" .. CALLBACK_LINE
        .. ", called for fd " .. fd .. "; exiting with status " .. STATUS, line)
    end)
  end

  it("ends a main chunk stuck so at start, and on a reload, naming the main chunk",
    function()
    local stuck_chunk = 'luahost.log("info", "loading")\nlocal _ = ("a"):rep(30000)'
      .. ':find(".-.-.-b")\n'
    local path = T.tempfile(stuck_chunk)
    local r = T.run({"--max-callback-seconds", "1", path}, {timeout = 20})
    assert.same({"exit", STATUS}, {r.how, r.code}, tostring(r))
    assert.matches("luahost: watchdog: a main chunk has run for more than 1 s "
      .. "%(%-%-max%-callback%-seconds%): defined at " .. path:gsub("%p", "%%%0") .. ";",
      r.stderr)
    -- On a reload: the echo server, then the stuck chunk in its place.
    local echo = T.tempfile(io.open("scripts/echo.lua"):read("a"))
    local server = T.spawn(echo, nil, {options = {"--max-callback-seconds", "1"}})
    local f = assert(io.open(echo, "wb"))
    f:write(stuck_chunk)
    f:close()
    server:signal("HUP")
    local status = exited(server, 15)
    assert.same({"exit", STATUS}, {status.how, status.code}, tostring(server))
    assert.matches("a main chunk has run for more than 1 s", watchdog_line(server) or "")
  end)

  it("is off by default: a host stuck in a long C call stays stuck", function()
    local server = T.spawn(T.tempfile(STUCK))
    local c = T.client("127.0.0.1", server.port, {timeout = 5})
    c:echo("hello")
    c:send("find")
    server:wait_log("stuck in fd", 5)
    T.sleep(2.5)
    assert(server:alive(), "a host stuck in a C call ended by itself: " .. tostring(server))
    assert.is_nil(watchdog_line(server))
    server:stop("KILL")
  end)
end)
