-- loop_spec.lua: proves the host loop (luahost.step / run / stop) dispatches key.data
-- callbacks, survives callbacks that raise, drops events made stale earlier in a batch,
-- refuses re-entry, and that the module's small functions (log, log_level,
-- parse_address, the EVENT_ constants) behave as documented.
local luahost = require "luahost"
local helpers = require "support.helpers"

local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local sel = luahost.selector

local function close_all(list)
  for _, s in pairs(list) do
    s:close()
  end
end

-- A connected pair (client end, server end), both closed when the test ends.
local function pair()
  local client, conn = helpers.pair()
  finally(function()
    close_all({client, conn})
  end)
  return client, conn
end

-- Steps the loop for about `seconds`, for checks that something does NOT happen.
local function step_for(seconds)
  local deadline = luahost.now() + seconds
  while luahost.now() < deadline do
    luahost.step(0.005)
  end
end

describe("luahost's constants", function()
  it("EVENT_READ is 1 and EVENT_WRITE is 2", function()
    assert.equals(1, READ)
    assert.equals(2, WRITE)
    assert.equals(3, READ | WRITE)
  end)

  it("version is a version string", function()
    assert.matches("^%d+%.%d+%.%d+", luahost.version)
  end)
end)

describe("luahost.step", function()
  it("returns 0 at once with timeout 0 when nothing is ready", function()
    local t0 = luahost.now()
    assert.equals(0, luahost.step(0))
    assert.is_true(luahost.now() - t0 < 0.05)
    assert.equals(0, luahost.step(-1), "a negative timeout should poll")
  end)

  it("waits about its timeout when nothing is ready", function()
    local server = helpers.listen()
    sel:register(server, READ, function() end)
    finally(function()
      server:close()
    end)
    local t0 = luahost.now()
    assert.equals(0, luahost.step(0.05))
    local waited = luahost.now() - t0
    assert.is_true(waited >= 0.045 and waited < 1, ("step(0.05) waited %.3f s"):format(waited))
  end)

  it("calls key.data(fileobj, mask, key) and returns the number of callbacks run", function()
    local c1, s1 = helpers.pair()
    local c2, s2 = helpers.pair()
    finally(function()
      close_all({c1, s1, c2, s2})
    end)
    local seen = {}
    local function callback(fileobj, mask, key)
      seen[#seen + 1] = {fileobj = fileobj, mask = mask, key = key}
    end
    local k1 = sel:register(s1, READ | WRITE, callback)
    local k2 = sel:register(s2, WRITE, callback)
    assert(c1:send("x"))
    helpers.sleep(0.01)
    assert.equals(2, luahost.step(1))
    table.sort(seen, function(a, b)
      return a.key.fd < b.key.fd
    end)
    local expect = {{fileobj = s1, mask = READ | WRITE, key = k1},
                    {fileobj = s2, mask = WRITE, key = k2}}
    table.sort(expect, function(a, b)
      return a.key.fd < b.key.fd
    end)
    assert.same(expect, seen)
  end)

  -- One registration form, as Python's selectors: a key per registration, whatever its
  -- data, and the same key object until modify or unregister replaces it.
  describe("for every kind of callback", function()
    it("hands out one key per registration, kept until modify replaces it", function()
      local _, conn = pair()
      local function old(_, _) end
      local function new(_) end
      local k1 = sel:register(conn, READ, old)
      assert(rawequal(k1, sel:get_key(conn)), "get_key returns the registration's key")
      assert(rawequal(k1, sel:get_key(conn)), "the same key each time")
      assert(rawequal(k1, sel:get_map()[conn]), "get_map holds the same key")
      local k2 = sel:modify(conn, READ | WRITE, new)
      assert.equals(new, k2.data)
      assert(rawequal(k2, sel:get_key(conn)), "modify's key is the registration's now")
      assert.equals(READ | WRITE, sel:get_key(conn).events)
      assert.equals(old, k1.data, "a key kept from before shows the registration then")
      assert.equals(READ, k1.events)
      assert.are_not.equal(k1, k2)
      local removed = sel:unregister(conn)
      assert(rawequal(k2, removed), "unregister returns the registration's key")
      assert.equals(conn, removed.fileobj)
      assert.is_nil(sel:get_key(conn))
    end)

    it("is called with fileobj, mask and the key, whatever its parameters", function()
      local client, conn = pair()
      local got
      local function two(fileobj, mask)
        got = {kind = "two", fileobj = fileobj, mask = mask}
      end
      local function vararg(...)
        got = {kind = "vararg", n = select("#", ...), key = select(3, ...)}
      end
      local function three(_, _, key)
        got = {kind = "three", key = key}
      end
      local callable = setmetatable({}, {__call = function(_, ...)
        got = {kind = "table", n = select("#", ...), key = select(3, ...)}
      end})
      assert(client:send("x")) -- stays unread: every step reports it
      local function step_once(what)
        got = nil
        helpers.step_until(function() return got end, nil, what)
        return got
      end
      sel:register(conn, READ, two)
      assert.same({kind = "two", fileobj = conn, mask = READ}, step_once("two"))
      sel:modify(conn, READ, vararg)
      local seen = step_once("vararg")
      assert.equals(3, seen.n)
      assert(rawequal(sel:get_key(conn), seen.key), "the registration's own key")
      assert.equals(conn, seen.key.fileobj)
      sel:modify(conn, READ, three)
      seen = step_once("three")
      assert(rawequal(sel:get_key(conn), seen.key), "the registration's own key")
      sel:modify(conn, READ, callable)
      seen = step_once("table")
      assert.equals(3, seen.n)
      assert(rawequal(sel:get_key(conn), seen.key), "the registration's own key")
      sel:unregister(conn)
    end)

    it("costs the same Lua memory per registration, a key's, for every callback", function()
      local server = helpers.listen()
      local pairs_ = {}
      finally(function()
        for _, p in ipairs(pairs_) do close_all(p) end
        server:close()
      end)
      local n = 200
      for i = 1, n do
        pairs_[i] = {helpers.pair(server)}
      end
      local function held_per_socket(callback)
        for i = 1, n do sel:register(pairs_[i][2], READ, callback) end
        collectgarbage("collect")
        collectgarbage("collect")
        local with = collectgarbage("count")
        for i = 1, n do sel:unregister(pairs_[i][2]) end
        collectgarbage("collect")
        collectgarbage("collect")
        return (with - collectgarbage("count")) * 1024 / n
      end
      held_per_socket(function(_, _, _) end) -- sizes the keys table once
      local three = held_per_socket(function(_, _, _) end)
      local two = held_per_socket(function(_, _) end)
      assert.is_true(three > 64 and three < 128,
        ("a key per socket: %.1f bytes each"):format(three))
      assert.equals(three, two, "a callback's parameters make no difference")
    end)
  end)

  it("still delivers the script's WRITE events to a socket with output buffered", function()
    local client, conn = pair()
    assert(conn:setsockopt("sndbuf", 65536))
    assert(client:setsockopt("rcvbuf", 65536))
    assert(conn:setlimit(8 * 1024 * 1024))
    local writes = 0
    sel:register(conn, WRITE, function()
      writes = writes + 1
    end)
    local size = 2 * 1024 * 1024
    assert.is_true(conn:write(helpers.payload(size)) > 0)
    assert.equals(size, #helpers.read_n(client, size))
    helpers.step_until(function()
      return writes > 0 and conn:pending() == 0
    end, nil, "WRITE events and the buffer to drain")
  end)

  it("raises on a timeout that is not a number", function()
    assert.has_error(function()
      luahost.step("soon")
    end)
  end)
end)

describe("luahost.run", function()
  it("returns \"idle\" at once when nothing is registered", function()
    local t0 = luahost.now()
    assert.equals("idle", luahost.run({timeout = 5}))
    assert.equals("idle", luahost.run()) -- unbounded, so only once the bounded one passed
    assert.is_true(luahost.now() - t0 < 0.5)
  end)

  it("returns \"timeout\" after opts.timeout seconds with something registered", function()
    local server = helpers.listen()
    sel:register(server, READ, function() end)
    finally(function()
      server:close()
    end)
    local t0 = luahost.now()
    assert.equals("timeout", luahost.run({timeout = 0.1}))
    local took = luahost.now() - t0
    assert.is_true(took >= 0.095 and took < 1, ("run took %.3f s"):format(took))
  end)

  it("returns \"stopped\" after luahost.stop(), and runs normally the next time", function()
    local server = helpers.listen()
    sel:register(server, READ, function() end)
    local t = luahost.after(0.02, function()
      luahost.stop()
    end)
    finally(function()
      t:cancel()
      server:close()
    end)
    local t0 = luahost.now()
    assert.equals("stopped", luahost.run({timeout = 5}))
    assert.is_true(luahost.now() - t0 < 1)
    assert.equals("timeout", luahost.run({timeout = 0.02}))
  end)

  it("returns \"stopped\" when a socket callback calls luahost.stop()", function()
    local client, conn = pair()
    sel:register(conn, READ, function(s)
      s:recv(10)
      luahost.stop()
    end)
    assert(client:send("stop"))
    assert.equals("stopped", luahost.run({timeout = 5}))
  end)

  it("returns \"idle\" once the last registration goes away", function()
    local client, conn = pair()
    sel:register(conn, READ, function(s)
      if s:recv(10) == "" then
        s:close()
      end
    end)
    client:close()
    assert.equals("idle", luahost.run({timeout = 5}))
    assert.equals(-1, conn:fileno())
  end)
end)

local error_kinds = {
  {name = "a string", raise = function()
    error("callback failed on purpose")
  end, logged = "callback failed on purpose", code = [[error("callback failed on purpose")]]},
  {name = "a table", raise = function()
    error({})
  end, logged = "(error object is a table value)", code = "error({})"},
  {name = "nil", raise = function()
    error(nil)
  end, logged = "(error object is a nil value)", code = "error(nil)"},
  {name = "an object with __tostring", raise = function()
    error(setmetatable({}, {__tostring = function()
      return "custom error object"
    end}))
  end, logged = "custom error object",
   code = [[error(setmetatable({}, {__tostring = function() return "custom error object" end}))]]},
  -- The deepest stack a callback can leave: the host must still find whose it was.
  {name = "a stack overflow", raise = function()
    local function deeper(n) return 1 + deeper(n + 1) end
    deeper(1)
  end, logged = "stack overflow",
   code = [[local function deeper(n) return 1 + deeper(n + 1) end; deeper(1)]]},
}

describe("a callback that raises", function()
  for _, kind in ipairs(error_kinds) do
    it(("with %s is unregistered and its socket closed, while others are served"):format(kind.name),
       function()
      local bad_client, bad = helpers.pair()
      local good_client, good = helpers.pair()
      finally(function()
        close_all({bad_client, bad, good_client, good})
      end)
      sel:register(bad, READ, kind.raise)
      sel:register(good, READ, function(s)
        local data = s:recv(100)
        if data and data ~= "" then
          s:write(data)
        end
      end)
      assert(bad_client:send("x"))
      assert(good_client:send("first"))
      assert.has_no.errors(function()
        helpers.step_until(function()
          return bad:fileno() == -1
        end, nil, "the failing socket to be closed")
      end)
      assert.is_nil(sel:get_key(bad))
      assert.equals("first", helpers.read_n(good_client, 5))
      assert(good_client:send("second"))
      assert.equals("second", helpers.read_n(good_client, 6))
      assert.is_not_nil(sel:get_key(good))
      local gone = helpers.wait_peer_gone(bad_client)
      assert.is_true(gone == "eof" or gone == 104, "the failing socket's peer saw " .. gone)
    end)

    it(("with %s is logged with the peer's address and a traceback"):format(kind.name),
       function()
      local out = helpers.run_lua([[
        local luahost = require "luahost"
        local server = assert(luahost.listen("127.0.0.1", 0))
        local _, port = server:getsockname()
        local client = assert(luahost.connect("127.0.0.1", port))
        local deadline = luahost.now() + 5
        local conn
        repeat
          conn = server:accept()
          luahost.step(0.01)
        until conn or luahost.now() > deadline
        local host, cport = client:getsockname()
        print("PEER " .. host .. ":" .. cport)
        luahost.selector:register(conn, luahost.EVENT_READ, function()
          ]] .. kind.code .. [[
        end)
        client:send("x")
        repeat
          luahost.step(0.01)
        until conn:fileno() == -1 or luahost.now() > deadline
        print("CLOSED " .. tostring(conn:fileno() == -1))
      ]])
      local peer = assert(out:match("PEER (%S+)"), out)
      assert.matches("CLOSED true", out, 1, true)
      local line = out:match("[^\n]*error in callback for [^\n]*")
      assert.is_not_nil(line, "no error line in:\n" .. out)
      assert.matches(peer, line, 1, true)
      assert.matches(kind.logged, line, 1, true)
      assert.matches("stack traceback", out, 1, true)
    end)
  end

  it("registered by integer fd is unregistered, and the fd is left open", function()
    local client, conn = pair()
    local fd = conn:fileno()
    sel:register(fd, READ, function()
      error("raw fd callback failed on purpose")
    end)
    assert(client:send("x"))
    helpers.step_until(function()
      return sel:get_key(fd) == nil
    end, nil, "the key to be unregistered")
    assert.equals(fd, conn:fileno())
    assert.equals("x", conn:recv(10))
  end)

  it("after replacing its own socket by one on the same fd, leaves the new one alone", function()
    local server, port = helpers.listen()
    local client, conn = helpers.pair(server)
    local waiting = {}
    for i = 1, 8 do
      waiting[i] = assert(luahost.connect("127.0.0.1", port))
    end
    local fresh, fillers
    finally(function()
      close_all({server, client, conn, fresh})
      close_all(waiting)
      close_all(fillers or {})
    end)
    sel:register(conn, READ, function(s)
      local fd = s:fileno()
      s:close()
      fresh, fillers = helpers.accept_onto(server, fd)
      sel:register(fresh, READ, function() end)
      error("raised after replacing the socket")
    end)
    assert(client:send("x"))
    helpers.step_until(function()
      return fresh ~= nil
    end, nil, "the callback")
    assert.is_true(fresh:fileno() >= 0, "the new socket was closed for the old one's error")
    assert.is_not_nil(sel:get_key(fresh), "the new socket was unregistered")
    sel:unregister(fresh)
  end)
end)

describe("events made stale earlier in the same batch", function()
  local server, port, c1, s1, c2, s2
  before_each(function()
    server, port = helpers.listen()
    c1, s1 = helpers.pair(server)
    c2, s2 = helpers.pair(server)
  end)
  after_each(function()
    close_all({server, c1, s1, c2, s2})
  end)

  local function make_both_readable()
    assert(c1:send("1"))
    assert(c2:send("2"))
    helpers.sleep(0.02)
  end

  it("are not delivered to a connection another callback unregistered", function()
    local calls = 0
    local function callback(s)
      calls = calls + 1
      sel:unregister(s == s1 and s2 or s1)
    end
    sel:register(s1, READ, callback)
    sel:register(s2, READ, callback)
    make_both_readable()
    assert.equals(1, luahost.step(1))
    assert.equals(1, calls)
    sel:unregister(sel:get_key(s1) and s1 or s2)
  end)

  it("are not delivered to a connection another callback closed", function()
    local calls = 0
    local function callback(s)
      calls = calls + 1
      local other = s == s1 and s2 or s1
      other:close()
    end
    sel:register(s1, READ, callback)
    sel:register(s2, READ, callback)
    make_both_readable()
    assert.equals(1, luahost.step(1))
    assert.equals(1, calls)
  end)

  it("are never delivered to a new connection that reuses the closed one's fd", function()
    local waiting = {}
    for i = 1, 8 do
      waiting[i] = assert(luahost.connect("127.0.0.1", port)) -- they never send
    end
    local calls, fresh_calls, fresh, fillers = 0, 0, nil, nil
    finally(function()
      close_all(waiting)
      close_all(fillers or {})
      if fresh then
        fresh:close()
      end
    end)
    local function callback(s)
      calls = calls + 1
      if fresh then
        return
      end
      local victim = s == s1 and s2 or s1
      local fd = victim:fileno()
      victim:close()
      fresh, fillers = helpers.accept_onto(server, fd)
      sel:register(fresh, READ, function()
        fresh_calls = fresh_calls + 1
      end)
    end
    sel:register(s1, READ, callback)
    sel:register(s2, READ, callback)
    make_both_readable()
    assert.equals(1, luahost.step(1))
    assert.equals(1, calls)
    assert.equals(0, fresh_calls, "the closed connection's event reached the new one")
    step_for(0.03)
    assert.equals(0, fresh_calls, "a connection that sent nothing was reported readable")
  end)
end)

describe("re-entering the loop from a callback", function()
  local client, conn
  before_each(function()
    client, conn = helpers.pair()
  end)
  after_each(function()
    close_all({client, conn})
  end)

  -- Runs probe inside a socket callback; returns what pcall(probe) gave.
  local function from_callback(probe)
    local result
    sel:register(conn, WRITE, function(s)
      result = table.pack(pcall(probe)) -- while this key is still registered
      sel:unregister(s)
    end)
    helpers.step_until(function()
      return result
    end, nil, "the callback")
    return result
  end

  it("raises for luahost.step", function()
    local r = from_callback(function()
      return luahost.step(0)
    end)
    assert.is_false(r[1])
    assert.matches("inside a callback", r[2], 1, true)
  end)

  it("raises for luahost.run", function()
    local r = from_callback(function()
      return luahost.run({timeout = 0})
    end)
    assert.is_false(r[1])
    assert.matches("inside a callback", r[2], 1, true)
  end)

  it("raises for select on the host's selector", function()
    local r = from_callback(function()
      return sel:select(0)
    end)
    assert.is_false(r[1])
    assert.matches("select() called while the host is dispatching", r[2], 1, true)
  end)

  it("is allowed for select on a selector of one's own", function()
    local r = from_callback(function()
      local own = luahost.new_selector()
      own:register(client, WRITE)
      local n = 0
      for _ in own:select(1) do
        n = n + 1
      end
      own:close()
      return n
    end)
    assert.same({true, 1, n = 2}, r)
  end)

  it("raises for luahost.step called from a timer callback", function()
    local result
    local t = luahost.after(0, function()
      result = table.pack(pcall(luahost.step, 0))
    end)
    finally(function()
      t:cancel()
    end)
    helpers.step_until(function()
      return result
    end, 2, "the timer")
    assert.is_false(result[1], "luahost.step ran nested inside a timer callback")
  end)
end)

describe("an on_drain callback that raises", function()
  it("is logged with the peer's address and a traceback", function()
    local out = helpers.run_lua([[
      local luahost = require "luahost"
      local server = assert(luahost.listen("127.0.0.1", 0))
      local _, port = server:getsockname()
      local client = assert(luahost.connect("127.0.0.1", port))
      local deadline = luahost.now() + 5
      local conn
      repeat
        conn = server:accept()
        luahost.step(0.01)
      until conn or luahost.now() > deadline
      local host, cport = client:getsockname()
      print("PEER " .. host .. ":" .. cport)
      conn:setsockopt("sndbuf", 65536)
      conn:on_drain(function() error("drain failed on purpose") end)
      conn:write(string.rep("x", 1000000))
      repeat
        luahost.step(0.01)
        client:recv(65536)
      until conn:pending() == 0 or luahost.now() > deadline
      for _ = 1, 5 do luahost.step(0.01) end
    ]])
    local peer = assert(out:match("PEER (%S+)"), out)
    local line = out:match("[^\n]*drain failed on purpose[^\n]*")
    assert.is_not_nil(line, "the on_drain error was not logged:\n" .. out)
    assert.matches(peer, line, 1, true)
    assert.matches("stack traceback", out, 1, true)
  end)
end)

describe("luahost.log", function()
  it("accepts every level and any values", function()
    local saved = luahost.log_level("error") -- keep the test output quiet
    finally(function()
      luahost.log_level(saved)
    end)
    for _, level in ipairs({"debug", "info", "warn", "error"}) do
      assert.has_no.errors(function()
        luahost.log(level, "checking", 1, nil, true, {}, 2.5)
      end)
    end
    assert.has_no.errors(function()
      luahost.log("error")
    end)
  end)

  it("raises on an unknown level", function()
    assert.error_matches(function()
      luahost.log("loud", "x")
    end, "expected debug, info, warn or error", 1, true)
    assert.has_error(function()
      luahost.log()
    end)
  end)

  it("writes one stamped line per call to stderr, values joined by spaces", function()
    local out = helpers.run_lua([[
      local luahost = require "luahost"
      luahost.log("info", "hello", 42, nil, true)
      luahost.log("warn", "careful")
    ]])
    assert.matches("\n?%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ info  hello 42 nil true\n", out)
    assert.matches("Z warn  careful\n", out, 1, true)
  end)

  it("leaves out what is below luahost.log_level", function()
    local out = helpers.run_lua([[
      local luahost = require "luahost"
      luahost.log("debug", "hidden debug")
      luahost.log_level("debug")
      luahost.log("debug", "shown debug")
      luahost.log_level("error")
      luahost.log("warn", "hidden warn")
      luahost.log("error", "shown error")
    ]])
    assert.matches("shown debug", out, 1, true)
    assert.matches("shown error", out, 1, true)
    assert.is_nil(out:find("hidden", 1, true), out)
  end)
end)

describe("luahost.log_level", function()
  it("is \"info\" by default, and returns the old level when setting a new one", function()
    assert.equals("info", luahost.log_level())
    assert.equals("info", luahost.log_level("warn"))
    assert.equals("warn", luahost.log_level())
    assert.equals("warn", luahost.log_level("info"))
    assert.equals("info", luahost.log_level())
  end)

  it("raises on an unknown level and keeps the old one", function()
    assert.error_matches(function()
      luahost.log_level("verbose")
    end, "expected debug, info, warn or error", 1, true)
    assert.equals("info", luahost.log_level())
  end)
end)

describe("luahost.parse_address", function()
  local good = {
    {{"7342"}, {"127.0.0.1", 7342}},
    {{"7342", "0.0.0.0", 1}, {"0.0.0.0", 7342}},
    {{"0"}, {"127.0.0.1", 0}},
    {{"host:1"}, {"host", 1}},
    {{"1.2.3.4:65535"}, {"1.2.3.4", 65535}},
    {{":80", "10.0.0.1", 1}, {"10.0.0.1", 80}},
    {{"[::1]:5"}, {"::1", 5}},
    {{"[::1]", nil, 9}, {"::1", 9}},
    {{"::1", "127.0.0.1", 7342}, {"::1", 7342}},
    {{"localhost", nil, 7342}, {"localhost", 7342}},
    {{nil, "127.0.0.1", 7342}, {"127.0.0.1", 7342}},
    {{}, {"127.0.0.1", 0}},
  }
  for _, case in ipairs(good) do
    local args = case[1]
    it(("parses %q into %s, %d"):format(tostring(args[1]), case[2][1], case[2][2]), function()
      assert.same(case[2], {luahost.parse_address(args[1], args[2], args[3])})
    end)
  end

  for _, spec in ipairs({"70000", "host:", "host:abc", "host:99999", "host:-1", "[::1",
                         "[::1]x", "[::1]:", "[]:80", "", "1234x"}) do
    it(("returns nil and a message for %q"):format(spec), function()
      local host, msg = luahost.parse_address(spec, "127.0.0.1", 7342)
      assert.is_nil(host)
      assert.equals(("invalid address '%s' (expected [HOST:]PORT)"):format(spec), msg)
    end)
  end
end)

describe("when the loop specs are done", function()
  it("nothing is left registered, listening or flushing", function()
    assert.is_true(helpers.host_is_idle(), table.concat(helpers.registered(), ", "))
    assert.is_nil(next(luahost.selector:get_map()))
    assert.is_nil(next(luahost.listeners()))
  end)
end)
