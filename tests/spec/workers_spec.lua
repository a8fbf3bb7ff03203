-- workers_spec.lua: luahost --workers N: a master that runs no script starts N workers,
-- each a full host running the script; the master owns the listeners (port 0: one port
-- for all, bound and logged once), restarts a worker that dies (backing off while one
-- keeps failing at start, logged, the master staying up), passes SIGHUP on to every
-- worker (connections kept), stops them gracefully on SIGTERM (a second signal at once),
-- kills and replaces a worker that stops answering its heartbeat, and leaves no worker
-- behind when the master itself is killed.
local T = require "luahost.test"

-- Greets each client with "worker N/COUNT PID", then echoes. The number and pid come from
-- the worker that accepted, so a client knows which served it.
local GREETER = [[
local luahost = require "luahost"
local n, count = luahost.worker()
local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
local greeting = (GREETING or "worker") .. " " .. n .. "/" .. count .. " " .. pid .. "\n"
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function(listener)
  local conn = listener:accept()
  if not conn then return end
  conn:write(greeting)
  luahost.selector:register(conn, luahost.EVENT_READ, function(c)
    local data, err = c:recv()
    if data == nil then
      if err ~= "wouldblock" then c:abort() end
    elseif data == "" then
      c:close()
    else
      if data == "block\n" then
        luahost.log("info", "blocking")
        os.execute("sleep 3")
      end
      c:write(data)
    end
  end)
end)
]]

