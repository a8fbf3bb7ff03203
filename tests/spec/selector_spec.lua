-- selector_spec.lua: proves luahost.selector and luahost.new_selector behave as Python's
-- selectors do (keys, register/modify/unregister, the select iterator, close), on
-- every backend this build has, and that misuse raises a clear error.
local luahost = require "luahost"
local helpers = require "support.helpers"

local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local ALL_BACKENDS = {"epoll", "poll", "select"} -- Linux: what we build and test

-- Every (key, mask) one select() call yields, keyed by the key's fileobj.
local function ready(sel, timeout)
  local got = {}
  for key, mask in sel:select(timeout or 0) do
    got[key.fileobj] = mask
  end
  return got
end

-- Calls select until fileobj is reported; returns its mask.
local function wait_for(sel, fileobj, what)
  local mask
  helpers.poll_until(function()
    mask = ready(sel, 0.05)[fileobj]
    return mask
  end, nil, what or "readiness")
  return mask
end

describe("luahost.selector", function()
  it("is the host's default selector, on a backend this build has", function()
    local sel = luahost.selector
    assert.matches("^luahost.selector %(", tostring(sel))
    assert.is_true(helpers.backends()[sel.backend] ~= nil, "unexpected backend " .. sel.backend)
  end)

  it("uses the best backend (epoll on Linux) unless LUAHOST_SELECTOR says otherwise", function()
    local forced = os.getenv("LUAHOST_SELECTOR")
    if forced and forced ~= "" then
      assert.equals(forced, luahost.selector.backend)
    elseif helpers.backends().epoll then
      assert.equals("epoll", luahost.selector.backend)
    else
      pending("no epoll in this build")
    end
  end)

  it("refuses to be closed, since the host loop runs on it", function()
    assert.error_matches(function()
      luahost.selector:close()
    end, "cannot be closed")
    assert.equals("table", type(luahost.selector:get_map()))
  end)

  -- Regression: a nested luahost.step replaced the batch under the iterator, which then
  -- read past its end (a NULL fired entry) and crashed the process.
  it("survives luahost.step called while iterating its own select()", function()
    local out, ok = helpers.run_lua([[
      local luahost = require "luahost"
      local sel = luahost.selector
      local server = assert(luahost.listen("127.0.0.1", 0))
      local _, port = server:getsockname()
      local c1 = assert(luahost.connect("127.0.0.1", port))
      local c2 = assert(luahost.connect("127.0.0.1", port))
      sel:register(c1, luahost.EVENT_WRITE)
      sel:register(c2, luahost.EVENT_WRITE)
      for _ in luahost.new_selector():select(0.05) do end -- let both connects finish
      for _ in sel:select(1) do
        sel:unregister(c1)
        sel:unregister(c2)
        print("nested step:", pcall(luahost.step, 0))
      end
      print("survived")
    ]])
    assert.is_true(ok and out:find("survived", 1, true) ~= nil,
                   "the child process died:\n" .. out)
  end)

  it("exposes EVENT_READ as 1 and EVENT_WRITE as 2", function()
    assert.equals(1, READ)
    assert.equals(2, WRITE)
  end)
end)

describe("luahost.new_selector", function()
  it("creates a selector on the best backend when none is named", function()
    local sel = luahost.new_selector()
    local best = helpers.backends().epoll and "epoll" or sel.backend
    assert.equals(best, sel.backend)
    sel:close()
  end)

  for _, name in ipairs(ALL_BACKENDS) do
    it("creates a selector on the " .. name .. " backend when this build has it", function()
      if not helpers.backends()[name] then
        pending(name .. " is not available on this system")
        return
      end
      local sel = luahost.new_selector(name)
      assert.equals(name, sel.backend)
      assert.matches("luahost.selector %(" .. name .. ", 0 registered%)", tostring(sel))
      sel:close()
    end)
  end

  it("raises on an unknown backend, naming it and listing the available ones", function()
    local ok, err = pcall(luahost.new_selector, "bogus")
    assert.is_false(ok)
    assert.matches('unknown selector backend "bogus"', err, 1, true)
    assert.matches("available: ", err, 1, true)
  end)

  it("raises on a backend this build does not have (kqueue)", function()
    assert.error_matches(function()
      luahost.new_selector("kqueue")
    end, 'unknown selector backend "kqueue"', 1, true)
  end)
end)

