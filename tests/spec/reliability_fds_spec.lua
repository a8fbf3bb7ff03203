-- reliability_fds_spec.lua: the host and its file descriptors: running out of them
-- (EMFILE under `prlimit --nofile=64:64`) without spinning, --max-connections and the
-- default limit, the fd limit raised at start, close-on-exec for every fd the host makes,
-- connect/close and connect/reset cycles that leak nothing, __gc that never closes a
-- reused fd, and a failed non-blocking connect reported as ECONNREFUSED.
local luahost = require "luahost"
local T = require "luahost.test"
local hostile = require "support.hostile"
local helpers = require "support.helpers"
local tcp = require "support.tcp"

local ECHO = "scripts/echo.lua"
local BACKENDS = {"epoll", "poll", "select"}
local WRITE = luahost.EVENT_WRITE
local now = luahost.now

-- Connects to port that are not waited for: a flood. Returns them in `into`.
local function flood(port, n, into)
  for _, c in ipairs(T.clients("127.0.0.1", port, n, {wait = false})) do into[#into + 1] = c end
  return into
end

-- How many of the clients the server has closed (EOF or reset seen; nothing is ever sent).
local function closed_by_server(clients)
  local n = 0
  for _, c in ipairs(clients) do
    if c:closed(0) then n = n + 1 end
  end
  return n
end

local function close_all(list)
  for _, s in ipairs(list) do s:close() end
end

-- Connects and echoes one message, retrying until timeout: for "served again".
local function served_within(port, timeout)
  local deadline, last = now() + timeout
  repeat
    local c
    local ok, why = pcall(function()
      c = T.client("127.0.0.1", port, {timeout = 1})
      c:echo("served", 1)
    end)
    if c then c:close() end
    if ok then return true end
    last = why
    T.sleep(0.05)
  until now() >= deadline
  return false, last
end

-- prlimit(1) lowers the host's fd limit; without it those tests say why they did not run.
local function without_prlimit()
  if T.has_prlimit() then return false end
  pending("needs prlimit (util-linux) to lower the host's fd limit")
  return true
end

-- A client of the server, its waits bounded by 5 s.
local function connect(server)
  return T.client("127.0.0.1", server.port, {timeout = 5})
end

-- Seconds since midnight of a log line's UTC stamp (2026-01-02T03:04:05.678Z).
local function stamp(line)
  local h, m, s = line:match("^%d+%-%d+%-%d+T(%d+):(%d+):([%d.]+)Z")
  return tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s)
end

-- The soft and hard fd limits of process pid, from /proc/PID/limits.
local function nofile(pid)
  local f = assert(io.open("/proc/" .. pid .. "/limits"))
  local text = f:read("a")
  f:close()
  local soft, hard = text:match("Max open files%s+(%S+)%s+(%S+)")
  return tonumber(soft) or soft, tonumber(hard) or hard
end

