-- testkit_spec.lua: specs of the test kit itself (lua/luahost/test.lua). Each one would
-- fail if the kit were broken: servers on every backend, the leak check, load failures,
-- bounded client waits, the virtual clock, in-process reloads, spawned executables (and
-- their cleanup when a test fails), clients of processes, process waits and readings,
-- T.run, T.wait_until, T.tempfile, and the kit's promise that sim specs are fast.
local luahost = require "luahost"
local lfs = require "lfs"
local T = require "luahost.test"

local now = luahost.now -- the test's own host: the real monotonic clock

local temp_files = {}

-- Writes body to a new temporary file (its name ending in suffix, when given), removed
-- after the test; returns its path.
local function script(body, suffix)
  local path = os.tmpname()
  temp_files[#temp_files + 1] = path
  if suffix then
    path = path .. suffix
    temp_files[#temp_files + 1] = path
  end
  local f = assert(io.open(path, "w"))
  f:write(body)
  f:close()
  return path
end

-- Escapes s for use as a literal in a Lua pattern.
local function literal(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- Calls fn(...), which must raise; returns the message.
local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, got none")
  return tostring(err)
end

-- This process's open fds, as fd -> what it points at.
local function open_fds()
  local fds = {}
  for name in lfs.dir("/proc/self/fd") do
    local fd = tonumber(name)
    if fd then fds[fd] = lfs.symlinkattributes("/proc/self/fd/" .. name, "target") or "?" end
  end
  return fds
end

-- Whether pid is a running process (neither gone nor a zombie).
local function running(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return false end
  local state = f:read("a"):match("%)%s+(%a)")
  f:close()
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- The command line of pid, its words joined by spaces.
local function cmdline(pid)
  local f = io.open("/proc/" .. pid .. "/cmdline", "rb")
  if not f then return "" end
  local text = f:read("a"):gsub("%z", " ")
  f:close()
  return text
end

-- Whether pid still runs; if it does, it is killed, so a broken kit leaks no process.
local function outlived(pid)
  if not running(pid) then return false end
  os.execute("kill -KILL " .. math.tointeger(tonumber(pid)) .. " 2>/dev/null")
  return true
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- A server that accepts and reads but never answers (except `greeting`, when given).
local function silent_script(greeting)
  return script(string.format([[
local luahost = require "luahost"
local sel = luahost.selector
local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 0))
local greeting = %q
local server = assert(luahost.listen(host, port))
sel:register(server, luahost.EVENT_READ, function(s)
  local conn = s:accept()
  if not conn then return end
  if greeting ~= "" then conn:write(greeting) end
  sel:register(conn, luahost.EVENT_READ, function(c)
    local data = c:recv()
    if data == "" then c:close() end
  end)
end)
]], greeting or ""))
end

-- echo that answers in upper case; it adopts the connections of the version before it.
local UPPER_ECHO = [[
local luahost = require "luahost"
local sel = luahost.selector
local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 7342))
local function on_read(conn)
  local data, err = conn:recv()
  if data == nil then
    if err ~= "wouldblock" then conn:abort() end
  elseif data == "" then
    conn:close()
  else
    conn:write(data:upper())
  end
end
local server = assert(luahost.listen(host, port))
sel:register(server, luahost.EVENT_READ, function(s)
  local conn = s:accept()
  if conn then sel:register(conn, luahost.EVENT_READ, on_read) end
end)
function luahost.adopt(key) sel:modify(key.fileobj, key.events, on_read) end
]]

local BACKENDS = {"sim", "epoll", "poll", "select"}

