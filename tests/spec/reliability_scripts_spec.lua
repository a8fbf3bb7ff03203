-- reliability_scripts_spec.lua: scripts that misbehave inside the real host: errors that
-- are not strings (in callbacks, timers and while loading), runaway callbacks and the
-- instruction budget, --max-memory, misuse of the API, a callback that closes itself
-- and raises, and a callback that closes another connection whose event is pending in
-- the same batch while a new connection takes over its fd. Each time, only the guilty
-- connection goes, with one clear log line, and a probe client goes on being served.
local T = require "luahost.test"

local FAULTY = "tests/support/faulty_server.lua"
local BACKENDS = {"epoll", "poll", "select"}
local now = require("luahost").now

-- The lines of the log that report an error in a callback of the client on port.
local function errors_for(server, port)
  return server:log_lines("error in callback for 127.0.0.1:" .. port .. ":", true)
end

-- A client of the server, its waits bounded by 5 s (or timeout).
local function connect(server, timeout)
  return T.client("127.0.0.1", server.port, {timeout = timeout or 5})
end

-- A probe client of the server, which has had its first echo.
local function probe_of(server)
  local probe = connect(server)
  probe:echo("hello")
  return probe
end

-- The lines of the log that report a timer's error whose message is `message`, after the
-- "FILE:LINE: " of where it was raised (values that are not strings carry none of their
-- own; the host adds it).
local function timer_errors(log, message)
  local found = {}
  for line in log:gmatch("[^\n]+") do
    if line:find("error in timer: ", 1, true)
      and line:match("error in timer: .-:%d+: (.-)\\nstack traceback:") == message then
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
  local c = connect(server)
  local port = c:local_port()
  c:send(command)
  local t0 = now()
  local closed = c:closed(timeout or 5)
  local data = c:received()
  c:close()
  if not closed then
    -- A callback that is never aborted blocks the loop, and SIGTERM with it.
    server:stop("KILL", 1)
    error(string.format("%q: the connection was still open %g s later; log:\n%s",
      command, timeout or 5, server:stderr()), 2)
  end
  local took = now() - t0
  assert(data == "", string.format("%q: the callback went on to reply %q", command, data))
  assert(server:alive(), "the server died after " .. command .. ": " .. tostring(server))
  local line = T.wait_until(function()
    return errors_for(server, port)[1]
  end, 2, "the error for " .. command .. " to be logged")
  assert.equal(1, #errors_for(server, port), "error lines for one failed callback:\n"
    .. server:stderr())
  assert(probe:echo("probe after " .. command, 2) < 0.5, "the probe was slow after " .. command)
  return line, took
end