describe("a selector's keys and registrations", function()
  local sel, client, conn

  before_each(function()
    sel = luahost.new_selector()
    client, conn = helpers.pair()
  end)

  after_each(function()
    sel:close()
    client:close()
    conn:close()
  end)

  it("register returns a key with fileobj, fd, events and data", function()
    local data = {"anything"}
    local key = sel:register(conn, READ, data)
    assert.equals(conn, key.fileobj)
    assert.equals(conn:fileno(), key.fd)
    assert.equals(READ, key.events)
    assert.equals(data, key.data)
    assert.matches("luahost.key %(fd %d+, events 1%)", tostring(key))
  end)

  it("register accepts READ | WRITE and a nil data slot", function()
    local key = sel:register(conn, READ | WRITE)
    assert.equals(3, key.events)
    assert.is_nil(key.data)
  end)

  it("keys are read-only", function()
    local key = sel:register(conn, READ, "data")
    for _, field in ipairs({"data", "events", "fd", "fileobj", "other"}) do
      assert.error_matches(function()
        key[field] = 1
      end, "read%-only")
    end
    assert.equals("data", key.data)
    assert.equals(READ, key.events)
  end)

  it("get_key returns the key of a registered fileobj and nil otherwise", function()
    assert.is_nil(sel:get_key(conn))
    local key = sel:register(conn, READ)
    assert.equals(key, sel:get_key(conn))
    assert.equals(key, sel:get_key(conn:fileno()))
    assert.is_nil(sel:get_key(client))
  end)

  it("get_key returns nil for a closed socket instead of raising", function()
    sel:register(conn, READ)
    conn:close()
    assert.is_nil(sel:get_key(conn))
  end)

  it("get_map returns a fresh table from fileobj to key", function()
    local k1 = sel:register(conn, READ)
    local k2 = sel:register(client, WRITE)
    local map = sel:get_map()
    assert.equals(k1, map[conn])
    assert.equals(k2, map[client])
    map[conn] = nil
    assert.equals(k1, sel:get_map()[conn], "changing the returned table changed the selector")
    assert.are_not.equal(map, sel:get_map())
  end)

  it("modify changes the events and replaces the data, even with nil", function()
    local key = sel:register(conn, READ, "old")
    local new = sel:modify(conn, WRITE, "new")
    assert.equals(WRITE, new.events)
    assert.equals("new", new.data)
    assert.equals("new", sel:get_key(conn).data)
    assert.equals(WRITE, sel:get_key(conn).events)
    local cleared = sel:modify(conn, READ)
    assert.is_nil(cleared.data)
    assert.is_nil(sel:get_key(conn).data)
    assert.equals(conn, key.fileobj)
  end)

  it("unregister returns the key it removed, and forgets the fileobj", function()
    sel:register(conn, READ, "data")
    local key = sel:unregister(conn)
    assert.equals("data", key.data)
    assert.equals(conn, key.fileobj)
    assert.is_nil(sel:get_key(conn))
    assert.is_nil(next(sel:get_map()))
  end)

  it("accepts an integer fd as a fileobj", function()
    local fd = conn:fileno()
    local key = sel:register(fd, READ, "raw")
    assert.equals(fd, key.fileobj)
    assert.equals(fd, key.fd)
    assert.equals(key, sel:get_key(fd))
    assert.equals(key, sel:get_map()[fd])
    assert.equals("raw", sel:unregister(fd).data)
  end)

  it("accepts a table with a fileno method as a fileobj", function()
    local wrapper = {
      fileno = function()
        return conn:fileno()
      end,
    }
    local key = sel:register(wrapper, READ)
    assert.equals(wrapper, key.fileobj)
    assert.equals(conn:fileno(), key.fd)
    assert.equals(key, sel:get_key(wrapper))
    assert.equals(key, sel:get_map()[wrapper])
    assert.equals(key, sel:unregister(wrapper))
  end)

  it("raises when a fileobj is registered twice", function()
    sel:register(conn, READ)
    assert.error_matches(function()
      sel:register(conn, WRITE)
    end, "already registered")
    assert.equals(READ, sel:get_key(conn).events)
  end)

  it("raises when the same fd is registered again through another fileobj", function()
    sel:register(conn, READ)
    assert.error_matches(function()
      sel:register(conn:fileno(), READ)
    end, "already registered")
  end)

  for _, events in ipairs({0, 4, -1, 8}) do
    it("raises on register with events " .. events .. ", naming the value", function()
      assert.error_matches(function()
        sel:register(conn, events)
      end, "invalid events " .. events, 1, true)
      assert.is_nil(sel:get_key(conn))
    end)
  end

  it("raises on events that are not an integer", function()
    assert.has_error(function()
      sel:register(conn, 1.5)
    end)
    assert.has_error(function()
      sel:register(conn, "read")
    end)
    assert.is_nil(sel:get_key(conn))
  end)

  it("raises on modify with events 0 or 4, keeping the registration", function()
    sel:register(conn, READ, "keep")
    for _, events in ipairs({0, 4}) do
      assert.error_matches(function()
        sel:modify(conn, events)
      end, "invalid events " .. events, 1, true)
    end
    assert.equals(READ, sel:get_key(conn).events)
    assert.equals("keep", sel:get_key(conn).data)
  end)

  it("raises when unregistering a fileobj that is not registered", function()
    assert.error_matches(function()
      sel:unregister(conn)
    end, "not registered")
  end)

  it("raises when modifying a fileobj that is not registered", function()
    assert.error_matches(function()
      sel:modify(conn, READ)
    end, "not registered")
  end)

  it("raises when registering a closed socket", function()
    conn:close()
    assert.error_matches(function()
      sel:register(conn, READ)
    end, "attempt to use a closed socket")
  end)

  it("raises when registering an fd that is not open", function()
    local s = luahost.socket("inet", "stream")
    local fd = s:fileno()
    s:close()
    assert.has_error(function()
      sel:register(fd, READ)
    end)
    assert.is_nil(sel:get_key(fd))
  end)

  it("raises on a negative fd, a string, and a table without fileno", function()
    assert.error_matches(function()
      sel:register(-1, READ)
    end, "invalid file descriptor")
    assert.error_matches(function()
      sel:register("conn", READ)
    end, "socket, fd or object with fileno")
    assert.error_matches(function()
      sel:register({}, READ)
    end, "no fileno method")
    assert.error_matches(function()
      sel:register({
        fileno = function()
          return "7"
        end,
      }, READ)
    end, "fileno%(%) did not return an integer")
  end)

  it("keeps a registered socket alive with no other reference to it", function()
    local function make() -- in a function of its own, so no stack slot keeps it alive
      local c2, s2 = helpers.pair()
      c2:close()
      sel:register(s2, READ)
      return s2:fileno()
    end
    local fd = make()
    collectgarbage()
    collectgarbage()
    assert.is_true(helpers.fd_open(fd), "a registered socket was collected")
    local key = sel:get_key(fd)
    assert.is_not_nil(key)
    assert.equals(fd, key.fileobj:fileno())
    key.fileobj:close()
  end)

  it("closing a registered socket unregisters it first", function()
    sel:register(conn, READ)
    sel:register(client, WRITE)
    conn:close()
    assert.is_nil(sel:get_map()[conn])
    assert.equals(client, next(sel:get_map()))
    client:close()
    assert.is_nil(next(sel:get_map()))
  end)

  it("closing a socket unregisters it from every selector that has it", function()
    local other = luahost.new_selector()
    sel:register(conn, READ)
    other:register(conn, WRITE)
    luahost.selector:register(conn, READ)
    conn:close()
    assert.is_nil(next(sel:get_map()))
    assert.is_nil(next(other:get_map()))
    assert.is_nil(luahost.selector:get_map()[conn])
    other:close()
  end)

  it("close() of a custom selector unregisters all and makes it unusable", function()
    sel:register(conn, READ)
    sel:register(client, READ)
    sel:close()
    assert.equals("closed", sel.backend)
    assert.matches("closed", tostring(sel))
    assert.error_matches(function()
      sel:get_map()
    end, "attempt to use a closed selector")
    assert.error_matches(function()
      sel:register(conn, READ)
    end, "attempt to use a closed selector")
    assert.error_matches(function()
      sel:select(0)
    end, "attempt to use a closed selector")
    sel:close() -- a second close is harmless
    -- the sockets are free to be registered elsewhere, and to close cleanly
    local other = luahost.new_selector()
    other:register(conn, READ)
    conn:close()
    assert.is_nil(next(other:get_map()))
    other:close()
  end)
end)

