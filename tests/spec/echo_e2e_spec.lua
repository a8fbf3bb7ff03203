-- echo_e2e_spec.lua: scripts/echo.lua served by the real luahost executable on every
-- selector backend: many concurrent clients, a client that half-closes, and a callback
-- that raises while other clients are being served.
local T = require "luahost.test"
local echo_many = require "support.echo_many"

local BACKENDS = {"epoll", "poll", "select"}
local ECHO = "scripts/echo.lua"

-- Where two byte strings first differ, for messages that do not print 64 KiB of noise.
local function mismatch(expected, actual)
  if expected == actual then return nil end
  local n = math.min(#expected, #actual)
  for i = 1, n do
    if expected:byte(i) ~= actual:byte(i) then
      return string.format("%d bytes expected, %d received, first difference at byte %d",
        #expected, #actual, i)
    end
  end
  return string.format("%d bytes expected, %d received (one is a prefix of the other)",
    #expected, #actual)
end

-- Every job's bytes came back whole; eof too when asked. Reports all failures at once.
local function assert_all_echoed(jobs, results, want_eof, seed)
  local failures = {}
  for i, job in ipairs(jobs) do
    local r = results[i]
    local problem = r.error or mismatch(job.payload, r.received)
    if not problem and want_eof and not r.eof then problem = "no EOF after the echo" end
    if problem then
      failures[#failures + 1] = string.format("client %d (port %s): %s", i, r.port, problem)
    end
  end
  assert(#failures == 0, string.format("%d of %d clients failed (seed %d):\n%s", #failures,
    #jobs, seed, table.concat(failures, "\n")))
end

local function assert_no_errors_logged(server)
  local log = server:stderr()
  assert.is_nil(log:match("\n?[^\n]* error [^\n]*"), "unexpected error in the log:\n" .. log)
end

-- The soft limit on open files (ulimit -n) this process and its children have.
local function fd_limit()
  local sh = io.popen("ulimit -n")
  local limit = sh:read("a")
  sh:close()
  return tonumber(limit:match("%d+")) or math.huge -- "unlimited"
end

-- A copy of echo.lua that raises in its callback when a client sends "boom".
local RAISING_ECHO = [[
local luahost = require "luahost"
local sel = luahost.selector
local READ = luahost.EVENT_READ
local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 0))

local function on_read(conn)
  local data, err = conn:recv(65536)
  if data == nil then
    if err ~= "wouldblock" then conn:abort() end
  elseif data == "" then
    conn:close()
  elseif data:find("boom", 1, true) then
    error("boom requested by the client")
  else
    conn:write(data)
  end
end

local server = assert(luahost.listen(host, port))
sel:register(server, READ, function(listener)
  local conn = listener:accept()
  if conn then sel:register(conn, READ, on_read) end
end)
]]

describe("echo.lua under the luahost executable", function()
  for index, backend in ipairs(BACKENDS) do
    describe("with --selector " .. backend, function()
      it("echoes 64 KiB of random bytes, sent in random chunks, to each of 50 concurrent "
        .. "clients", function()
        local seed = 7342 + index
        math.randomseed(seed)
        local jobs = {}
        for i = 1, 50 do
          jobs[i] = {payload = T.random_bytes(64 * 1024)}
          jobs[i].chunks = echo_many.random_chunks(#jobs[i].payload, 1, 16384)
        end
        local server = T.spawn(ECHO, nil, {selector = backend})
        local results = echo_many.run("127.0.0.1", server.port, jobs, {timeout = 20})
        assert_all_echoed(jobs, results, false, seed)
        assert.is_true(server:alive(), "the server died:\n" .. server:stderr())
        assert_no_errors_logged(server)
        T.assert_graceful_stop(server)
      end)

      it("returns every byte and then EOF to clients that shut down their write side",
        function()
        local seed = 1000 + index
        math.randomseed(seed)
        local jobs = {}
        for i = 1, 10 do
          local payload = T.random_bytes(math.random(1, 128 * 1024))
          jobs[i] = {payload = payload, shutdown = true,
            chunks = echo_many.random_chunks(#payload, 1, 32768)}
        end
        local server = T.spawn(ECHO, nil, {selector = backend})
        local results = echo_many.run("127.0.0.1", server.port, jobs, {timeout = 20})
        assert_all_echoed(jobs, results, true, seed)

        -- The smallest case, step by step: a few bytes, shutdown, the bytes, EOF.
        local c = T.client("127.0.0.1", server.port, {timeout = 5})
        c:send("last words")
        c:shutdown()
        assert.equal("last words", c:read_all(5)) -- fails on a reset or no end within 5 s
        c:close()
        assert_no_errors_logged(server)
        T.assert_graceful_stop(server)
      end)

      it("logs a callback that raises with the peer's address and keeps serving the "
        .. "other clients", function()
        local server = T.spawn(T.tempfile(RAISING_ECHO), nil, {selector = backend})
        local others = {}
        for i = 1, 5 do
          others[i] = T.client("127.0.0.1", server.port, {timeout = 5})
          others[i]:echo("before " .. i) -- fails unless the same bytes come back
        end

        local bad = T.client("127.0.0.1", server.port, {timeout = 5})
        local bad_port = bad:local_port()
        bad:send("boom")
        local peer, message = server:wait_log("error in callback for (%S+): (.*)$", 5)
        assert.equal("127.0.0.1:" .. bad_port, peer)
        assert.matches("boom requested by the client", message, 1, true)
        -- The connection whose callback raised is closed by the host.
        assert.is_true(bad:closed(5), "the raising client's connection was not closed")
        bad:close()

        assert.is_true(server:alive(), "the server died:\n" .. server:stderr())
        for i, c in ipairs(others) do
          c:echo("after " .. i)
          c:close()
        end
        math.randomseed(index)
        local jobs = {}
        for i = 1, 10 do jobs[i] = {payload = T.random_bytes(16 * 1024)} end
        assert_all_echoed(jobs, echo_many.run("127.0.0.1", server.port, jobs), false, index)
        local _, errors = server:stderr():gsub("error in callback", "")
        assert.equal(1, errors, "exactly one callback error expected:\n" .. server:stderr())
        T.assert_graceful_stop(server)
      end)

      -- select(2) cannot watch an fd at or above FD_SETSIZE (1024): with that backend a
      -- server past ~1020 connections must turn the newest away, not stop accepting.
      it("serves 1100 connections at once, or closes those the backend cannot watch, and "
        .. "keeps accepting", function()
        if fd_limit() < 2400 then
          pending("needs ulimit -n of at least 2400, have " .. fd_limit())
          return
        end
        local server = T.spawn(ECHO, nil, {selector = backend})
        local early = T.client("127.0.0.1", server.port, {timeout = 5})
        local socks = T.clients("127.0.0.1", server.port, 1100)
        local _, counts = T.echo_each(socks, "ping", 5)
        local summary = string.format("of the 1100: %d echoed, %d closed by the server, "
          .. "%d wrong, %d left hanging; server log:\n%s", counts.echoed, counts.closed,
          counts.wrong, counts.timeout, server:stderr():sub(1, 2000))
        early:echo("during", 5) -- a client from before the flood
        for _, c in ipairs(socks) do c:close() end
        assert.is_true(server:alive(), "the server exited; " .. summary)
        local ok, late = pcall(T.client, "127.0.0.1", server.port, {timeout = 5})
        assert(ok, "no longer accepting after the flood (" .. tostring(late) .. "); " .. summary)
        late:echo("late", 5)
        late:close()
        early:echo("after", 5) -- a client from before the flood
        early:close()
        assert(counts.wrong == 0 and counts.timeout == 0, summary)
        if backend ~= "select" then assert.equal(1100, counts.echoed, summary) end
        -- The ceiling the host logged at start is the one it kept (the early client
        -- took one of it).
        local ceiling = tonumber(server:stderr():match("up to (%d+) connections"))
        if backend == "select" then
          assert.equal(ceiling - 1, counts.echoed, summary)
          assert.matches("(the select backend watches only fds below 1024)", server:stderr(),
            1, true)
        else
          assert(ceiling > 1100, summary)
        end
        T.assert_graceful_stop(server)
      end)

      it("echoes over IPv6 on ::1", function()
        local server = T.spawn(ECHO, {"[::1]:0"}, {selector = backend})
        assert.equal("::1", server.host)
        math.randomseed(index)
        local jobs = {}
        for i = 1, 5 do jobs[i] = {payload = T.random_bytes(32 * 1024)} end
        assert_all_echoed(jobs, echo_many.run("::1", server.port, jobs), false, index)
        T.assert_graceful_stop(server)
      end)
    end)
  end
end)