describe("the test kit", function()
  after_each(function()
    for _, path in ipairs(temp_files) do os.remove(path) end
    temp_files = {}
  end)

  describe("T.start", function()
    for _, backend in ipairs(BACKENDS) do
      it("runs echo on " .. backend .. ": a port, round trips, a clean stop", function()
        local srv = T.start("scripts/echo.lua", nil, {selector = backend})
        assert.equal(backend, srv.luahost.selector.backend)
        assert.equal("127.0.0.1", srv.host)
        assert.is_number(srv.port)
        assert.is_true(srv.port > 0 and srv.port < 65536)

        local a, b = T.client(srv), T.client(srv)
        a:send("hello\n")
        b:send("other\n")
        assert.equal("hello", a:line())
        assert.equal("other", b:line())
        a:send("a")
        a:send("b\n")
        assert.equal("ab\n", a:read(3))
        assert.equal("", a:received())
        a:shutdown() -- echo closes once the client has finished sending
        assert.is_true(a:closed(1))

        srv:stop()
        assert.is_true(srv.stopped)
        srv:stop() -- twice is harmless
        T.assert_clean(srv)
      end)
    end

    it("raises with the script's name and its error when the script raises", function()
      for _, backend in ipairs({"sim", "epoll"}) do
        local path = script([[
local luahost = require "luahost"
assert(luahost.listen("127.0.0.1", 0))
luahost.every(1, function() end)
error("no configuration found")
]])
        local before = open_fds()
        local err = error_of(T.start, path, nil, {selector = backend})
        assert.matches("T.start: " .. literal(path) .. " failed to load: ", err, 1)
        assert.matches("no configuration found", err, 1, true)
        -- What the script opened before raising (a listener) was closed with its host.
        assert.same(before, open_fds())
      end
    end)

    it("raises with the script's name and the compiler's message for a syntax error",
      function()
        local path = script("local x = = 1\n")
        local err = error_of(T.start, path, nil, {selector = "sim"})
        assert.matches("T.start: " .. literal(path) .. " failed to load: ", err, 1)
        assert.matches(literal(path) .. ":1: unexpected symbol", err)
      end)
  end)

  describe("T.assert_clean", function()
    it("fails when called before the server is stopped", function()
      local srv = T.start("scripts/echo.lua", nil, {selector = "sim"})
      local err = error_of(T.assert_clean, srv)
      assert.matches("stop the server first", err, 1, true)
      srv:stop()
      T.assert_clean(srv)
    end)

    it("passes for a script whose timers and connections the stop ends", function()
      local path = script([[
local luahost = require "luahost"
local sel = luahost.selector
local server = assert(luahost.listen("127.0.0.1", 0))
sel:register(server, luahost.EVENT_READ, function(s)
  local conn = s:accept()
  if conn then sel:register(conn, luahost.EVENT_READ, function(c) c:recv() end) end
end)
TICKS = 0
luahost.every(0.5, function() TICKS = TICKS + 1 end)
luahost.after(3600, function() end)
]])
      local srv = T.start(path, nil, {selector = "sim"})
      T.client(srv)
      srv:advance(1)
      assert.equal(2, srv.env.TICKS)
      assert.equal(2, srv.luahost.stats().timers)
      assert.equal(1, srv.luahost.stats().connections)
      srv:stop()
      T.assert_clean(srv)
    end)

    it("names a file the script keeps open", function()
      local path = script([[
local luahost = require "luahost"
KEPT = assert(io.open("/dev/null", "r"))
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function(s) s:accept() end)
]])
      local srv = T.start(path, nil, {selector = "sim"})
      srv:stop()
      local err = error_of(T.assert_clean, srv)
      assert.matches(literal(path) .. " left behind: fd %d+ open %(/dev/null%)$", err)
      srv.env.KEPT:close() -- and with it closed, nothing is left
      T.assert_clean(srv)
    end)

    it("names a socket the script keeps open", function()
      local path = script([[
local luahost = require "luahost"
KEPT = luahost.socket("inet", "stream")
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function(s) s:accept() end)
]])
      local srv = T.start(path, nil, {selector = "epoll"})
      srv:stop()
      local err = error_of(T.assert_clean, srv)
      assert.matches(literal(path) .. " left behind: fd %d+ open %(socket:%[%d+%]%)$", err)
      srv.env.KEPT:close()
      T.assert_clean(srv)
    end)

    for _, backend in ipairs({"sim", "epoll"}) do
      it("names connections the script keeps unregistered, on " .. backend, function()
        local path = script([[
local luahost = require "luahost"
CONNS = {}
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function(s)
  local conn = s:accept()
  if conn then CONNS[#CONNS + 1] = conn end
end)
]])
        local srv = T.start(path, nil, {selector = backend})
        local c = T.client(srv)
        srv:run_until(function() return #srv.env.CONNS == 1 end, 1, "the accept")
        c:close()
        srv:stop()
        local err = error_of(T.assert_clean, srv)
        assert.matches(literal(path) .. " left behind: 1 connections, fd %d+ open %(socket:", err)
        srv.env.CONNS[1]:abort()
        T.assert_clean(srv)
      end)
    end
  end)

  describe("client waits", function()
    for _, backend in ipairs({"sim", "epoll"}) do
      it("line() on a server that never answers fails within its timeout, on " .. backend,
        function()
          local srv = T.start(silent_script("no newline"), nil, {selector = backend})
          local c = T.client(srv)
          c:send("anyone there?\n")
          local t0 = now()
          local err = error_of(c.line, c, 0.1)
          local took = now() - t0
          assert.matches('line: nothing within 0.1 s; received: "no newline"', err, 1, true)
          assert.matches("^[^:]*testkit_spec%.lua:%d+: ", err) -- blames the test's own line
          assert.is_true(took >= 0.1 and took < 1, "took " .. took .. " s")
          -- read() and json() are bounded the same way; what arrived stays readable.
          -- Called from a spec's own function (read tail-calls its wait), not via pcall:
          local read_err = error_of(function()
            local got = c:read(100, 0.05)
            return got
          end)
          assert.matches("^[^:]*testkit_spec%.lua:%d+: read%(100%): nothing within 0.05 s",
            read_err)
          assert.matches("line: nothing within 0.05 s", error_of(c.json, c, 0.05))
          assert.equal("no newline", c:read(10))
        end)

      it("closed() is false within its timeout when the server keeps the connection, on "
        .. backend, function()
          local srv = T.start(silent_script(), nil, {selector = backend})
          local c = T.client(srv)
          local t0 = now()
          assert.is_false(c:closed(0.1))
          local took = now() - t0
          assert.is_true(took >= 0.1 and took < 1, "took " .. took .. " s")
        end)

      it("closed() is true as soon as the server closes, and line() says so, on " .. backend,
        function()
          local srv = T.start("scripts/echo.lua", nil, {selector = backend})
          local a, b = T.client(srv), T.client(srv)
          a:send("bye")
          a:shutdown()
          local t0 = now()
          assert.is_true(a:closed(T.TIMEOUT))
          assert.is_true(now() - t0 < 0.5)
          assert.equal("bye", a:received()) -- what came before the end stays readable
          b:send("half a line")
          b:shutdown()
          local err = error_of(b.line, b, T.TIMEOUT)
          assert.matches('line: the server closed the connection; received: "half a line"',
            err, 1, true)
          assert.is_true(now() - t0 < 1)
        end)
    end
  end)

  describe("the virtual clock", function()
    local TIMERS = [[
local luahost = require "luahost"
START = luahost.now()
FIRED = {}
local function note(name)
  FIRED[#FIRED + 1] = name .. "@" .. string.format("%.3f", luahost.now() - START)
end
luahost.after(1.5, function() note("after1.5") end)
luahost.after(0.5, function() note("after0.5") end)
local ticks = 0
luahost.every(1, function(t)
  ticks = ticks + 1
  note("every1")
  if ticks == 3 then t:cancel() end
end)
luahost.after(2.5, function()
  note("after2.5")
  luahost.after(0.25, function() note("nested") end)
end)
]]

    it("fires timers in order, each at its own virtual time, without sleeping", function()
      local srv = T.start(script(TIMERS), {}, {selector = "sim"})
      local t0 = now()
      assert.same({}, srv.env.FIRED)
      srv:advance(1)
      assert.same({"after0.5@0.500", "every1@1.000"}, srv.env.FIRED)
      T.advance(2)
      assert.same({"after0.5@0.500", "every1@1.000", "after1.5@1.500", "every1@2.000",
        "after2.5@2.500", "nested@2.750", "every1@3.000"}, srv.env.FIRED)
      assert.equal(0, srv.luahost.stats().timers) -- all fired, the repeating one cancelled
      srv:advance(3600)
      assert.equal(7, #srv.env.FIRED)
      assert.near(3603, srv.luahost.now() - srv.env.START, 1e-6)
      assert.is_true(now() - t0 < 0.5, "an hour of virtual time took " .. now() - t0 .. " s")
      srv:stop()
      T.assert_clean(srv)
    end)

    it("T.advance moves the clock of every running sim server", function()
      local one = T.start(script(TIMERS), {}, {selector = "sim"})
      local two = T.start(script(TIMERS), {}, {selector = "sim"})
      T.advance(0.75)
      assert.same({"after0.5@0.500"}, one.env.FIRED)
      assert.same({"after0.5@0.500"}, two.env.FIRED)
      one:stop()
      T.advance(0.5) -- a stopped server is left alone
      assert.near(0.75, one.luahost.now() - one.env.START, 1e-9)
      assert.near(1.25, two.luahost.now() - two.env.START, 1e-9)
      assert.same({"after0.5@0.500", "every1@1.000"}, two.env.FIRED)
    end)

    it("srv:advance raises on a real backend", function()
      local srv = T.start("scripts/echo.lua", nil, {selector = "epoll"})
      local err = error_of(srv.advance, srv, 1)
      assert.matches('advance needs a server started with {selector = "sim"}', err, 1, true)
    end)
  end)

  describe("srv:reload", function()
    for _, backend in ipairs({"sim", "epoll"}) do
      it("swaps in a changed script for a connected client and refuses broken ones, on "
        .. backend, function()
          local srv = T.start("scripts/echo.lua", nil, {selector = backend})
          local c = T.client(srv)
          c:send("abc\n")
          assert.equal("abc", c:line())

          -- Refused: it does not compile.
          local broken = script("local luahost = require 'luahost'\nthis is not Lua\n")
          local ok, err = srv:reload(broken)
          assert.is_nil(ok)
          assert.matches(literal(broken) .. ":2:", err)
          -- Refused: it raises after taking the listener over, listening on a new port and
          -- starting a timer; all of that is undone.
          local raising = script([[
local luahost = require "luahost"
local sel = luahost.selector
local server = assert(luahost.listen("127.0.0.1", 0))
sel:register(server, luahost.EVENT_READ, function(s) s:accept():write("WRONG\n") end)
assert(luahost.listen("127.0.0.1", 0))
luahost.every(1, function() end)
error("refusing on purpose")
]])
          ok, err = srv:reload(raising)
          assert.is_nil(ok)
          assert.matches("refusing on purpose", err, 1, true)
          assert.equal(1, srv.luahost.generation())
          assert.equal(1, #srv.luahost.listeners())
          assert.equal(srv.listener, srv.luahost.listeners()[1])
          assert.equal(0, srv.luahost.stats().timers)
          c:send("def\n")
          assert.equal("def", c:line())
          local old = T.client(srv) -- new clients still reach the old code
          old:send("ghi\n")
          assert.equal("ghi", old:line())

          -- Accepted: the connected clients are adopted, new ones reach it too.
          assert.is_true(srv:reload(script(UPPER_ECHO)))
          assert.equal(2, srv.luahost.generation())
          assert.equal(srv.listener, srv.luahost.listeners()[1])
          c:send("jkl\n")
          assert.equal("JKL", c:line())
          old:send("mno\n")
          assert.equal("MNO", old:line())
          local new = T.client(srv)
          new:send("pqr\n")
          assert.equal("PQR", new:line())

          srv:stop()
          T.assert_clean(srv)
        end)
    end
  end)

  describe("stopping servers when a test ends", function()
    local started = {} -- the servers each test started, checked by the test after it

    it("a server started by the test", function()
      started[1] = T.start("scripts/echo.lua", nil, {selector = "sim"})
      assert.is_number(started[1].port)
    end)

    it("a server started by a test that touches no global", function()
      -- Nothing here reads _ENV: the kit must not depend on finding it.
      started[2] = T.start("scripts/echo.lua", nil, {selector = "sim"})
    end)

    describe("in before_each", function()
      before_each(function()
        started[#started + 1] = T.start("scripts/echo.lua", nil, {selector = "sim"})
      end)

      it("a server started in before_each", function() end)

      it("were all stopped", function()
        started[4]:stop() -- this test's own, started after them: its fds would count
        local still_running = {}
        local names = {"the test's", "the global-free test's", "before_each's"}
        for i = 1, 3 do
          if not started[i].stopped then
            still_running[#still_running + 1] = names[i]
            started[i]:stop()
          end
        end
        assert.same({}, still_running)
        for i = 1, 3 do T.assert_clean(started[i]) end
      end)
    end)
  end)

  describe("T.spawn", function()
    -- Set by one test, checked by the next: the kit's cleanup runs when a test ends.
    local spawned_pid, user_finally_ran

    it("starts the executable and returns its port and pid", function()
      finally(function() user_finally_ran = "before" end) -- set before the kit chains its own
      local p = T.spawn("scripts/echo.lua")
      assert.is_number(p.pid)
      assert.equal("127.0.0.1", p.host)
      assert.is_true(p.port > 0 and p.port < 65536)
      assert.is_true(running(p.pid))
      assert.matches("scripts/echo.lua 127.0.0.1:0", cmdline(p.pid), 1, true)
      local c = T.client(p.host, p.port)
      c:send("over the wire\n")
      assert.equal("over the wire", c:line())
      c:close()
      assert.matches("listening on 127.0.0.1:" .. p.port, p:stderr(), 1, true)
      spawned_pid = p.pid
    end)

    it("stopped that process when its test ended, and ran the test's own finally", function()
      assert.is_number(spawned_pid)
      assert.is_false(outlived(spawned_pid), "pid " .. spawned_pid .. " still ran")
      assert.equal("before", user_finally_ran)
      local p = T.spawn("scripts/echo.lua")
      finally(function() user_finally_ran = "after" end) -- set after the kit's
      spawned_pid = p.pid
    end)

    it("also with the test's finally set after the kit's", function()
      assert.is_false(outlived(spawned_pid), "pid " .. spawned_pid .. " still ran")
      assert.equal("after", user_finally_ran)
    end)

    it("stops the process of a test that fails, and still runs that test's finally",
      function()
        -- Failing tests have to fail somewhere: in a busted run of their own.
        local notes = os.tmpname()
        temp_files[#temp_files + 1] = notes
        local spec = script(string.format([[
local T = require "luahost.test"
local function note(s)
  local f = assert(io.open(%q, "a"))
  f:write(s, "\n")
  f:close()
end
describe("failing tests", function()
  it("passes, using the kit first", function()
    T.start("scripts/echo.lua", nil, {selector = "sim"})
  end)
  it("fails with a finally set before T.spawn", function()
    finally(function() note("finally 1") end)
    note("pid " .. T.spawn("scripts/echo.lua").pid)
    error("failing on purpose 1")
  end)
  it("fails with a finally set after T.spawn", function()
    note("pid " .. T.spawn("scripts/echo.lua").pid)
    finally(function() note("finally 2") end)
    error("failing on purpose 2")
  end)
end)
]], notes), "_spec.lua") -- busted runs only files named like specs
        local busted = arg and arg[0] and arg[0]:match("busted$") and arg[0] or "busted"
        local lua = arg and arg[-1] or "lua5.4"
        local run = io.popen(string.format("%s %s --lpath=%s --cpath=%s -o TAP %s 2>&1",
          shell_quote(lua), shell_quote(busted), shell_quote(package.path),
          shell_quote(package.cpath), shell_quote(spec)))
        local output = run:read("a")
        local _, _, status = run:close()
        assert.is_true(status ~= 0, "the failing run exited 0:\n" .. output)
        output = "\n" .. output
        assert.matches("\nok 1 - ", output, 1, true)
        assert.matches("\nnot ok 2 - .*failing on purpose 1", output)
        assert.matches("\nnot ok 3 - .*failing on purpose 2", output)

        local f = assert(io.open(notes, "r"))
        local text = f:read("a")
        f:close()
        local pids = {}
        for pid in text:gmatch("pid (%d+)") do pids[#pids + 1] = pid end
        assert.equal(2, #pids, "notes:\n" .. text .. "\noutput:\n" .. output)
        local survivors = {}
        for _, pid in ipairs(pids) do
          if outlived(pid) then survivors[#survivors + 1] = pid end
        end
        assert.same({}, survivors, "processes that outlived their failed test")
        assert.matches("finally 1\n", text, 1, true)
        assert.matches("finally 2\n", text, 1, true)
      end)
  end)

  describe("clients of a process", function()
    -- An echo that never reads what arrives once it has been sent "stop reading".
    local STALLING = [[
local luahost = require "luahost"
local sel = luahost.selector
local server = assert(luahost.listen("127.0.0.1", 0))
sel:register(server, luahost.EVENT_READ, function(s)
  local conn = s:accept()
  if not conn then return end
  sel:register(conn, luahost.EVENT_READ, function(c)
    local data = c:recv()
    if data == "" then return c:close() end
    if data == "stop reading" then return sel:unregister(c) end
    if data then c:write(data) end
  end)
end)
]]

    it("T.client waits until connected, and fails naming the address when refused", function()
      local p = T.spawn("scripts/echo.lua")
      local c = T.client(p.host, p.port)
      assert.is_not_nil(c.sock:getpeername())
      local took = c:echo("round trip")
      assert.is_true(took >= 0 and took < T.TIMEOUT, "took " .. took .. " s")
      local port = p.port
      T.assert_graceful_stop(p)
      local err = error_of(T.client, "127.0.0.1", port)
      assert.matches("^[^:]*testkit_spec%.lua:%d+: T%.client: connect 127%.0%.0%.1:" .. port
        .. ": Connection refused$", err)
    end)

    it("echo returns the round trip's seconds, and fails saying where the bytes differ",
      function()
        local p = T.spawn("tests/support/bad_echo.lua", {"127.0.0.1:0", "upper"})
        local c = T.client(p.host, p.port, {timeout = 1})
        assert.is_true(c:echo("123") >= 0) -- upper case changes no digit
        local err = error_of(c.echo, c, "12a4")
        assert.matches('echo: sent "12a4", got back "12A4" (first difference at byte 3)', err,
          1, true)
        c:send("abc")
        assert.equal("ABC", c:read(3))
      end)

    it("read_all reads to the end, and fails on a server that keeps the connection, saying "
      .. "what came", function()
      local p = T.spawn("scripts/echo.lua")
      local c = T.client(p.host, p.port)
      c:send("last words")
      local err = error_of(c.read_all, c, 0.2)
      assert.matches('read_all: the server did not close the connection within 0.2 s; '
        .. 'received: "last words"', err, 1, true)
      c:shutdown()
      assert.equal("last words", c:read_all())
      assert.same({true, "eof"}, {c:closed(0)})
    end)

    it("closed says a reset from an end of stream, and read_all fails on the reset", function()
      -- Closes each connection with what arrived unread: the kernel resets it.
      local p = T.spawn(script([[
local sel = luahost.selector
sel:register(assert(luahost.listen("127.0.0.1", 0)), luahost.EVENT_READ, function(s)
  local conn = s:accept()
  if conn then sel:register(conn, luahost.EVENT_READ, function(c) c:close() end) end
end)
]]), {})
      local c = T.client(p.host, p.port)
      assert.is_false(c:closed(0.1))
      c:send("x")
      local closed, how = c:closed(1)
      assert.is_true(closed)
      assert.equal("Connection reset by peer", how)
      local d = T.client(p.host, p.port)
      d:send("y")
      assert.matches("read_all: the connection ended in an error (Connection reset by peer) "
        .. "after 0 bytes", error_of(d.read_all, d, 1), 1, true)
    end)

    it("fill sends until the server stops taking bytes, and received and local_port say what "
      .. "came and from where", function()
      local p = T.spawn(script(STALLING), {})
      local c = T.client(p.host, p.port, {rcvbuf = 4096})
      c:send("hello")
      T.wait_until(function() return c:received() == "hello" end, 1, "the echo")
      c:send("stop reading")
      T.sleep(0.1)
      local t0 = now()
      local sent = c:fill(64 * 1024 * 1024, 0.2)
      assert.is_true(sent > 0 and sent < 64 * 1024 * 1024, sent .. " bytes sent")
      local took = now() - t0
      assert.is_true(took >= 0.2 and took < 1, "took " .. took .. " s") -- settle, not more
      local d = T.client(p.host, p.port)
      assert.same({256, 0}, {d:fill(256), d:fill(0)})
      local _, port = c.sock:getsockname()
      assert.equal(port, c:local_port())
    end)

    it("T.clients connects n at a time and T.echo_each says how each echo went", function()
      local p = T.spawn("scripts/echo.lua")
      local list = T.clients(p.host, p.port, 30, {batch = 7})
      assert.equal(30, #list)
      local outcomes, counts = T.echo_each(list, "ping", 2)
      assert.same({echoed = 30, closed = 0, wrong = 0, timeout = 0}, counts)
      assert.equal("echoed", outcomes[30])
      -- Each its own bytes, of its own length.
      outcomes, counts = T.echo_each(list, function(i) return ("%d\n"):format(i * 1000) end, 2)
      assert.equal(30, counts.echoed)
      assert.equal("echoed", outcomes[1])
      local upper = T.spawn("tests/support/bad_echo.lua", {"127.0.0.1:0", "upper"})
      local abort = T.spawn("tests/support/bad_echo.lua", {"127.0.0.1:0", "abort"})
      local stall = T.spawn(script(STALLING), {})
      local quiet = T.client(stall.host, stall.port)
      quiet:send("stop reading")
      T.sleep(0.1)
      local mixed = {T.client(upper.host, upper.port), T.client(abort.host, abort.port), quiet,
        T.client(p.host, p.port)}
      outcomes, counts = T.echo_each(mixed, "abc", 1)
      assert.same({"wrong", "closed", "timeout", "echoed"}, outcomes)
      assert.same({echoed = 1, closed = 1, wrong = 1, timeout = 1}, counts)
    end)

    it("T.clients with wait = false returns at once, and fails naming a refused connection",
      function()
        local p = T.spawn("scripts/echo.lua")
        local storm = T.clients(p.host, p.port, 50, {wait = false})
        assert.equal(50, #storm)
        local _, counts = T.echo_each(storm, "x", 2)
        assert.equal(50, counts.echoed)
        local port = p.port
        T.assert_graceful_stop(p)
        assert.matches("T%.clients: connection 1 of 3 to 127%.0%.0%.1:" .. port
          .. ": Connection refused$", error_of(T.clients, "127.0.0.1", port, 3))
      end)

    local kept -- a client of the test before
    it("a client of a process, made by one test", function()
      local p = T.spawn("scripts/echo.lua")
      kept = T.client(p.host, p.port)
      assert.is_true(kept.sock:fileno() >= 0)
    end)

    it("was closed when that test ended", function()
      assert.is_true(kept.sock:fileno() < 0, "the client's socket is still open")
    end)
  end)

  describe("processes", function()
    -- Logs a line, then waits for SIGTERM: no listener.
    local QUIET = [[
io.stderr:write("started with ", table.concat(arg, " "), "\n")
io.stdout:write("to stdout\n")
luahost.every(60, function() end)
]]
    -- Listens; once a client connects, its callback spins for good.
    local STUCK = [[
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function(listener)
  if listener:accept() then
    luahost.log("info", "stuck")
    while true do end
  end
end)
]]

    it("T.spawn passes selector, log level and options, and with listen = false returns at "
      .. "once", function()
      local p = T.spawn(script(QUIET), {"a", "b"}, {selector = "poll", log_level = "warn",
        options = {"--max-output", "4096"}, listen = false})
      assert.is_nil(p.port)
      assert.equal("a b", p:wait_log("^started with (.*)$", 2))
      assert.matches(" --selector poll --log-level warn --max-output 4096 ", cmdline(p.pid), 1,
        true)
      assert.is_true(p:alive())
      assert.is_nil(p:wait(0.05)) -- still running
      p:signal("TERM")
      assert.same({how = "exit", code = 0}, p:wait(2))
      assert.is_false(p:alive())
      assert.equal("to stdout\n", p:stdout())
      assert.same({how = "exit", code = 0}, (p:stop())) -- stopping a stopped one is harmless
    end)

    it("T.spawn fails with the log of a script that does not listen", function()
      local err = error_of(T.spawn, script(QUIET), {}, {timeout = 0.3})
      assert.matches('T.spawn: no "listening on" line from', err, 1, true)
      assert.matches("not a line matching /.*/ within 0.3 s; its log:\n.*started with", err)
    end)

    it("wait_log returns captures, counts lines, and says what was logged when none matches",
      function()
        local p = T.spawn("scripts/echo.lua")
        local host, port = p:wait_log("listening on ([%d.]+):(%d+)$")
        assert.same({"127.0.0.1", tostring(p.port)}, {host, port})
        assert.same({"listening on"}, {p:wait_log("listening on")})
        local err = error_of(p.wait_log, p, "no such line", 0.2)
        assert.matches("^[^:]*testkit_spec%.lua:%d+: wait_log: not a line matching /no such "
          .. "line/ within 0%.2 s; its log:\n.*listening on 127%.0%.0%.1:" .. p.port, err)
        err = error_of(p.wait_log, p, "listening on", 0.2, 2)
        assert.matches("not 2 lines (it has 1) matching /listening on/", err, 1, true)
        assert.equal(1, #p:log_lines("listening on %d"))
        assert.equal(0, #p:log_lines("listening on %d", true))
        p:signal("TERM")
        err = error_of(p.wait_log, p, "never logged", 5)
        assert.matches("wait_log: scripts/echo.lua ended with exit 0 before logging a line "
          .. "matching /never logged/", err, 1, true)
      end)

    it("stop kills what SIGTERM does not end, and says so; assert_graceful_stop fails then",
      function()
        local p = T.spawn(script(STUCK), {}, {options = {"--max-instructions", "0"}})
        T.client(p.host, p.port)
        p:wait_log("stuck", 2)
        local t0 = now()
        local status, killed = p:stop("TERM", 0.3)
        assert.is_true(killed)
        assert.same({how = "signal", code = 9}, status)
        assert.is_true(now() - t0 < 2)
        local q = T.spawn(script(STUCK), {}, {options = {"--max-instructions", "0"}})
        T.client(q.host, q.port)
        q:wait_log("stuck", 2)
        assert.matches("did not stop within 0.3 s of SIGTERM and was killed; its log:\n",
          error_of(T.assert_graceful_stop, q, "TERM", 0.3), 1, true)
        local r = T.spawn("scripts/echo.lua")
        T.assert_graceful_stop(r, "INT")
        assert.matches("SIGINT received", r:stderr())
      end)

    it("reads the process's fds, memory, CPU time and listening ports", function()
      local p = T.spawn("scripts/echo.lua", {"127.0.0.1:0"}, {stats = true})
      T.client(p.host, p.port):echo("warm up")
      local base = p:settled_fd_count()
      assert.same({p.port}, p:listening_ports())
      local list = T.clients(p.host, p.port, 5)
      T.wait_until(function()
        local n = p:fd_count()
        return n == base + 5, n
      end, 2, "five more fds")
      local sockets = 0
      for _, target in pairs(p:fds()) do
        if target:match("^socket:") then sockets = sockets + 1 end
      end
      assert.is_true(sockets >= 7) -- the listener, the first client's, the five
      assert.is_true(p:rss() > 1024 * 1024)
      assert.is_true(p:cpu_seconds() >= 0)
      local stats = p:stats()
      assert.equal(6, stats.connections)
      assert.is_true(stats.lua_bytes > 0)
      for _, c in ipairs(list) do c:close() end
      T.wait_until(function() return p:stats().connections == 1 end, 3, "the five to go")
      T.assert_graceful_stop(p)
      assert.matches("has no /proc/%d+/status: it has exited", error_of(p.rss, p))
      local plain = T.spawn("scripts/echo.lua")
      assert.matches("stats: start the process with T.spawn(..., {stats = true})",
        error_of(plain.stats, plain), 1, true)
    end)

    it("T.run returns status, output and time, and kills a run past its timeout", function()
      local r = T.run({script("io.write('out') io.stderr:write('err') os.exit(3)")})
      assert.same({"exit", 3, "out", "err", false},
        {r.how, r.code, r.stdout, r.stderr, r.timed_out})
      assert.is_true(r.elapsed >= 0 and r.elapsed < 5)
      assert.equal("status exit 3\nstdout:\nout\nstderr:\nerr", tostring(r))
      local t0 = now()
      r = T.run({script("while true do end")}, {timeout = 0.3})
      assert.is_true(r.timed_out)
      assert.same({"signal", 9}, {r.how, r.code})
      assert.is_true(now() - t0 < 3)
      assert.matches("^status signal 9 %(timed out, killed%)\n", tostring(r))
    end)

    it("T.run_command runs any program, with variables set and unset", function()
      local r = T.run_command({"sh", "-c", 'echo "[$KIT_SET] [${KIT_UNSET-unset}]"'},
        {env = {KIT_SET = "yes", KIT_UNSET = false}})
      assert.same({"exit", 0, "[yes] [unset]\n"}, {r.how, r.code, r.stdout})
    end)

    it("opts.nofile runs the program under that fd limit", function()
      if not T.has_prlimit() then
        pending("needs prlimit (util-linux)")
        return
      end
      local r = T.run_command({"sh", "-c", "ulimit -Sn; ulimit -Hn"}, {nofile = {100, 200}})
      assert.equal("100\n200\n", r.stdout, tostring(r))
      local p = T.spawn("scripts/echo.lua", nil, {nofile = 64})
      p:wait_log("fd limit 64: ", 2)
    end)
  end)

  describe("T.wait_until", function()
    it("returns pred's value, and fails naming what it waited for and what it last saw",
      function()
        local n = 0
        assert.equal(3, T.wait_until(function()
          n = n + 1
          return n >= 3 and n
        end, 1))
        local t0 = now()
        local err = error_of(T.wait_until, function() return false, "seven" end, 0.1,
          "a miracle")
        assert.is_true(now() - t0 >= 0.1)
        assert.matches("^[^:]*testkit_spec%.lua:%d+: wait_until: a miracle still false after "
          .. "0%.1 s; last seen: seven$", err)
        err = error_of(T.wait_until, function() return nil end, 0,
          function() return "described " .. "late" end)
        assert.matches("wait_until: described late still false after 0 s$", err)
      end)
  end)

  describe("T.tempfile", function()
    local path
    it("writes a file in a directory of its own, made by one test", function()
      path = T.tempfile("return 42\n", "answer.lua")
      assert.matches("/answer%.lua$", path)
      assert.equal(42, dofile(path))
      assert.matches("/script%.lua$", T.tempfile(""))
    end)

    it("which is gone once that test ended", function()
      assert.is_nil(io.open(path, "r"), path .. " is still there")
      assert.is_nil(io.open(path:match("^(.*)/"), "r"), "its directory is still there")
    end)
  end)

  describe("the timing promise", function()
    it("a chat conversation and an idle timeout on sim take well under a second", function()
      local t0 = now()
      local srv = T.start("scripts/chat.lua", {"127.0.0.1:0", "--idle-timeout", "60"},
        {selector = "sim"})
      local a, b = T.client(srv), T.client(srv)
      local wa, wb = a:json(), b:json()
      assert.equal("welcome", wa.type)
      assert.equal("welcome", wb.type)
      assert.same({type = "join", name = wb.name}, a:json())
      a:send("hello\n")
      assert.same({type = "say", from = wa.name, text = "hello"}, b:json())
      T.advance(61)
      -- Each is told why, then closed; the one dropped second may first hear the other
      -- leave (chat sweeps its clients in table order).
      for _, c in ipairs({a, b}) do
        assert.is_true(c:closed(1))
        local last = c:received():match("([^\n]*)\n$")
        assert.same({type = "error", reason = "idle timeout"}, require("cjson").decode(last))
      end
      local took = now() - t0
      assert.is_true(took < 0.5, "took " .. took .. " s")
      srv:stop()
      T.assert_clean(srv)
    end)
  end)
end)

describe("the sim backend", function()
  it("lets the host see a client that closed while its sends would block", function()
    local srv = T.start("scripts/echo.lua", nil, {selector = "sim"})
    local c = T.client(srv)
    c:shape({would_block = 1000000})
    c:send("held back\n")
    assert.equal(1, srv.luahost.stats().flushing)
    c.sock:close()
    srv:run_until(function() return srv.luahost.stats().connections == 0 end, 1,
      "the host to drop the connection")
  end)

  it("runs a script that sets TCP options on its connections unchanged", function()
    local path = script([[
local luahost = require "luahost"
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function(listener)
  local conn = assert(listener:accept())
  assert(conn:setsockopt("nodelay", true))
  assert(conn:write("ok\n"))
end)
]], ".lua")
    local srv = T.start(path, {}, {selector = "sim"})
    assert.equal("ok", T.client(srv):line())
  end)
end)
