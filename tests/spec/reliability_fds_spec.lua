-- reliability_fds_spec.lua: the host and its file descriptors: running out of them
-- (EMFILE under `prlimit --nofile=64:64`) without spinning, --max-connections and the
-- default limit, the fd limit raised at start, close-on-exec for every fd the host makes,
-- connect/close and connect/reset cycles that leak nothing, __gc that never closes a
-- reused fd, and a failed non-blocking connect reported as ECONNREFUSED.
local luahost = require "luahost"
local process = require "support.process"
local client = require "support.client"
local helpers = require "support.helpers"
local rel = require "support.reliability"

local ECHO = "scripts/echo.lua"
local WRITE = luahost.EVENT_WRITE
local now = luahost.now

-- Non-blocking connects to port, not waited for: a flood. Returns them in `into`.
local function flood(port, n, into)
  for _ = 1, n do
    local s, err = luahost.connect("127.0.0.1", port)
    assert(s, "the flood's own connect failed: " .. tostring(err))
    into[#into + 1] = s
  end
  return into
end

-- How many of socks the server has closed (EOF or reset seen; nothing is ever sent).
local function closed_by_server(socks)
  local n = 0
  for _, s in ipairs(socks) do
    local data, err = s:recv(1)
    if data == "" or (data == nil and err ~= "wouldblock") then n = n + 1 end
  end
  return n
end

local function close_all(socks)
  for _, s in ipairs(socks) do s:close() end
end

-- Connects and echoes one message, retrying until timeout: for "served again".
local function served_within(port, timeout)
  local deadline, last = now() + timeout
  repeat
    local c, err = client.connect("127.0.0.1", port, 1)
    if c then
      local got, why = c:echo("served", 1)
      c:close()
      if got == "served" then return true end
      last = why
    else
      last = err
    end
    process.sleep(0.05)
  until now() >= deadline
  return false, last
end

-- prlimit(1) lowers the host's fd limit; without it those tests say why they did not run.
local function without_prlimit()
  if rel.have_prlimit() then return false end
  pending("needs prlimit (util-linux) to lower the host's fd limit")
  return true
end

describe("reliability: file descriptors", function()
  after_each(rel.stop_processes)

  for _, backend in ipairs(rel.BACKENDS) do
    describe("with --selector " .. backend .. " under prlimit --nofile=64:64", function()
      it("does not spin when fds run out, keeps serving a connected client, sheds what "
        .. "waits, logs it at most once a second, and serves new clients once fds free up",
        function()
        if without_prlimit() then return end
        local server = rel.start(ECHO, {selector = backend, nofile = {64, 64},
          options = {"--max-connections", "1000"}})
        assert(server:wait_for_log("fd limit 64: up to 1000 connections", 5))
        local probe = assert(client.connect("127.0.0.1", server.port))
        rel.timed_echo(probe, "before")

        local socks = flood(server.port, 200, {})
        finally(function() close_all(socks) end)
        assert(server:wait_for_log("out of file descriptors", 5))

        -- One second of more connects arriving while fds are out: the server must wait,
        -- not spin, and the probe must keep getting its echoes.
        local cpu0, t0, worst = rel.cpu_seconds(server.pid), now(), 0
        while now() - t0 < 1.0 do
          flood(server.port, 10, socks)
          worst = math.max(worst, rel.timed_echo(probe, "during"))
          process.sleep(0.1)
        end
        local used, elapsed = rel.cpu_seconds(server.pid) - cpu0, now() - t0
        rel.assert_alive(server)
        assert(used < 0.3 * elapsed, string.format("the server used %.2f s of CPU in %.2f s "
          .. "while out of fds (spinning?)", used, elapsed))
        assert(worst < 0.5, string.format("a round trip of the connected client took %.2f s "
          .. "while the server was out of fds", worst))

        -- What could not be accepted is closed, not left hanging in the backlog: the
        -- server holds fewer than 64 connections, so at most that many stay open.
        local open
        rel.wait_until("the server to shed the connections it cannot hold", 3, function()
          open = #socks - closed_by_server(socks)
          return open < 64
        end)

        -- The warning is rate limited: consecutive lines at least about a second apart.
        local warnings = rel.lines_with(server:stderr(), "out of file descriptors")
        assert(#warnings >= 1)
        assert.matches("Too many open files", warnings[1], 1, true)
        for i = 2, #warnings do
          local gap = rel.stamp(warnings[i]) - rel.stamp(warnings[i - 1])
          assert(gap >= 0.9, string.format("two 'out of file descriptors' lines %.3f s apart:"
            .. "\n%s\n%s", gap, warnings[i - 1], warnings[i]))
        end

        -- Once the flood goes away, fds free up and new clients are served again.
        close_all(socks)
        local ok, why = served_within(server.port, 5)
        assert(ok, "a new client was not served after the flood ended: " .. tostring(why)
          .. "\n" .. server:stderr())
        rel.timed_echo(probe, "after")
        probe:close()
        rel.assert_graceful_stop(server)
      end)

      it("by default holds half the fds as connections and refuses the rest, logged and "
        .. "counted", function()
        if without_prlimit() then return end
        local server = rel.start(ECHO, {selector = backend, nofile = {64, 64}, stats = true})
        assert(server:wait_for_log("fd limit 64: up to 32 connections", 5))
        local socks = assert(client.open_many("127.0.0.1", server.port, 40))
        finally(function() close_all(socks) end)
        local outcomes = client.echo_each(socks, "hi", 5)
        local counts = {echoed = 0, closed = 0, wrong = 0, timeout = 0}
        for _, o in ipairs(outcomes) do counts[o] = counts[o] + 1 end
        local summary = string.format("of 40: %d echoed, %d closed, %d wrong, %d hanging; "
          .. "log:\n%s", counts.echoed, counts.closed, counts.wrong, counts.timeout,
          server:stderr())
        assert(counts.echoed == 32 and counts.closed == 8, summary)

        local refusals = rel.lines_with(server:stderr(), "refusing connections")
        assert(#refusals >= 1, "no refusal logged:\n" .. server:stderr())
        assert.matches("too many connections", refusals[1], 1, true)
        local stats = rel.stats(server)
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
        rel.wait_until("the server to count 27 connections", 3,
          function() return rel.stats(server).connections == 27 end)
        local ok, why = served_within(server.port, 3)
        assert(ok, "not served once there was room: " .. tostring(why))
        rel.assert_graceful_stop(server)
      end)
    end)

    it("past --max-connections 3 accepts and closes a new connection at once, logs it, and "
      .. "serves again once one leaves (--selector " .. backend .. ")", function()
      local server = rel.start(ECHO, {selector = backend, options = {"--max-connections", "3"}})
      assert(server:wait_for_log("up to 3 connections", 5))
      local conns = {}
      finally(function() for _, c in ipairs(conns) do c:close() end end)
      for i = 1, 3 do
        conns[i] = assert(client.connect("127.0.0.1", server.port))
        rel.timed_echo(conns[i], "conn " .. i)
      end
      local extra = assert(client.connect("127.0.0.1", server.port))
      conns[4] = extra
      local t0 = now()
      local closed, why = extra:wait_closed(3)
      assert(closed, "the connection past the limit was left open: " .. tostring(why))
      assert(now() - t0 < 1, "closing the connection past the limit took too long")
      assert(server:wait_for_log("refusing connections: too many connections", 2))
      for i = 1, 3 do rel.timed_echo(conns[i], "still " .. i) end
      conns[1]:close()
      local ok, err = served_within(server.port, 3)
      assert(ok, "not served after a connection left: " .. tostring(err))
      rel.assert_graceful_stop(server)
    end)
  end

  it("raises its soft fd limit to the hard limit and says what it can hold", function()
    if without_prlimit() then return end
    -- (A round trip before each stop: SIGTERM is graceful only once the loop runs.)
    local function round_trip(p)
      local c = assert(client.connect("127.0.0.1", p.port))
      rel.timed_echo(c, "hello")
      c:close()
    end
    local server = rel.start(ECHO, {nofile = {100, 3000}})
    assert(server:wait_for_log("fd limit 3000: up to 2936 connections", 5))
    local soft, hard = rel.nofile(server.pid)
    assert.same({3000, 3000}, {soft, hard}, "Max open files of the running host")
    round_trip(server)
    rel.assert_graceful_stop(server)

    local limited = rel.start(ECHO, {nofile = {100, 3000}, options = {"--max-connections", "5"}})
    assert(limited:wait_for_log("fd limit 3000: up to 5 connections", 5))
    round_trip(limited)
    rel.assert_graceful_stop(limited)
  end)

  it("says nothing about the fd limit when the script leaves nothing to serve", function()
    if without_prlimit() then return end
    local path = process.temp_file("print('done')\n", ".lua")
    local r = process.run({"prlimit", "--nofile=100:3000", process.bin, path}, 10)
    assert.same({"exit", 0}, {r.how, r.code}, rel.show_run(r))
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

  -- The fd numbers a process started by process.run inherits from this one.
  local function inherited_fds()
    local r = process.run({"sh", "-c", "ls /proc/$$/fd"}, 5)
    local fds = {}
    for fd in r.stdout:gmatch("%d+") do fds[tonumber(fd)] = true end
    return fds
  end

  for _, backend in ipairs(rel.BACKENDS) do
    it("makes every fd close-on-exec: a child sees only the fds it inherited (--selector "
      .. backend .. ", --watch)", function()
      local script = process.temp_file(HOLDING, ".lua")
      local server = rel.start(script, {selector = backend, options = {"--watch"}, args = {}})
      local a = assert(client.connect("127.0.0.1", server.port))
      local b = assert(client.connect("127.0.0.1", server.port))
      finally(function() a:close() b:close() end)
      assert(b:send_all("list\n"))
      local listing = ""
      rel.wait_until("the fd listing", 5, function()
        local chunk = b.sock:recv(65536)
        if chunk and chunk ~= "" then listing = listing .. chunk end
        return listing:find("END\n", 1, true)
      end)
      local expected, leaked = inherited_fds(), {}
      for _, fd in ipairs({0, 1, 2}) do expected[fd] = true end
      for fd, target in listing:gmatch("%s(%d+) %-> ([^\n]*)") do
        if not expected[tonumber(fd)] then leaked[#leaked + 1] = fd .. " -> " .. target end
      end
      assert(#leaked == 0, "fds the host made leaked into a child:\n"
        .. table.concat(leaked, "\n") .. "\nthe child's listing:\n" .. listing)
      rel.assert_graceful_stop(server)
    end)
  end

  for _, backend in ipairs(rel.BACKENDS) do
    it("after 1000 connect/close and 10,000 connect/reset cycles has no CLOSE_WAIT socket, "
      .. "no more fds and no more Lua memory than before (--selector " .. backend .. ")",
      function()
      local server = rel.start(ECHO, {selector = backend, stats = true})
      local function cycles(mode, n)
        local r = rel.python({mode, server.port, n}, 60)
        assert(r.how == "exit" and r.code == 0, rel.show_run(r))
      end
      -- A warm-up, so that tables and buffers have their working size.
      cycles("close", 200)
      cycles("reset", 500)
      rel.wait_until("the warm-up connections to be closed", 5, function()
        return rel.stats(server).connections == 0
      end)
      local base_fds = rel.settled_fd_count(server.pid)
      local base = rel.stats(server)

      cycles("close", 1000)
      cycles("reset", 10000)
      rel.assert_alive(server)
      rel.wait_until("no CLOSE_WAIT socket on port " .. server.port, 5, function()
        return rel.tcp_state_count(server.port, "08") == 0
      end)
      rel.wait_until("the fds to come back to " .. base_fds, 5, function()
        return rel.fd_count(server.pid) <= base_fds
      end)
      local after
      rel.wait_until("luahost.stats() to count no connection", 5, function()
        after = rel.stats(server)
        return after.connections == 0
      end)
      local growth = after.lua_bytes - base.lua_bytes
      assert(growth < 32 * 1024, string.format("Lua memory grew by %d bytes over 11,000 "
        .. "connections (%d before, %d after)", growth, base.lua_bytes, after.lua_bytes))
      assert.equal(base.registered, after.registered, "registrations")

      local c = assert(client.connect("127.0.0.1", server.port))
      rel.timed_echo(c, "still serving")
      c:close()
      rel.assert_graceful_stop(server)
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

  for _, backend in ipairs(rel.BACKENDS) do
    it("reports a refused non-blocking connect to a script in the host (--selector "
      .. backend .. ")", function()
      local script = process.temp_file([[
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
]], ".lua")
      local r = process.run_luahost({"--selector", backend, script}, 10)
      assert.same({"exit", 0}, {r.how, r.code}, rel.show_run(r))
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