describe("reliability: file descriptors", function()
  for _, backend in ipairs(BACKENDS) do
    describe("with --selector " .. backend .. " under prlimit --nofile=64:64", function()
      it("does not spin when fds run out, keeps serving a connected client, sheds what "
        .. "waits, logs it at most once a second, and serves new clients once fds free up",
        function()
        if without_prlimit() then return end
        local server = T.spawn(ECHO, nil, {selector = backend, nofile = {64, 64},
          options = {"--max-connections", "1000"}})
        server:wait_log("fd limit 64: up to 1000 connections", 5)
        local probe = connect(server)
        probe:echo("before")

        local socks = flood(server.port, 200, {})
        server:wait_log("out of file descriptors", 5)

        -- One second of more connects arriving while fds are out: the server must wait,
        -- not spin, and the probe must keep getting its echoes.
        local cpu0, t0, worst = server:cpu_seconds(), now(), 0
        while now() - t0 < 1.0 do
          flood(server.port, 10, socks)
          worst = math.max(worst, probe:echo("during"))
          T.sleep(0.1)
        end
        local used, elapsed = server:cpu_seconds() - cpu0, now() - t0
        assert(server:alive(), "the server died: " .. tostring(server))
        assert(used < 0.3 * elapsed, string.format("the server used %.2f s of CPU in %.2f s "
          .. "while out of fds (spinning?)", used, elapsed))
        assert(worst < 0.5, string.format("a round trip of the connected client took %.2f s "
          .. "while the server was out of fds", worst))

        -- What could not be accepted is closed, not left hanging in the backlog: the
        -- server holds fewer than 64 connections, so at most that many stay open.
        T.wait_until(function()
          local open = #socks - closed_by_server(socks)
          return open < 64, open .. " open"
        end, 3, "the server to shed the connections it cannot hold")

        -- The warning is rate limited: consecutive lines at least about a second apart.
        local warnings = server:log_lines("out of file descriptors", true)
        assert(#warnings >= 1)
        assert.matches("Too many open files", warnings[1], 1, true)
        for i = 2, #warnings do
          local gap = stamp(warnings[i]) - stamp(warnings[i - 1])
          assert(gap >= 0.9, string.format("two 'out of file descriptors' lines %.3f s apart:"
            .. "\n%s\n%s", gap, warnings[i - 1], warnings[i]))
        end

        -- Once the flood goes away, fds free up and new clients are served again.
        close_all(socks)
        local ok, why = served_within(server.port, 5)
        assert(ok, "a new client was not served after the flood ended: " .. tostring(why)
          .. "\n" .. server:stderr())
        probe:echo("after")
        probe:close()
        T.assert_graceful_stop(server)
      end)

      it("by default holds half the fds as connections and refuses the rest, logged and "
        .. "counted", function()
        if without_prlimit() then return end
        local server = T.spawn(ECHO, nil, {selector = backend, nofile = {64, 64}, stats = true})
        server:wait_log("fd limit 64: up to 32 connections", 5)
        local socks = T.clients("127.0.0.1", server.port, 40)
        local outcomes, counts = T.echo_each(socks, "hi", 5)
        local summary = string.format("of 40: %d echoed, %d closed, %d wrong, %d hanging; "
          .. "log:\n%s", counts.echoed, counts.closed, counts.wrong, counts.timeout,
          server:stderr())
        assert(counts.echoed == 32 and counts.closed == 8, summary)

        local refusals = server:log_lines("refusing connections", true)
        assert(#refusals >= 1, "no refusal logged:\n" .. server:stderr())
        assert.matches("too many connections", refusals[1], 1, true)
        local stats = server:stats()
        assert.equal(32, stats.connections, "connections counted in luahost.stats()")
        assert.equal(8, stats.refused, "refusals counted in luahost.stats()")

        -- Room again once some go away.
        local served = {}
        for i, o in ipairs(outcomes) do
          if o == "echoed" and #served < 5 then
            served[#served + 1] = i
            socks[i]:close()
          end
        end
        T.wait_until(function()
          local n = server:stats().connections
          return n == 27, n
        end, 3, "the server to count 27 connections")
        local ok, why = served_within(server.port, 3)
        assert(ok, "not served once there was room: " .. tostring(why))
        T.assert_graceful_stop(server)
      end)
    end)

    it("past --max-connections 3 accepts and closes a new connection at once, logs it, and "
      .. "serves again once one leaves (--selector " .. backend .. ")", function()
      local server = T.spawn(ECHO, nil, {selector = backend,
        options = {"--max-connections", "3"}})
      server:wait_log("up to 3 connections", 5)
      local conns = {}
      for i = 1, 3 do
        conns[i] = connect(server)
        conns[i]:echo("conn " .. i)
      end
      local extra = connect(server)
      local t0 = now()
      assert(extra:closed(3), "the connection past the limit was left open")
      assert(now() - t0 < 1, "closing the connection past the limit took too long")
      server:wait_log("refusing connections: too many connections", 2)
      for i = 1, 3 do conns[i]:echo("still " .. i) end
      conns[1]:close()
      local ok, err = served_within(server.port, 3)
      assert(ok, "not served after a connection left: " .. tostring(err))
      T.assert_graceful_stop(server)
    end)
  end

  it("raises its soft fd limit to the hard limit and says what it can hold", function()
    if without_prlimit() then return end
    -- (A round trip before each stop: SIGTERM is graceful only once the loop runs.)
    local function round_trip(p)
      local c = connect(p)
      c:echo("hello")
      c:close()
    end
    -- (On epoll: select says what it can watch instead, which limits_spec checks.)
    local server = T.spawn(ECHO, nil, {nofile = {100, 3000}, selector = "epoll"})
    server:wait_log("fd limit 3000: up to 2936 connections", 5)
    local soft, hard = nofile(server.pid)
    assert.same({3000, 3000}, {soft, hard}, "Max open files of the running host")
    round_trip(server)
    T.assert_graceful_stop(server)

    local limited = T.spawn(ECHO, nil, {nofile = {100, 3000},
      options = {"--max-connections", "5"}})
    limited:wait_log("fd limit 3000: up to 5 connections", 5)
    round_trip(limited)
    T.assert_graceful_stop(limited)
  end)

  it("says nothing about the fd limit when the script leaves nothing to serve", function()
    if without_prlimit() then return end
    local r = T.run({T.tempfile("print('done')\n")}, {nofile = {100, 3000}, timeout = 10})
    assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
    assert.equal("done\n", r.stdout)
    assert.equal("", r.stderr, "the host logged for a script that serves nothing")
  end)

  -- A script holding one of every kind of fd the host makes, that answers "list" with
  -- what a child started by io.popen has open.
  local HOLDING = [[
local luahost = require "luahost"
local sel, READ = luahost.selector, luahost.EVENT_READ
local held = {}
local server = assert(luahost.listen("127.0.0.1", 0))
held[#held + 1] = assert(luahost.listen("127.0.0.1", 0)) -- a second listener
local _, port = server:getsockname()
held[#held + 1] = assert(luahost.connect("127.0.0.1", port)) -- an outgoing connection
held[#held + 1] = assert(luahost.socket("inet", "stream"))
held[#held + 1] = assert(luahost.socket("unix", "stream"))
held[#held + 1] = assert(luahost.socket("inet", "dgram"))
for _, backend in ipairs({"epoll", "poll", "select"}) do
  held[#held + 1] = luahost.new_selector(backend)
end
luahost.every(60, function() end)
sel:register(server, READ, function(listener)
  local conn = listener:accept()
  if not conn then return end
  held[#held + 1] = conn
  sel:register(conn, READ, function(c)
    local data = c:recv()
    if data == "" then return c:close() end
    if data and data:find("list", 1, true) then
      local ls = io.popen("ls -l /proc/$$/fd")
      c:write(ls:read("a") .. "END\n")
      ls:close()
    end
  end)
end)
]]

  -- The fd numbers a process started by the kit inherits from this one.
  local function inherited_fds()
    local r = T.run_command({"sh", "-c", "ls /proc/$$/fd"}, {timeout = 5})
    local fds = {}
    for fd in r.stdout:gmatch("%d+") do fds[tonumber(fd)] = true end
    return fds
  end

  for _, backend in ipairs(BACKENDS) do
    it("makes every fd close-on-exec: a child sees only the fds it inherited (--selector "
      .. backend .. ", --watch)", function()
      local server = T.spawn(T.tempfile(HOLDING), {}, {selector = backend,
        options = {"--watch"}})
      connect(server)
      local b = connect(server)
      b:send("list\n")
      T.wait_until(function() return b:received():find("END\n", 1, true) end, 5,
        "the fd listing")
      local listing = b:received()
      local expected, leaked = inherited_fds(), {}
      for _, fd in ipairs({0, 1, 2}) do expected[fd] = true end
      for fd, target in listing:gmatch("%s(%d+) %-> ([^\n]*)") do
        if not expected[tonumber(fd)] then leaked[#leaked + 1] = fd .. " -> " .. target end
      end
      assert(#leaked == 0, "fds the host made leaked into a child:\n"
        .. table.concat(leaked, "\n") .. "\nthe child's listing:\n" .. listing)
      T.assert_graceful_stop(server)
    end)
  end

  for _, backend in ipairs(BACKENDS) do
    it("after 1000 connect/close and 10,000 connect/reset cycles has no CLOSE_WAIT socket, "
      .. "no more fds and no more Lua memory than before (--selector " .. backend .. ")",
      function()
      local server = T.spawn(ECHO, nil, {selector = backend, stats = true})
      local function cycles(mode, n)
        local r = hostile({mode, server.port, n}, 60)
        assert(r.how == "exit" and r.code == 0, tostring(r))
      end
      -- A warm-up, so that tables and buffers have their working size.
      cycles("close", 200)
      cycles("reset", 500)
      T.wait_until(function()
        local n = server:stats().connections
        return n == 0, n
      end, 5, "the warm-up connections to be closed")
      local base_fds = server:settled_fd_count()
      local base = server:stats()

      cycles("close", 1000)
      cycles("reset", 10000)
      assert(server:alive(), "the server died: " .. tostring(server))
      T.wait_until(function()
        local n = tcp.state_count(server.port, "08")
        return n == 0, n
      end, 5, "no CLOSE_WAIT socket on port " .. server.port)
      T.wait_until(function()
        local n = server:fd_count()
        return n <= base_fds, n
      end, 5, "the fds to come back to " .. base_fds)
      local after
      T.wait_until(function()
        after = server:stats()
        return after.connections == 0, after.connections
      end, 5, "luahost.stats() to count no connection")
      local growth = after.lua_bytes - base.lua_bytes
      assert(growth < 32 * 1024, string.format("Lua memory grew by %d bytes over 11,000 "
        .. "connections (%d before, %d after)", growth, base.lua_bytes, after.lua_bytes))
      assert.equal(base.registered, after.registered, "registrations")

      local c = connect(server)
      c:echo("still serving")
      c:close()
      T.assert_graceful_stop(server)
    end)
  end

  describe("in process", function()
    local sel = luahost.selector
    local level
    before_each(function() level = luahost.log_level("warn") end)
    after_each(function() luahost.log_level(level) end)

    -- A listener and a client socket connected to it, with the accepted end.
    local function connected(server)
      local _, port = server:getsockname()
      local c = assert(luahost.connect("127.0.0.1", port))
      local s = helpers.accept(server)
      helpers.wait_ready(c, WRITE)
      return c, s
    end

    -- A client socket on exactly fd (just freed), connected to server, with the accepted
    -- end. Lower free fds, if any, are filled first by sockets closed afterwards.
    local function connected_on(server, fd)
      local fillers, s = {}, nil
      for _ = 1, 16 do
        s = assert(luahost.socket("inet", "stream"))
        if s:fileno() == fd then break end
        fillers[#fillers + 1] = s
        s = nil
      end
      close_all(fillers)
      assert(s, "no new socket landed on fd " .. fd)
      assert(s:setblocking(false))
      local _, port = server:getsockname()
      local rc = s:connect_ex("127.0.0.1", port)
      assert(rc == 0 or rc == 115, "connect_ex: " .. rc)
      local peer = helpers.accept(server)
      helpers.wait_ready(s, WRITE)
      return s, peer
    end

    -- Two sockets talk both ways: the fd is open and belongs to `c`.
    local function assert_talks(c, s, what)
      assert(c:send("ping"), what)
      assert.equal("ping", helpers.read_n(s, 4, 2, what), what)
      assert(s:send("pong"), what)
      assert.equal("pong", helpers.read_n(c, 4, 2, what), what)
    end

    for _, how in ipairs({"close", "abort"}) do
      it("collecting a socket after " .. how .. " never closes the fd a new socket reuses",
        function()
        local server = helpers.listen()
        local old, old_peer = connected(server)
        local fd = old:fileno()
        old[how](old)
        old_peer:close()
        local fresh, fresh_peer = connected_on(server, fd)
        finally(function() fresh:close() fresh_peer:close() server:close() end)
        old = nil -- luacheck: ignore 311
        collectgarbage()
        collectgarbage()
        assert.is_true(helpers.fd_open(fd), "collecting the old socket closed fd " .. fd)
        assert_talks(fresh, fresh_peer, "the new socket on the reused fd")
      end)
    end

    it("collecting a socket whose close is still flushing neither cuts the output short nor "
      .. "closes the fd once it is reused", function()
      local server = helpers.listen()
      local old, peer = connected(server)
      local payload = helpers.payload(16 * 1024 * 1024, 3)
      assert(old:setlimit(32 * 1024 * 1024))
      assert(old:write(payload) > 0, "the write was not buffered (the test needs output left)")
      local fd = old:fileno()
      old:close()
      old = nil -- luacheck: ignore 311
      collectgarbage()
      collectgarbage()
      local got = helpers.read_to_eof(peer, 10, "the lingering output")
      assert.equal(#payload, #got, "bytes delivered by the lingering close")
      assert(got == payload, "the lingering close delivered other bytes")
      peer:close()
      helpers.step_until(function() return not helpers.fd_open(fd) end, 5,
        "the lingering close to release fd " .. fd)
      local fresh, fresh_peer = connected(server)
      finally(function() fresh:close() fresh_peer:close() server:close() end)
      collectgarbage()
      collectgarbage()
      assert_talks(fresh, fresh_peer, "a new socket after the lingering close")
    end)

    it("reports a refused non-blocking connect once writable: recv and send return nil, "
      .. "\"Connection refused\", 111 and getsockopt(\"error\") 111", function()
      local probe = helpers.listen()
      local _, port = probe:getsockname()
      probe:close() -- nothing listens on port now
      local results = {}
      local function attempt(name, op)
        local s, err, errno = luahost.connect("127.0.0.1", port)
        if not s then -- refused at once: reported just the same
          results[name] = {nil, err, errno}
          return
        end
        sel:register(s, WRITE, function(sock)
          sel:unregister(sock)
          results[name] = table.pack(op(sock))
          sock:close()
        end)
      end
      attempt("recv", function(s) return s:recv(10) end)
      attempt("send", function(s) return s:send("x") end)
      attempt("getsockopt", function(s) return s:getsockopt("error") end)
      helpers.step_until(function()
        return results.recv and results.send and results.getsockopt
      end, 5, "the three connects to fail")
      assert.same({nil, "Connection refused", 111}, {results.recv[1], results.recv[2],
        results.recv[3]}, "recv")
      assert.same({nil, "Connection refused", 111}, {results.send[1], results.send[2],
        results.send[3]}, "send")
      if results.getsockopt[1] ~= nil then
        assert.equal(111, results.getsockopt[1], "getsockopt(\"error\")")
      end
    end)
  end)

  for _, backend in ipairs(BACKENDS) do
    it("reports a refused non-blocking connect to a script in the host (--selector "
      .. backend .. ")", function()
      local script = T.tempfile([[
local luahost = require "luahost"
local probe = assert(luahost.listen("127.0.0.1", 0))
local _, port = probe:getsockname()
probe:close()
for _, op in ipairs({"recv", "send", "getsockopt"}) do
  local s, err, errno = luahost.connect("127.0.0.1", port)
  if not s then
    print(op, "connect", err, errno)
  else
    luahost.selector:register(s, luahost.EVENT_WRITE, function(sock, mask)
      luahost.selector:unregister(sock)
      local a, b, c
      if op == "recv" then a, b, c = sock:recv(10)
      elseif op == "send" then a, b, c = sock:send("x")
      else a, b, c = sock:getsockopt("error") end
      print(op, mask, a, b, c)
      sock:close()
    end)
  end
end
]])
      local r = T.run({"--selector", backend, script}, {timeout = 10})
      assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
      local lines = {}
      for op, rest in r.stdout:gmatch("(%a+)\t([^\n]*)") do lines[op] = rest end
      for _, op in ipairs({"recv", "send"}) do
        assert(lines[op], "no result for " .. op .. ":\n" .. r.stdout)
        assert(lines[op]:match("nil\tConnection refused\t111$")
          or lines[op]:match("^connect\tConnection refused\t111$"),
          op .. " after a refused connect: " .. lines[op])
      end
      assert(lines.getsockopt, "no result for getsockopt:\n" .. r.stdout)
      assert(lines.getsockopt:match("\t111\tnil\tnil$")
        or lines.getsockopt:match("^connect\tConnection refused\t111$"),
        "getsockopt(\"error\") after a refused connect: " .. lines.getsockopt)
    end)
  end
end)
