-- reliability_scripts_spec.lua: scripts that misbehave inside the real host: errors that
-- are not strings (in callbacks, timers and while loading), runaway callbacks and the
-- instruction budget, --max-memory, misuse of the API, a callback that closes itself
-- and raises, and a callback that closes another connection whose event is pending in
-- the same batch while a new connection takes over its fd. Each time, only the guilty
-- connection goes, with one clear log line, and a probe client goes on being served.
local process = require "support.process"
local client = require "support.client"
local rel = require "support.reliability"

local FAULTY = "tests/support/faulty_server.lua"
local now = process.now

-- The lines of the log that report an error in a callback of the client on port.
local function errors_for(server, port)
  return rel.lines_with(server:stderr(), "error in callback for 127.0.0.1:" .. port .. ":")
end

-- The lines of the log that report a timer's error whose message is `message`, after the
-- "FILE:LINE: " of where it was raised (values that are not strings carry none of their
-- own; the host adds it).
local function timer_errors(log, message)
  local found = {}
  for _, line in ipairs(rel.lines_with(log, "error in timer: ")) do
    if line:match("error in timer: .-:%d+: (.*)$") == message then
      found[#found + 1] = line
    end
  end
  return found
end

-- Whether line is what luahost prints first for an error raised on line 2 of path.
local function load_error_line(line, path, message)
  return line == "luahost: " .. path .. ":2: " .. message
end

-- Sends command on a new connection, waits for the host to close that connection, and
-- returns the first line of the one error it logged for it. The probe must still echo.
local function provoke(server, probe, command, timeout)
  local c = assert(client.connect("127.0.0.1", server.port))
  local port = c:local_port()
  assert(c:send_all(command))
  local t0 = now()
  local closed, why, data = c:wait_closed(timeout or 5)
  c:close()
  if not closed then
    -- A callback that is never aborted blocks the loop, and SIGTERM with it.
    server:stop("KILL", 1)
    error(string.format("%q: the connection was still open %g s later (%s); log:\n%s",
      command, timeout or 5, tostring(why), server:stderr()), 2)
  end
  local took = now() - t0
  assert(data == "" or data == nil, string.format("%q: the callback went on to reply %q",
    command, tostring(data)))
  rel.assert_alive(server, "after " .. command)
  local line = rel.wait_until("the error for " .. command .. " to be logged", 2, function()
    return errors_for(server, port)[1]
  end)
  assert.equal(1, #errors_for(server, port), "error lines for one failed callback:\n"
    .. server:stderr())
  assert(rel.timed_echo(probe, "probe after " .. command, 2) < 0.5,
    "the probe was slow after " .. command)
  return line, took
end

describe("reliability: misbehaving scripts", function()
  after_each(rel.stop_processes)

  describe("errors that are not strings", function()
    it("in a callback are logged once, with the peer's address, and only that connection "
      .. "is closed", function()
      local server = rel.start(FAULTY)
      local probe = assert(client.connect("127.0.0.1", server.port))
      finally(function() probe:close() end)
      rel.timed_echo(probe, "hello")
      for _, case in ipairs({
        {"table", "(error object is a table value)"},
        {"nil", "(error object is a nil value)"},
        {"tostring", "a custom error object"},
        {"number", ": 42"},
      }) do
        local command, message = case[1], case[2]
        local line = provoke(server, probe, command)
        assert(line:find(message, 1, true), string.format("%s: expected %q in %q", command,
          message, line))
      end
      -- The traceback that follows says where the error came from.
      assert.matches("faulty_server.lua:%d+:", server:stderr())
      rel.assert_graceful_stop(server)
    end)

    it("in timers are logged with a traceback, and the loop and repeating timers go on",
      function()
      local script = process.temp_file([[
dofile("scripts/echo.lua")
luahost.after(0, function() error({}) end)
local n = 0
luahost.every(0.05, function(t)
  n = n + 1
  if n == 3 then t:cancel() end
  error(nil)
end)
luahost.after(0, function()
  error(setmetatable({}, {__tostring = function() return "a timer's custom error" end}))
end)
]], ".lua")
      local server = rel.start(script)
      local probe = assert(client.connect("127.0.0.1", server.port))
      finally(function() probe:close() end)
      rel.wait_until("three errors of the repeating timer", 3, function()
        return #timer_errors(server:stderr(), "(error object is a nil value)") >= 3
      end)
      local log = server:stderr()
      assert.equal(1, #timer_errors(log, "(error object is a table value)"), log)
      assert.equal(1, #timer_errors(log, "a timer's custom error"), log)
      assert.equal(3, #timer_errors(log, "(error object is a nil value)"), log)
      assert(log:find(script .. ":2:", 1, true), "no traceback naming the timer's line:\n"
        .. log)
      rel.timed_echo(probe, "still serving")
      rel.assert_graceful_stop(server)
    end)

    for _, case in ipairs({
      {"a table", "error({})", "(error object is a table value)"},
      {"nil", "error(nil)", "(error object is a nil value)"},
      {"an object with __tostring",
        "error(setmetatable({}, {__tostring = function() return 'broken config' end}))",
        "broken config"},
    }) do
      local what, chunk = case[1], {case[2], case[3]}
      it("raised as " .. what .. " while the script loads gives one line on stderr and exit "
        .. "status 1", function()
        local path = process.temp_file("local x = 1\n" .. chunk[1] .. "\n", ".lua")
        local r = process.run_luahost({path}, 10)
        assert.same({"exit", 1}, {r.how, r.code}, rel.show_run(r))
        assert(r.stderr:match("^[^\n]*\n$") and load_error_line(r.stderr:sub(1, -2), path,
          chunk[2]), rel.show_run(r))
        assert.equal("", r.stdout)
      end)
    end

    it("raised after the script began listening: the error is the last line, exit status 1, "
      .. "and the port is closed", function()
      local path = process.temp_file([[
local server = assert(luahost.listen("127.0.0.1", 0))
error({})
]], ".lua")
      local r = process.run_luahost({path}, 10)
      assert.same({"exit", 1}, {r.how, r.code}, rel.show_run(r))
      local lines = {}
      for line in r.stderr:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert(load_error_line(lines[#lines], path, "(error object is a table value)"), r.stderr)
      assert(#lines <= 2, "more than the listening line and the error:\n" .. r.stderr)
      local port = tonumber(r.stderr:match("listening on 127%.0%.0%.1:(%d+)"))
      if port then
        local c = client.connect("127.0.0.1", port, 1)
        if c then c:close() end
        assert.is_nil(c, "something still accepts on the script's port " .. port)
      end
    end)
  end)

  describe("runaway callbacks", function()
    it("while true do end is aborted fast under --max-instructions 1000000: logged with the "
      .. "budget, that connection dropped, the others served", function()
      local server = rel.start(FAULTY, {options = {"--max-instructions", "1000000"}})
      local probe = assert(client.connect("127.0.0.1", server.port))
      finally(function() probe:close() end)
      rel.timed_echo(probe, "hello")
      local line, took = provoke(server, probe, "spin", 5)
      assert(took < 1.5, string.format("the runaway callback ran %.2f s", took))
      assert(line:find("budget", 1, true) and line:find("--max-instructions", 1, true),
        "the log does not say the callback ran past its budget: " .. line)
      rel.assert_graceful_stop(server)
    end)

    it("is aborted under the default budget too, within seconds", function()
      local server = rel.start(FAULTY)
      local probe = assert(client.connect("127.0.0.1", server.port))
      finally(function() probe:close() end)
      local line, took = provoke(server, probe, "spin", 15)
      assert(took < 10, string.format("the runaway callback ran %.2f s", took))
      assert(line:find("budget", 1, true), "the log does not mention the budget: " .. line)
      rel.assert_graceful_stop(server)
    end)

    it("in a timer is aborted and logged, and the loop goes on", function()
      local script = process.temp_file([[
dofile("scripts/echo.lua")
luahost.after(0.1, function() while true do end end)
]], ".lua")
      local server = rel.start(script, {options = {"--max-instructions", "1000000"}})
      local probe = assert(client.connect("127.0.0.1", server.port))
      finally(function() probe:close() end)
      local line = assert(server:wait_for_log("error in timer: (.*)$", 5))
      assert(line:find("budget", 1, true), "the log does not mention the budget: " .. line)
      assert(rel.timed_echo(probe, "after the runaway timer") < 0.5)
      rel.assert_graceful_stop(server)
    end)

    -- A script that wraps its work in pcall, or runs it in coroutines (as copas-style
    -- code does), must not escape the budget: the host would be stuck for good, deaf even
    -- to SIGTERM.
    for _, command in ipairs({"spin-pcall", "spin-coroutine", "spin-old-coroutine",
      "spin-resume", "spin-nested-coroutine", "spin-after-coroutine"}) do
      it("is aborted when the loop is '" .. command .. "'", function()
        local server = rel.start(FAULTY, {options = {"--max-instructions", "1000000"}})
        local probe = assert(client.connect("127.0.0.1", server.port))
        finally(function() probe:close() end)
        rel.timed_echo(probe, "hello")
        provoke(server, probe, command, 3)
        rel.assert_graceful_stop(server)
      end)
    end
  end)

  describe("--max-memory 64 MiB", function()
    local MAX = tostring(64 * 1024 * 1024)

    it("a callback that allocates past it gets 'not enough memory', its connection is "
      .. "dropped, and the host lives on with its memory back", function()
      local server = rel.start(FAULTY, {options = {"--max-memory", MAX}, stats = true})
      local probe = assert(client.connect("127.0.0.1", server.port))
      finally(function() probe:close() end)
      rel.timed_echo(probe, "hello")
      for _, command in ipairs({"hog", "bigstring"}) do
        local line = provoke(server, probe, command, 10)
        assert(line:find("not enough memory", 1, true), command .. ": " .. line)
      end
      local stats = rel.stats(server)
      assert(stats.lua_bytes < 8 * 1024 * 1024, string.format("the Lua state still holds %d "
        .. "bytes after the failed allocations", stats.lua_bytes))
      local c = assert(client.connect("127.0.0.1", server.port))
      rel.timed_echo(c, "a new client")
      c:close()
      rel.assert_graceful_stop(server)
    end)

    -- While memory runs short, the accept callback fails too. The host closes the socket
    -- of a callback that raised, which for a listener would end the service for good.
    -- (Pausing and resuming the listener goes through the backend.)
    for _, backend in ipairs(rel.BACKENDS) do
      it("a shortage that passes does not stop the server from accepting for good (--selector "
        .. backend .. ")", function()
        local server = rel.start(FAULTY, {selector = backend, options = {"--max-memory", MAX}})
        local holder = assert(client.connect("127.0.0.1", server.port))
        finally(function() holder:close() end)
        rel.timed_echo(holder, "hello")
        assert(holder:send_all("hoard 1"))
        process.sleep(0.2) -- the memory is held now, for a second
        for _ = 1, 3 do -- (these may be served or refused: memory is short)
          local c = client.connect("127.0.0.1", server.port, 1)
          if c then
            c:echo("during", 0.3)
            c:close()
          end
        end
        process.sleep(1.2) -- the memory is free again
        local ok, why = pcall(function()
          local c = assert(client.connect("127.0.0.1", server.port, 2))
          rel.timed_echo(c, "after the shortage", 2)
          c:close()
        end)
        assert(ok, "no longer serving new clients after a passing memory shortage: "
          .. tostring(why) .. "\nlog:\n" .. server:stderr())
        rel.assert_graceful_stop(server)
      end)
    end
  end)

  it("misuse of the API in a callback raises a clear error, that connection is closed, and "
    .. "the loop goes on", function()
    local server = rel.start(FAULTY)
    local probe = assert(client.connect("127.0.0.1", server.port))
    finally(function() probe:close() end)
    rel.timed_echo(probe, "hello")
    local expected = {
      ["register-twice"] = "already registered",
      ["unregister-unknown"] = "is not registered",
      ["modify-bad"] = "invalid events 4",
      ["modify-unknown"] = "is not registered",
      ["register-closed"] = "attempt to use a closed socket",
      ["use-closed"] = "attempt to use a closed socket",
      ["register-bad-fd"] = "fd 1000000",
      ["step-inside"] = "inside a callback",
      ["close-selector"] = "cannot be closed",
    }
    for _, command in ipairs({"register-twice", "unregister-unknown", "modify-bad",
      "modify-unknown", "register-closed", "use-closed", "register-bad-fd", "step-inside",
      "close-selector"}) do
      local line = provoke(server, probe, command)
      assert(line:find(expected[command], 1, true), string.format("%s: expected %q in %q",
        command, expected[command], line))
      assert(line:find("faulty_server.lua:", 1, true), command .. ": the line does not say "
        .. "where in the script: " .. line)
    end
    rel.assert_graceful_stop(server)
  end)

  -- Commands: "hold" stops accepting (so connections wait in the backlog), "boom"
  -- unregisters its own connection, registers it again, closes it, accepts a waiting
  -- connection (which takes the fd just freed), and raises.
  local SELF_CLOSING = [[
local sel, READ = luahost.selector, luahost.EVENT_READ
local server = assert(luahost.listen("127.0.0.1", 0))
local on_read
local function on_accept(listener)
  local conn = listener:accept()
  if conn then sel:register(conn, READ, on_read) end
end
on_read = function(conn)
  local data = conn:recv(65536)
  if data == nil then return end
  if data == "" then return conn:close() end
  if data == "hold" then
    sel:unregister(server)
    conn:write("held")
  elseif data == "boom" then
    sel:unregister(conn)
    sel:register(conn, READ, on_read)
    local fd = conn:fileno()
    conn:close()
    local fresh = assert(server:accept())
    luahost.log("info", "the waiting connection took the same fd:", fresh:fileno() == fd)
    sel:register(fresh, READ, on_read)
    sel:register(server, READ, on_accept)
    error("boom after closing itself")
  else
    conn:write(data)
  end
end
sel:register(server, READ, on_accept)
]]

  for _, backend in ipairs(rel.BACKENDS) do
    it("a callback that unregisters, registers again, closes its own socket and raises: one "
      .. "close, one error line, and the connection now on its fd is left alone (--selector "
      .. backend .. ")", function()
      local script = process.temp_file(SELF_CLOSING, ".lua")
      local server = rel.start(script, {selector = backend, args = {}, stats = true})
      local probe = assert(client.connect("127.0.0.1", server.port))
      local victim = assert(client.connect("127.0.0.1", server.port))
      local waiting
      finally(function()
        probe:close()
        victim:close()
        if waiting then waiting:close() end
      end)
      rel.timed_echo(probe, "hello")
      assert(victim:send_all("hold"))
      assert.equal("held", assert(victim:recv_exact(4, 3)))
      waiting = assert(client.connect("127.0.0.1", server.port)) -- now in the backlog
      assert(victim:send_all("boom"))
      local closed, why = victim:wait_closed(5)
      assert.equal("eof", closed, "the raising connection: " .. tostring(why))
      assert(server:wait_for_log("error in callback for .*boom after closing itself", 5))
      assert(server:wait_for_log("the waiting connection took the same fd: true", 1),
        "setup: the waiting connection did not land on the freed fd:\n" .. server:stderr())
      local log = server:stderr()
      assert.equal(1, #rel.lines_with(log, "error in callback"), "error lines:\n" .. log)
      assert(rel.timed_echo(waiting, "on the reused fd", 2) < 0.5)
      rel.timed_echo(probe, "probe")
      assert.equal(2, rel.stats(server).connections, "connections the host counts")
      rel.assert_graceful_stop(server)
    end)
  end

  -- Commands: "join" makes a connection one of the pair, "hold" stops accepting, "pause"
  -- says "pausing" and blocks the loop for 0.3 s (so that both of the pair become
  -- readable in one batch), "swap" closes the other of the pair and accepts the waiting
  -- connections, the first of which takes the closed one's fd. A new connection logs
  -- STALE if it is called for READ with nothing to read: an event meant for the closed
  -- connection.
  local SWAPPING = [[
local sel, READ = luahost.selector, luahost.EVENT_READ
local server = assert(luahost.listen("127.0.0.1", 0))
local pair, on_read = {}, nil
local function on_accept(listener)
  local conn = listener:accept()
  if conn then sel:register(conn, READ, on_read) end
end
local function on_fresh(conn)
  local data, err = conn:recv(65536)
  if data == nil then
    if err == "wouldblock" then
      luahost.log("error", "STALE: READ with nothing to read on fd " .. conn:fileno())
    end
    return
  end
  if data == "" then return conn:close() end
  conn:write(data)
end
on_read = function(conn)
  local data = conn:recv(65536)
  if data == nil then return end
  if data == "" then return conn:close() end
  if data == "join" then
    pair[#pair + 1] = conn
    conn:write("joined")
  elseif data == "hold" then
    sel:unregister(server)
    conn:write("held")
  elseif data == "pause" then
    conn:write("pausing")
    local own = luahost.new_selector()
    for _ in own:select(0.3) do end
    own:close()
  elseif data == "swap" then
    local other = pair[1] == conn and pair[2] or pair[1]
    local fd = other:fileno()
    other:close()
    local landed = false
    for _ = 1, 8 do
      local fresh = server:accept()
      if not fresh then break end
      landed = landed or fresh:fileno() == fd
      sel:register(fresh, READ, on_fresh)
    end
    luahost.log("info", "a new connection took the closed one's fd:", landed)
    sel:register(server, READ, on_accept)
    conn:write("swapped")
  else
    conn:write(data)
  end
end
sel:register(server, READ, on_accept)
]]

  for _, backend in ipairs(rel.BACKENDS) do
    it("an event pending for a connection another callback closed is dropped, not delivered "
      .. "to the new connection on its fd (--selector " .. backend .. ")", function()
      local script = process.temp_file(SWAPPING, ".lua")
      local server = rel.start(script, {selector = backend, args = {}})
      local a = assert(client.connect("127.0.0.1", server.port))
      local b = assert(client.connect("127.0.0.1", server.port))
      local waiting = {}
      finally(function()
        a:close()
        b:close()
        for _, w in ipairs(waiting) do w:close() end
      end)
      local function ask(c, command, reply)
        assert(c:send_all(command))
        assert.equal(reply, assert(c:recv_exact(#reply, 3)))
      end
      ask(a, "join", "joined")
      ask(b, "join", "joined")
      ask(a, "hold", "held")
      for i = 1, 4 do waiting[i] = assert(client.connect("127.0.0.1", server.port)) end
      ask(a, "pause", "pausing") -- the loop is blocked 0.3 s: both swaps land in one batch
      assert(b:send_all("swap"))
      assert(a:send_all("swap"))
      -- Whichever callback runs first closes the other of the pair, whose event is stale.
      local state = {[a] = {data = ""}, [b] = {data = ""}}
      local function pump(c)
        local st = state[c]
        while not st.eof do
          local data, err = c.sock:recv(65536)
          if data == "" or (data == nil and err ~= "wouldblock") then
            st.eof = true
          elseif data then
            st.data = st.data .. data
          else
            return
          end
        end
      end
      local ok = pcall(rel.wait_until, "one of the pair to swap, the other to be closed", 3,
        function()
          pump(a)
          pump(b)
          return (state[a].eof and state[b].data == "swapped")
            or (state[b].eof and state[a].data == "swapped")
        end)
      assert(ok, string.format("a: %q%s, b: %q%s; log:\n%s", state[a].data,
        state[a].eof and " then closed" or "", state[b].data, state[b].eof and " then closed" or "",
        server:stderr()))
      assert(server:wait_for_log("a new connection took the closed one's fd: true", 3),
        "setup: no new connection landed on the closed one's fd:\n" .. server:stderr())
      for i, w in ipairs(waiting) do
        assert(rel.timed_echo(w, "waiting " .. i, 2) < 0.5)
      end
      local log = server:stderr()
      assert.equal(0, #rel.lines_with(log, "STALE"), "a stale event was delivered:\n" .. log)
      assert.equal(0, #rel.lines_with(log, " error "), "errors logged:\n" .. log)
      rel.assert_graceful_stop(server)
    end)
  end
end)