describe("reliability: misbehaving scripts", function()
  describe("errors that are not strings", function()
    it("in a callback are logged once, with the peer's address, and only that connection "
      .. "is closed", function()
      local server = T.spawn(FAULTY)
      local probe = probe_of(server)
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
      T.assert_graceful_stop(server)
    end)

    it("in timers are logged with a traceback, and the loop and repeating timers go on",
      function()
      local script = T.tempfile([[
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
]])
      local server = T.spawn(script)
      local probe = connect(server)
      T.wait_until(function()
        return #timer_errors(server:stderr(), "(error object is a nil value)") >= 3
      end, 3, "three errors of the repeating timer")
      local log = server:stderr()
      assert.equal(1, #timer_errors(log, "(error object is a table value)"), log)
      assert.equal(1, #timer_errors(log, "a timer's custom error"), log)
      assert.equal(3, #timer_errors(log, "(error object is a nil value)"), log)
      assert(log:find(script .. ":2:", 1, true), "no traceback naming the timer's line:\n"
        .. log)
      probe:echo("still serving")
      T.assert_graceful_stop(server)
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
        local path = T.tempfile("local x = 1\n" .. chunk[1] .. "\n")
        local r = T.run({path}, {timeout = 10})
        assert.same({"exit", 1}, {r.how, r.code}, tostring(r))
        assert(r.stderr:match("^[^\n]*\n$") and load_error_line(r.stderr:sub(1, -2), path,
          chunk[2]), tostring(r))
        assert.equal("", r.stdout)
      end)
    end

    it("raised after the script began listening: the error is the last line, exit status 1, "
      .. "and the port is closed", function()
      local path = T.tempfile([[
local server = assert(luahost.listen("127.0.0.1", 0))
error({})
]])
      local r = T.run({path}, {timeout = 10})
      assert.same({"exit", 1}, {r.how, r.code}, tostring(r))
      local lines = {}
      for line in r.stderr:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert(load_error_line(lines[#lines], path, "(error object is a table value)"), r.stderr)
      assert(#lines <= 2, "more than the listening line and the error:\n" .. r.stderr)
      local port = tonumber(r.stderr:match("listening on 127%.0%.0%.1:(%d+)"))
      if port then
        local accepted, c = pcall(T.client, "127.0.0.1", port, {timeout = 1})
        if accepted then c:close() end
        assert.is_false(accepted, "something still accepts on the script's port " .. port)
      end
    end)
  end)

  describe("runaway callbacks", function()
    it("while true do end is aborted fast under --max-instructions 1000000: logged with the "
      .. "budget, that connection dropped, the others served", function()
      local server = T.spawn(FAULTY, nil, {options = {"--max-instructions", "1000000"}})
      local probe = probe_of(server)
      local line, took = provoke(server, probe, "spin", 5)
      assert(took < 1.5, string.format("the runaway callback ran %.2f s", took))
      assert(line:find("budget", 1, true) and line:find("--max-instructions", 1, true),
        "the log does not say the callback ran past its budget: " .. line)
      T.assert_graceful_stop(server)
    end)

    it("is aborted under the default budget too, within seconds", function()
      local server = T.spawn(FAULTY)
      local probe = connect(server)
      local line, took = provoke(server, probe, "spin", 15)
      assert(took < 10, string.format("the runaway callback ran %.2f s", took))
      assert(line:find("budget", 1, true), "the log does not mention the budget: " .. line)
      T.assert_graceful_stop(server)
    end)

    it("in a timer is aborted and logged, and the loop goes on", function()
      local script = T.tempfile([[
dofile("scripts/echo.lua")
luahost.after(0.1, function() while true do end end)
]])
      local server = T.spawn(script, nil, {options = {"--max-instructions", "1000000"}})
      local probe = connect(server)
      local line = server:wait_log("error in timer: (.*)$", 5)
      assert(line:find("budget", 1, true), "the log does not mention the budget: " .. line)
      assert(probe:echo("after the runaway timer") < 0.5)
      T.assert_graceful_stop(server)
    end)

    -- A script that wraps its work in pcall, or runs it in coroutines (as copas-style
    -- code does), must not escape the budget: the host would be stuck for good, deaf even
    -- to SIGTERM.
    for _, command in ipairs({"spin-pcall", "spin-coroutine", "spin-old-coroutine",
      "spin-resume", "spin-nested-coroutine", "spin-after-coroutine"}) do
      it("is aborted when the loop is '" .. command .. "'", function()
        local server = T.spawn(FAULTY, nil, {options = {"--max-instructions", "1000000"}})
        local probe = probe_of(server)
        provoke(server, probe, command, 3)
        T.assert_graceful_stop(server)
      end)
    end
  end)

  describe("--max-memory 64 MiB", function()
    local MAX = tostring(64 * 1024 * 1024)

    it("a callback that allocates past it gets 'not enough memory', its connection is "
      .. "dropped, and the host lives on with its memory back", function()
      local server = T.spawn(FAULTY, nil, {options = {"--max-memory", MAX}, stats = true})
      local probe = probe_of(server)
      for _, command in ipairs({"hog", "bigstring"}) do
        local line = provoke(server, probe, command, 10)
        assert(line:find("not enough memory", 1, true), command .. ": " .. line)
      end
      local stats = server:stats()
      assert(stats.lua_bytes < 8 * 1024 * 1024, string.format("the Lua state still holds %d "
        .. "bytes after the failed allocations", stats.lua_bytes))
      local c = connect(server)
      c:echo("a new client")
      c:close()
      T.assert_graceful_stop(server)
    end)

    -- While memory runs short, the accept callback fails too. The host closes the socket
    -- of a callback that raised, which for a listener would end the service for good.
    -- (Pausing and resuming the listener goes through the backend.)
    for _, backend in ipairs(BACKENDS) do
      it("a shortage that passes does not stop the server from accepting for good (--selector "
        .. backend .. ")", function()
        local server = T.spawn(FAULTY, nil, {selector = backend,
          options = {"--max-memory", MAX}})
        local holder = connect(server)
        holder:echo("hello")
        holder:send("hoard 1")
        T.sleep(0.2) -- the memory is held now, for a second
        for _ = 1, 3 do -- (these may be served or refused: memory is short)
          local c
          pcall(function()
            c = connect(server, 1)
            c:echo("during", 0.3)
          end)
          if c then c:close() end
        end
        T.sleep(1.2) -- the memory is free again
        local ok, why = pcall(function()
          local c = connect(server, 2)
          c:echo("after the shortage", 2)
          c:close()
        end)
        assert(ok, "no longer serving new clients after a passing memory shortage: "
          .. tostring(why) .. "\nlog:\n" .. server:stderr())
        T.assert_graceful_stop(server)
      end)
    end
  end)

  it("misuse of the API in a callback raises a clear error, that connection is closed, and "
    .. "the loop goes on", function()
    local server = T.spawn(FAULTY)
    local probe = probe_of(server)
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
    T.assert_graceful_stop(server)
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

  for _, backend in ipairs(BACKENDS) do
    it("a callback that unregisters, registers again, closes its own socket and raises: one "
      .. "close, one error line, and the connection now on its fd is left alone (--selector "
      .. backend .. ")", function()
      local server = T.spawn(T.tempfile(SELF_CLOSING), {}, {selector = backend, stats = true})
      local probe = connect(server)
      local victim = connect(server)
      probe:echo("hello")
      victim:send("hold")
      assert.equal("held", victim:read(4, 3))
      local waiting = connect(server) -- now in the backlog
      victim:send("boom")
      local _, how = victim:closed(5)
      assert.equal("eof", how, "how the raising connection ended (nil: it did not)")
      server:wait_log("error in callback for .*boom after closing itself", 5)
      -- (setup: the waiting connection must land on the freed fd)
      server:wait_log("the waiting connection took the same fd: true", 1)
      local log = server:stderr()
      assert.equal(1, #server:log_lines("error in callback", true), "error lines:\n" .. log)
      assert(waiting:echo("on the reused fd", 2) < 0.5)
      probe:echo("probe")
      assert.equal(2, server:stats().connections, "connections the host counts")
      T.assert_graceful_stop(server)
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

  for _, backend in ipairs(BACKENDS) do
    it("an event pending for a connection another callback closed is dropped, not delivered "
      .. "to the new connection on its fd (--selector " .. backend .. ")", function()
      local server = T.spawn(T.tempfile(SWAPPING), {}, {selector = backend})
      local a = connect(server)
      local b = connect(server)
      local waiting = {}
      local function ask(c, command, reply)
        c:send(command)
        assert.equal(reply, c:read(#reply, 3))
      end
      ask(a, "join", "joined")
      ask(b, "join", "joined")
      ask(a, "hold", "held")
      for i = 1, 4 do waiting[i] = connect(server) end
      ask(a, "pause", "pausing") -- the loop is blocked 0.3 s: both swaps land in one batch
      b:send("swap")
      a:send("swap")
      -- Whichever callback runs first closes the other of the pair, whose event is stale.
      T.wait_until(function()
        return (a:closed(0) and b:received() == "swapped")
          or (b:closed(0) and a:received() == "swapped")
      end, 3, function()
        return string.format("one of the pair to swap, the other to be closed (a: %q%s, b: "
          .. "%q%s); log:\n%s", a:received(), a:closed(0) and " then closed" or "",
          b:received(), b:closed(0) and " then closed" or "", server:stderr())
      end)
      -- (setup: a new connection must land on the closed one's fd)
      server:wait_log("a new connection took the closed one's fd: true", 3)
      for i, w in ipairs(waiting) do
        assert(w:echo("waiting " .. i, 2) < 0.5)
      end
      local log = server:stderr()
      assert.equal(0, #server:log_lines("STALE", true), "a stale event was delivered:\n" .. log)
      assert.equal(0, #server:log_lines(" error ", true), "errors logged:\n" .. log)
      T.assert_graceful_stop(server)
    end)
  end
end)