describe("the select backend", function()
  it("refuses an fd at or beyond FD_SETSIZE with a clear message", function()
    if not helpers.backends().select then
      pending("select is not available on this system")
      return
    end
    local sel = luahost.new_selector("select")
    assert.error_matches(function()
      sel:register(1500, READ)
    end, "fd 1500 is beyond FD_SETSIZE", 1, true)
    sel:close()
  end)
end)

describe("a selector that is garbage-collected", function()
  it("releases its registrations, so its sockets can be registered elsewhere", function()
    local client, conn = helpers.pair()
    local function make()
      local sel = luahost.new_selector()
      sel:register(conn, READ)
      sel:register(client, WRITE)
    end
    make()
    collectgarbage()
    collectgarbage()
    local other = luahost.new_selector()
    other:register(conn, READ)
    assert(client:send("x"))
    assert.equals(READ, wait_for(other, conn))
    conn:close()
    client:close()
    assert.is_nil(next(other:get_map()))
    other:close()
  end)
end)

-- The readiness tests, once per backend, so the count shows per backend.
for _, backend in ipairs(ALL_BACKENDS) do
  describe("a selector on the " .. backend .. " backend", function()
    local available = helpers.backends()[backend]
    if not available then
      it("reports readiness", function()
        pending(backend .. " is not available on this system")
      end)
      return
    end

    local sel, server, port

    before_each(function()
      sel = luahost.new_selector(backend)
      server, port = helpers.listen()
    end)

    after_each(function()
      sel:close()
      server:close()
    end)

    it("reports a listener readable when a client is waiting to be accepted", function()
      sel:register(server, READ, "accept")
      assert.is_nil(next(ready(sel, 0)), "readable before anyone connected")
      local client = assert(luahost.connect("127.0.0.1", port))
      assert.equals(READ, wait_for(sel, server, "the listener to be readable"))
      local conn = assert(server:accept())
      client:close()
      conn:close()
    end)

    it("yields key and mask from the select iterator, the key carrying the data", function()
      local callback = function() end
      sel:register(server, READ, callback)
      local client = assert(luahost.connect("127.0.0.1", port))
      local seen
      helpers.poll_until(function()
        for key, mask in sel:select(0.5) do
          seen = {key = key, mask = mask}
        end
        return seen
      end)
      assert.equals(server, seen.key.fileobj)
      assert.equals(callback, seen.key.data)
      assert.equals(READ, seen.mask)
      client:close()
      assert(server:accept()):close()
    end)

    it("reports a connected socket writable, and readable once data arrives", function()
      local client, conn = helpers.pair(server)
      sel:register(conn, READ | WRITE)
      assert.equals(WRITE, wait_for(sel, conn))
      assert(client:send("x"))
      helpers.poll_until(function()
        return ready(sel, 0.05)[conn] == READ | WRITE
      end, nil, "READ | WRITE")
      sel:modify(conn, READ)
      assert.equals(READ, wait_for(sel, conn))
      client:close()
      conn:close()
    end)

    it("does not report a socket that is not ready", function()
      local client, conn = helpers.pair(server)
      sel:register(conn, READ)
      assert.is_nil(next(ready(sel, 0)))
      client:close()
      conn:close()
    end)

    it("reports the end of the stream as readable", function()
      local client, conn = helpers.pair(server)
      sel:register(conn, READ)
      client:close()
      assert.equals(READ, wait_for(sel, conn, "EOF"))
      assert.equals("", conn:recv(10))
      conn:close()
    end)

    it("select(0) polls and select(t) waits about t seconds when nothing is ready", function()
      local client, conn = helpers.pair(server)
      sel:register(conn, READ)
      local t0 = luahost.now()
      assert.is_nil(next(ready(sel, 0)))
      assert.is_true(luahost.now() - t0 < 0.05, "select(0) blocked")
      t0 = luahost.now()
      assert.is_nil(next(ready(sel, 0.1)))
      local waited = luahost.now() - t0
      assert.is_true(waited >= 0.095, ("select(0.1) returned after %.3f s"):format(waited))
      assert.is_true(waited < 1, ("select(0.1) took %.3f s"):format(waited))
      client:close()
      conn:close()
    end)

    it("select(nil) blocks until something is ready", function()
      -- in a child process, killed after 10 s: a select that never returns cannot be
      -- bounded from inside
      local out, ok = helpers.run_lua(([[
        local luahost = require "luahost"
        local sel = luahost.new_selector(%q)
        local server = assert(luahost.listen("127.0.0.1", 0))
        local client = assert(luahost.connect("127.0.0.1", select(2, server:getsockname())))
        sel:register(client, luahost.EVENT_WRITE, "the client")
        for key, mask in sel:select() do
          print("READY", key.data, mask)
        end
      ]]):format(backend), 10)
      assert.is_true(ok, "the child failed or was killed:\n" .. out)
      assert.matches("READY\tthe client\t2", out, 1, true)
    end)

    it("stops reporting a fileobj once it is unregistered", function()
      local client, conn = helpers.pair(server)
      sel:register(conn, WRITE)
      assert.equals(WRITE, wait_for(sel, conn))
      sel:unregister(conn)
      assert.is_nil(next(ready(sel, 0.02)))
      client:close()
      conn:close()
    end)

    it("modify switches what is watched", function()
      local client, conn = helpers.pair(server)
      sel:register(conn, READ)
      assert.is_nil(ready(sel, 0)[conn])
      sel:modify(conn, WRITE)
      assert.equals(WRITE, wait_for(sel, conn))
      client:close()
      conn:close()
    end)

    it("reports readiness for an integer fd and for a table with fileno", function()
      local c1, s1 = helpers.pair(server)
      local c2, s2 = helpers.pair(server)
      local wrapper = {
        fileno = function()
          return s2:fileno()
        end,
      }
      sel:register(s1:fileno(), READ)
      sel:register(wrapper, READ)
      assert(c1:send("a"))
      assert(c2:send("b"))
      local seen = {}
      helpers.poll_until(function()
        for fileobj, mask in pairs(ready(sel, 0.05)) do
          seen[fileobj] = mask
        end
        return seen[s1:fileno()] and seen[wrapper]
      end, nil, "both fileobjs")
      assert.equals(READ, seen[s1:fileno()])
      assert.equals(READ, seen[wrapper])
      sel:unregister(s1:fileno())
      sel:unregister(wrapper)
      for _, s in ipairs({c1, s1, c2, s2}) do
        s:close()
      end
    end)

    it("raises when registering an fd that is not open", function()
      local s = luahost.socket("inet", "stream")
      local fd = s:fileno()
      s:close()
      assert.has_error(function()
        sel:register(fd, READ)
      end)
      assert.is_nil(next(sel:get_map()))
    end)

    it("does not yield an event for a key unregistered earlier in the batch", function()
      local c1, s1 = helpers.pair(server)
      local c2, s2 = helpers.pair(server)
      sel:register(s1, READ)
      sel:register(s2, READ)
      assert(c1:send("1"))
      assert(c2:send("2"))
      helpers.sleep(0.02)
      local yielded, other = {}, nil
      for key in sel:select(1) do
        yielded[#yielded + 1] = key.fileobj
        if not other then
          other = key.fileobj == s1 and s2 or s1
          sel:unregister(other)
        end
      end
      assert.equals(1, #yielded, "the unregistered key was still yielded")
      for _, s in ipairs({c1, s1, c2, s2}) do
        s:close()
      end
    end)

    it("never yields a stale event to a new socket that reuses a closed one's fd", function()
      local c1, s1 = helpers.pair(server)
      local c2, s2 = helpers.pair(server)
      sel:register(s1, READ, "old")
      sel:register(s2, READ, "old")
      assert(c1:send("1"))
      assert(c2:send("2"))
      local silent = {} -- wait in the backlog; they never send
      for i = 1, 8 do
        silent[i] = assert(luahost.connect("127.0.0.1", port))
      end
      helpers.sleep(0.02)
      local log, fresh, fillers = {}, nil, nil
      for key in sel:select(1) do
        log[#log + 1] = key.data
        if not fresh then
          local victim = key.fileobj == s1 and s2 or s1
          local fd = victim:fileno()
          victim:close()
          fresh, fillers = helpers.accept_onto(server, fd)
          sel:register(fresh, READ, "new")
        end
      end
      assert.same({"old"}, log)
      assert.is_nil(ready(sel, 0.02)[fresh], "the new socket, which has no data, was reported")
      for _, s in ipairs({c1, s1, c2, s2, fresh}) do
        s:close()
      end
      for _, s in ipairs(fillers) do
        s:close()
      end
      for _, s in ipairs(silent) do
        s:close()
      end
    end)
  end)
end

describe("when the selector specs are done", function()
  it("nothing is left registered on the host's selector", function()
    assert.is_nil(next(luahost.selector:get_map()), table.concat(helpers.registered(), ", "))
    assert.is_nil(next(luahost.listeners()))
  end)
end)