local function spawn(options, text)
  local opts = {"--workers", "2"}
  for _, o in ipairs(options or {}) do opts[#opts + 1] = o end
  return T.spawn(T.tempfile(text or GREETER), {}, {options = opts})
end

-- Connects a client and reads its greeting: the client, the worker's number and pid.
local function greeted(p)
  local c = T.client(p.host, p.port)
  local line = c:line()
  local n, pid = line:match("^%a+ (%d)/2 (%d+)$")
  assert(n, "unexpected greeting: " .. line)
  return c, tonumber(n), tonumber(pid)
end

-- Clients until each worker has taken some (the kernel spreads connections over the
-- workers' sockets by their addresses; 40 tries all on one side: about 1e-12).
local function clients_of_both(p)
  -- The master logs "listening on" at the first worker's request: wait until both serve
  -- (each says its fd limit once its script has run), or the first takes every client.
  p:wait_log("%[worker 1%] fd limit", 5)
  p:wait_log("%[worker 2%] fd limit", 5)
  local by = {[1] = {}, [2] = {}}
  local pids = {}
  for _ = 1, 40 do
    local c, n, pid = greeted(p)
    table.insert(by[n], c)
    pids[n] = pid
    if #by[1] >= 2 and #by[2] >= 2 then break end
  end
  assert(#by[1] > 0 and #by[2] > 0, ("40 clients went to one worker: %d and %d"):format(
    #by[1], #by[2]))
  return by, pids
end

local function alive(pid)
  return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true
end

local function kill(pid, signal)
  os.execute(("kill -%s %d 2>/dev/null"):format(signal, pid))
end

local function echo_all(clients, text)
  for _, c in ipairs(clients) do c:echo(text) end
end

describe("luahost --workers", function()
  it("serves one echo port from both workers, bound and logged once by the master", function()
    local p = spawn()
    local by, pids = clients_of_both(p)
    echo_all(by[1], "one\n")
    echo_all(by[2], "two\n")
    assert.are_not.equal(pids[1], pids[2])
    assert.equal(1, #p:log_lines("listening on", true), p:stderr())
    assert.equal(1, #p:log_lines("[master] listening on 127.0.0.1:" .. p.port, true))
    for _, port in ipairs(p:listening_ports()) do assert.equal(p.port, port) end
    for n = 1, 2 do -- each worker's lines carry its number
      assert.equal(1, #p:log_lines(("[worker %d] fd limit"):format(n), true), p:stderr())
    end
    T.assert_graceful_stop(p)
  end)

  it("luahost.worker() is 1, 1 without --workers", function()
    local srv = T.start(T.tempfile([[
      local luahost = require "luahost"
      N, COUNT = luahost.worker()
      luahost.after(10, function() end)
    ]]))
    assert.same({1, 1}, {srv.env.N, srv.env.COUNT})
  end)

  it("replaces a worker killed with SIGKILL; the other worker's clients are untouched",
    function()
    local p = spawn()
    local by, pids = clients_of_both(p)
    kill(pids[1], "KILL")
    p:wait_log("%[master%] worker 1 was killed by signal 9 .* restarting it in")
    local new_pid = tonumber(p:wait_log("%[master%] worker 1 started %(pid (%d+)%)", 5, 2))
    for _, c in ipairs(by[1]) do assert.is_true(c:closed()) end
    echo_all(by[2], "still here\n")
    -- The replacement serves on the same port, from the same listener.
    T.wait_until(function()
      local _, n, pid = greeted(p)
      return n == 1 and pid == new_pid
    end, 5, "a client served by the new worker 1")
    assert.equal(1, #p:log_lines("listening on", true))
    assert.equal(2, #p:listening_ports(), "the master bound a socket anew") -- one a slot
    T.assert_graceful_stop(p)
  end)

  it("keeps restarting a script that fails at start, backing off, the master up", function()
    local p = T.spawn(T.tempfile("error('no good at start')"), {},
      {options = {"--workers", "1"}, listen = false})
    p:wait_log("backing off", 5)
    local delays = {}
    for _, line in ipairs(p:log_lines("restarting it in")) do
      delays[#delays + 1] = tonumber(line:match("restarting it in ([%d.]+) s"))
    end
    assert(#delays >= 2 and delays[#delays] > delays[1], p:stderr())
    assert(p:log_lines("luahost [worker 1]: ", true)[1]:find("no good at start", 1, true),
      p:stderr())
    assert(p:alive(), tostring(p))
    T.assert_graceful_stop(p)
  end)

  it("passes SIGHUP on: every worker reloads and keeps its connections", function()
    local path = T.tempfile(GREETER)
    local p = T.spawn(path, {}, {options = {"--workers", "2"}})
    local by = clients_of_both(p)
    local f = assert(io.open(path, "w"))
    f:write("GREETING = 'hello'\n" .. GREETER)
    f:close()
    p:signal("HUP")
    p:wait_log("%[master%] SIGHUP received")
    p:wait_log("%[worker 1%] reloaded")
    p:wait_log("%[worker 2%] reloaded")
    echo_all(by[1], "kept\n")
    echo_all(by[2], "kept\n")
    local c = T.client(p.host, p.port)
    assert.matches("^hello %d/2 %d+$", c:line())
    T.assert_graceful_stop(p)
  end)

  -- Regression: a SIGHUP passed on to a worker still running its main chunk killed it (a
  -- reload of what it was loading anyway), and it was restarted as one failing at start.
  it("lets a SIGHUP pass a worker still running its main chunk", function()
    local p = T.spawn(T.tempfile([[
      local luahost = require "luahost"
      luahost.log("info", "main chunk running")
      os.execute("sleep 1")
      luahost.selector:register(assert(luahost.listen("127.0.0.1", 0)), luahost.EVENT_READ,
        function(server) server:accept() end)
    ]]), {}, {options = {"--workers", "1"}, listen = false})
    p:wait_log("%[worker 1%] main chunk running", 5)
    p:signal("HUP")
    p:wait_log("%[master%] SIGHUP received", 5)
    p:wait_log("%[worker 1%] fd limit", 5)
    assert.equal(0, #p:log_lines("was killed by signal", true), p:stderr())
    assert.equal(1, #p:log_lines("started (pid", true), p:stderr())
    p:signal("HUP") -- serving, it reloads
    p:wait_log("%[worker 1%] reloaded", 5)
    T.assert_graceful_stop(p)
  end)

  it("stops gracefully on SIGTERM; a second signal stops at once", function()
    local p = spawn()
    local by, pids = clients_of_both(p)
    T.assert_graceful_stop(p)
    assert.is_true(by[1][1]:closed() and by[2][1]:closed())
    assert(not alive(pids[1]) and not alive(pids[2]), "a worker outlived the master")

    p = spawn()
    by, pids = clients_of_both(p)
    by[1][1]:send("block\n") -- worker 1's loop is stuck for 3 s: its graceful stop waits
    p:wait_log("%[worker 1%] blocking")
    p:signal("TERM")
    p:wait_log("%[master%] SIGTERM received")
    assert(p:alive(), tostring(p))
    p:signal("TERM")
    local status = p:wait(2)
    assert(status, "the master still ran 2 s after a second SIGTERM:\n" .. p:stderr())
    assert.same({"exit", 143}, {status.how, status.code})
    assert(not alive(pids[1]) and not alive(pids[2]), "a worker outlived the master")
  end)

  it("does not restart a worker that ends by itself, and exits 0 once none is left", function()
    local p = T.spawn(T.tempfile([[
      local luahost = require "luahost"
      assert(luahost.listen("127.0.0.1", 0))
      luahost.after(0.3, luahost.stop)
    ]]), {}, {options = {"--workers", "2"}})
    local status = p:wait(5)
    assert(status, tostring(p))
    assert.same({"exit", 0}, {status.how, status.code}, p:stderr())
    assert.equal(2, #p:log_lines("started (pid", true), p:stderr())
    assert.equal(2, #p:log_lines("exited with status 0", true), p:stderr())
  end)

  it("leaves no worker behind when the master is killed", function()
    local p = spawn()
    local by, pids = clients_of_both(p)
    p:signal("KILL")
    assert(p:wait(2), "the master survived SIGKILL")
    T.wait_until(function() return not alive(pids[1]) and not alive(pids[2]) end, 5,
      "the workers to stop after their master died")
    assert.is_true(by[1][1]:closed() and by[2][1]:closed())
  end)

  it("kills and replaces a worker that stops answering its heartbeat", function()
    local p = spawn({"--max-callback-seconds", "1"})
    local by, pids = clients_of_both(p)
    kill(pids[2], "STOP") -- stopped, it answers nothing; its own watchdog cannot run
    p:wait_log("%[master%] worker 2 %(pid " .. pids[2] .. "%) has not answered", 4)
    p:wait_log("%[master%] worker 2 started", 4, 2)
    assert(not alive(pids[2]), "the stuck worker is still there")
    echo_all(by[1], "untouched\n")
    T.assert_graceful_stop(p)
  end)
end)
