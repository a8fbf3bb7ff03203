-- reload_inprocess_spec.lua: luahost.reload(path) driven in process (issue 4). The test
-- plays the running script: it registers, listens and starts timers itself, then loads a
-- new script from a temporary file. A refused load (it does not compile, or raises) must
-- leave everything as it was; a good one runs the old on_reload callbacks, closes the
-- listeners it did not ask for and hands the keys it did not take over to luahost.adopt.
-- The scripts reach the test's objects through the table returned by require(SHARED).
local luahost = require "luahost"
local lfs = require "lfs"
local helpers = require "support.helpers"

local sel = luahost.selector
local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local SHARED = "reload_inprocess_spec.shared"

-- One line, so that line n of a script's body is line n + 1 of its file.
local PRELUDE = 'local luahost = require "luahost"; local sel = luahost.selector; '
  .. 'local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE; '
  .. 'local T = require "' .. SHARED .. '"\n'

local shared -- the table the scripts see as T
local dir -- the temporary directory of the scripts
local count = 0
local tracked -- sockets and selectors a test made, closed in after_each
local saved_level

-- Writes body (after PRELUDE) as a new script file; returns its path.
local function script(body)
  count = count + 1
  local path = string.format("%s/script%d.lua", dir, count)
  local f = assert(io.open(path, "w"))
  f:write(PRELUDE, body)
  f:close()
  return path
end

-- Escapes s for use as a literal in a Lua pattern.
local function literal(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

local function track(...)
  for i = 1, select("#", ...) do
    local obj = select(i, ...)
    tracked[#tracked + 1] = obj
  end
  return ...
end

-- A connected pair (client end, server end), neither registered; closed after the test.
local function pair()
  return track(helpers.pair())
end

local function listen()
  local server, port = helpers.listen()
  track(server)
  return server, port
end

-- A reload that must succeed.
local function reload_ok(path)
  local results = table.pack(luahost.reload(path))
  assert(results[1] == true, "reload refused: " .. tostring(results[2]))
  assert.equal(1, results.n, "a successful reload returns just true")
end

-- A reload that must be refused; returns the message.
local function reload_refused(path)
  local results = table.pack(luahost.reload(path))
  assert(results[1] == nil, "the reload was taken")
  assert.equal(2, results.n, "a refused reload returns nil and a message")
  assert.equal("string", type(results[2]))
  return results[2]
end

-- What the selector holds: fileobj -> {fd, events, data}.
local function snapshot(selector)
  local map = {}
  for fileobj, key in pairs(selector:get_map()) do
    map[fileobj] = {fd = key.fd, events = key.events, data = key.data}
  end
  return map
end

-- stats() but lua_bytes, which garbage moves.
local function counts()
  local s = luahost.stats()
  s.lua_bytes = nil
  return s
end

local function is_listener(sock)
  for _, l in ipairs(luahost.listeners()) do
    if rawequal(l, sock) then return true end
  end
  return false
end

-- Whether a connect to 127.0.0.1:port is refused (waits, bounded, for the outcome).
local function refused(port)
  local sock = luahost.connect("127.0.0.1", port)
  if not sock then return true end
  track(sock)
  helpers.wait_ready(sock, WRITE, nil, "the connect to finish")
  return sock:getpeername() == nil
end

-- Steps the host loop for a while (for checks that something does not happen).
local function step_for(seconds)
  local deadline = luahost.now() + seconds
  while luahost.now() < deadline do luahost.step(0.005) end
end

local function noop() end

describe("luahost.reload in process", function()
  setup(function()
    saved_level = luahost.log_level()
    luahost.log_level("error") -- the refusals are still logged
    dir = os.tmpname()
    os.remove(dir)
    assert(lfs.mkdir(dir))
  end)

  teardown(function()
    for name in lfs.dir(dir) do
      if name ~= "." and name ~= ".." then os.remove(dir .. "/" .. name) end
    end
    lfs.rmdir(dir)
    luahost.log_level(saved_level)
    package.loaded[SHARED] = nil
  end)

  before_each(function()
    shared, tracked = {}, {}
    package.loaded[SHARED] = shared
  end)

  after_each(function()
    for i = #tracked, 1, -1 do
      local obj = tracked[i]
      if obj.cancel then obj:cancel() elseif obj ~= sel then obj:close() end
    end
    -- A clean slate for the next test: this runs what on_reload callbacks are left,
    -- closes every listener and drops luahost.adopt.
    reload_ok(script(""))
    assert.is_nil(luahost.adopt)
    assert(helpers.host_is_idle(), "the host is not idle after the test: "
      .. table.concat(helpers.registered(), ", "))
  end)

  describe("results and generations", function()
    it("returns true, runs the new main chunk, and counts one generation per load", function()
      local g = luahost.generation()
      local path = script("T.ran = (T.ran or 0) + 1\nT.gen = luahost.generation()\n")
      reload_ok(path)
      assert.equal(1, shared.ran)
      assert.equal(g + 1, shared.gen, "luahost.generation() inside the new chunk")
      assert.equal(g + 1, luahost.generation())
      reload_ok(path)
      assert.equal(2, shared.ran)
      assert.equal(g + 2, shared.gen)
      assert.equal(g + 2, luahost.generation())
      assert.equal(g + 2, luahost.stats().generation)
    end)

    it("refuses a script that does not compile with nil and a message naming file and line, "
      .. "without running any of it", function()
      local g = luahost.generation()
      local path = script("T.ran = true\nlocal x = = 1\n")
      local err = reload_refused(path)
      assert.matches("^" .. literal(path) .. ":3:", err)
      assert.is_nil(shared.ran)
      assert.equal(g, luahost.generation())
    end)

    it("refuses a script that raises while loading with nil and a message naming file and "
      .. "line", function()
      local g = luahost.generation()
      local path = script("T.ran = true\n\nerror('refused on purpose')\n")
      local err = reload_refused(path)
      assert.matches("^" .. literal(path) .. ":4: refused on purpose", err)
      assert.is_true(shared.ran)
      assert.equal(g, luahost.generation())
    end)

    it("refuses a missing file and errors that are not strings", function()
      local g = luahost.generation()
      local missing = dir .. "/no-such-script.lua"
      assert.matches(literal(missing), reload_refused(missing))
      reload_refused(script("error({})\n"))
      reload_refused(script("error(nil)\n"))
      assert.equal(g, luahost.generation())
    end)

    it("counts generations only for loads that were taken", function()
      local g = luahost.generation()
      local good = script("T.seen = T.seen or {}\nT.seen[#T.seen + 1] = luahost.generation()\n")
      reload_ok(good)
      reload_refused(script("local = 1\n"))
      assert.equal(g + 1, luahost.generation())
      reload_refused(script("T.inside = luahost.generation()\nerror('no')\n"))
      assert.equal(g + 1, luahost.generation())
      reload_ok(good)
      assert.same({g + 1, g + 2}, shared.seen)
      assert.equal(g + 2, luahost.generation())
      assert.equal(g + 2, luahost.stats().generation)
    end)

    it("raises when reload has no path to load outside the executable, and a reload inside "
      .. "a reload is refused", function()
      assert.has_error(function() luahost.reload() end, "no script to reload: pass its path")
      local inner = script("T.inner = true\n")
      reload_ok(script("T.nested = table.pack(pcall(luahost.reload, '" .. inner .. "'))\n"))
      assert.is_false(shared.nested[1])
      assert.matches("a reload is already in progress", shared.nested[2])
      assert.is_nil(shared.inner)
    end)

    it("can be called from a callback the host loop runs; later events reach the new code",
      function()
      local client, conn = pair()
      shared.conn = conn
      local path = script([[
sel:register(T.conn, READ, function(s) T.new_got = s:recv(100) end)
]])
      sel:register(conn, READ, function(s)
        s:recv(100)
        shared.result = table.pack(luahost.reload(path))
      end)
      assert(client:send("reload"))
      helpers.step_until(function() return shared.result end, nil, "the callback to reload")
      assert.same({true, n = 1}, shared.result)
      assert(client:send("after"))
      helpers.step_until(function() return shared.new_got end, nil, "the new callback")
      assert.equal("after", shared.new_got)
    end)
  end)

  describe("a refused reload", function()
    it("restores every registration it changed, events and data exactly, on every selector",
      function()
      local other = track(luahost.new_selector())
      local ca, a = pair()
      local _, b = pair()
      local _, c = pair()
      local fa = function(s, mask)
        shared.fa_masks = (shared.fa_masks or "") .. mask
        s:recv(100)
      end
      local fb = function(_, mask) shared.fb_mask = mask end
      sel:register(a, READ, fa)
      sel:register(b, READ | WRITE, fb)
      sel:register(c, READ, noop)
      local _, d = pair()
      local fd_ = function(_, _, key) shared.d_key = key end -- takes the key
      sel:register(d, READ, fd_)
      local other_data = {}
      other:register(a, WRITE, other_data)
      other:register(c, READ, "c's data")
      shared.a, shared.b, shared.c, shared.d, shared.other = a, b, c, d, other
      local before, before_other = snapshot(sel), snapshot(other)
      local err = reload_refused(script([[
sel:modify(T.a, WRITE)
sel:unregister(T.b)
sel:register(T.b, READ, function() end)
sel:register(T.c, READ | WRITE, function() end)
sel:modify(T.d, WRITE, function(_, _) end)
T.other:modify(T.a, READ, "changed")
T.other:unregister(T.c)
T.own = luahost.socket("inet", "stream")
sel:register(T.own, READ, function() end)
T.other:register(T.own, WRITE, "own")
error("refused after changing registrations")
]]))
      assert.matches("refused after changing registrations", err)
      assert.same(before, snapshot(sel))
      assert.same(before_other, snapshot(other))
      for fileobj, key in pairs(before) do
        assert(rawequal(key.data, sel:get_key(fileobj).data), "data restored by identity")
      end
      assert.equal(-1, shared.own:fileno(), "the socket the refused script made is closed")
      -- The backend watches what the keys say again: a READ only when data comes for a,
      -- and b keeps being reported writable to its own callback.
      helpers.step_until(function() return shared.fb_mask end, nil, "b's callback")
      assert.equal(WRITE, shared.fb_mask & WRITE)
      sel:modify(b, READ, fb) -- stop the busy writability before watching a
      step_for(0.05)
      assert.is_nil(shared.fa_masks, "a's callback ran with nothing to read")
      assert(ca:send("x"))
      helpers.step_until(function() return shared.fa_masks end, nil, "a's callback")
      assert.equal(tostring(READ), shared.fa_masks)
    end)

    it("closes the listeners and cancels the timers the refused script made", function()
      local before, listeners = counts(), #luahost.listeners()
      reload_refused(script([[
T.listener = assert(luahost.listen("127.0.0.1", 0))
T.port = select(2, T.listener:getsockname())
sel:register(T.listener, READ, function() T.accepted = true end)
T.every = luahost.every(0.005, function() T.fired = true end)
T.after = luahost.after(0, function() T.fired = true end)
error("refused after listening and starting timers")
]]))
      assert.equal(-1, shared.listener:fileno(), "the listener is closed")
      assert.is_false(is_listener(shared.listener))
      assert.equal(listeners, #luahost.listeners())
      assert.is_true(refused(shared.port), "a connect to the closed listener succeeded")
      assert.is_false(shared.every:active())
      assert.is_false(shared.after:active())
      step_for(0.05)
      assert.is_nil(shared.fired, "a timer of the refused script fired")
      assert.is_nil(shared.accepted)
      assert.same(before, counts())
    end)

    it("restores luahost.adopt and drops the on_reload callbacks the refused script added",
      function()
      local adopt = function() end
      luahost.adopt = adopt
      reload_refused(script([[
function luahost.adopt() T.refused_adopt = true end
luahost.on_reload(function() T.refused_on_reload = true end)
error("no")
]]))
      assert(rawequal(adopt, luahost.adopt), "luahost.adopt is the running script's again")
      local _, conn = pair()
      sel:register(conn, READ, noop)
      reload_ok(script(""))
      assert.is_nil(shared.refused_adopt)
      assert.is_nil(shared.refused_on_reload)
    end)

    it("leaves luahost.stats() as it was, and leaks no Lua memory over many refusals",
      function()
      local _, conn = pair()
      local server, port = listen()
      sel:register(conn, READ, noop)
      sel:register(server, READ, noop)
      local timer = track(luahost.every(60, noop))
      shared.conn, shared.port = conn, port
      local syntax = script("local broken = = 1\n")
      local raising = script([[
local l = assert(luahost.listen("127.0.0.1", 0))
sel:register(l, READ, function() end)
sel:modify(T.conn, READ | WRITE, function() end)
luahost.listen("127.0.0.1", T.port)
luahost.every(1, function() end)
luahost.on_reload(function() end)
function luahost.adopt() end
error("refused")
]])
      local before = counts()
      local function bytes()
        collectgarbage("collect")
        collectgarbage("collect")
        return luahost.stats().lua_bytes
      end
      reload_refused(syntax)
      reload_refused(raising)
      assert.same(before, counts(), "after one refusal of each kind")
      local first = bytes()
      for _ = 1, 20 do
        reload_refused(syntax)
        reload_refused(raising)
      end
      assert.same(before, counts(), "after 20 more of each")
      local growth = bytes() - first
      assert(growth < 16 * 1024, "Lua memory grew by " .. growth .. " bytes over 40 refusals")
      assert.is_true(timer:active())
    end)

    it("does not close a connection the running script holds unregistered, when the "
      .. "refused script registered it", function()
      -- The running script keeps conn open but unregistered (it paused reading); the new
      -- version registers it, then raises. Rolling back must unregister it, not close it.
      local client, conn = pair()
      shared.conn = conn
      reload_refused(script([[
sel:register(T.conn, READ, function() end)
error("refused after registering a connection it did not create")
]]))
      assert.is_nil(sel:get_key(conn), "conn is registered after the rollback")
      assert.are_not.equal(-1, conn:fileno(), "the rollback closed a connection the running "
        .. "script holds")
      step_for(0.05)
      local data, err = client:recv(10)
      assert.is_nil(data, "the client saw the connection end")
      assert.equal("wouldblock", err)
    end)

    it("does not close a listener the running script holds unregistered, when the refused "
      .. "script asked for it and registered it", function()
      -- The running script stopped accepting (say, at its client limit) by unregistering
      -- its listener; the new version listens on the same address, registers, raises.
      local server, port = listen()
      shared.port = port
      reload_refused(script([[
local l = assert(luahost.listen("127.0.0.1", T.port))
sel:register(l, READ, function() end)
error("refused after registering the listener")
]]))
      assert.are_not.equal(-1, server:fileno(), "the rollback closed the running listener")
      assert.is_true(is_listener(server))
      assert.is_nil(sel:get_key(server))
    end)

    it("keeps a timer of the running script that the refused script cancelled", function()
      local fired = 0
      local timer = track(luahost.every(0.005, function() fired = fired + 1 end))
      shared.timer = timer
      reload_refused(script("T.timer:cancel()\nerror('refused after cancelling a timer')\n"))
      assert.is_true(timer:active(), "the running script's timer stays cancelled")
      helpers.step_until(function() return fired > 0 end, 1, "the timer to fire")
    end)
  end)

  describe("listen and register while reloading", function()
    it("listen on an address the host already listens on returns that listener", function()
      local server, port = listen()
      assert(rawequal(server, luahost.listen("127.0.0.1", port)), "outside a reload")
      local another = track(assert(luahost.listen("127.0.0.1", 0)))
      assert(not rawequal(server, another), "port 0 asks for a new listener")
      shared.port = port
      reload_ok(script([[
T.got, T.err = luahost.listen("127.0.0.1", T.port)
]]))
      assert.is_nil(shared.err)
      assert(rawequal(server, shared.got), "during a reload: the same socket")
      assert.are_not.equal(-1, server:fileno())
      local n = 0
      for _, l in ipairs(luahost.listeners()) do
        if rawequal(l, server) then n = n + 1 end
      end
      assert.equal(1, n, "the listener is listed once")
    end)

    it("register of a fileobj already registered replaces its callback and events", function()
      local client, conn = pair()
      local old = function() shared.old_ran = true end
      sel:register(conn, READ, old)
      shared.conn = conn
      reload_ok(script([[
T.new = function(s, mask)
  T.masks = (T.masks or 0) | mask
  if mask & READ ~= 0 then T.got = s:recv(100) end
  if mask & WRITE ~= 0 then sel:modify(s, READ, T.new) end
end
T.key = sel:register(T.conn, READ | WRITE, T.new)
]]))
      local key = sel:get_key(conn)
      assert(rawequal(shared.key, key), "register returned the key")
      assert(rawequal(shared.new, key.data), "the callback is the new one")
      assert.equal(READ | WRITE, key.events)
      local n = 0
      for fileobj in pairs(sel:get_map()) do
        if rawequal(fileobj, conn) then n = n + 1 end
      end
      assert.equal(1, n)
      assert(client:send("hello"))
      helpers.step_until(function() return shared.got end, nil, "the new callback to read")
      assert.equal("hello", shared.got)
      assert.is_nil(shared.old_ran)
      -- Outside a reload, registering twice is still a mistake.
      assert.has_error(function() sel:register(conn, READ, old) end)
    end)
  end)

  describe("adopt", function()
    it("hands every key the new script did not take over to luahost.adopt exactly once",
      function()
      local c1, k1 = pair()
      local _, k2 = pair()
      local _, k3 = pair()
      local server, port = listen()
      local old1, old2, old_accept = function() end, function() end, function() end
      sel:register(k1, READ, old1)
      sel:register(k2, READ, old2)
      sel:register(k3, READ, noop)
      sel:register(server, READ, old_accept)
      shared.k1, shared.k3, shared.port = k1, k3, port
      reload_ok(script([[
T.listener = assert(luahost.listen("127.0.0.1", T.port))
T.new3 = function() end
sel:register(T.k3, READ, T.new3)
T.new1 = function(s) T.got1 = s:recv(100) end
T.handed = {}
function luahost.adopt(key)
  T.handed[#T.handed + 1] = key.fileobj
  if rawequal(key.fileobj, T.k1) then sel:modify(key.fileobj, key.events, T.new1) end
end
]]))
      local times = {}
      for _, fileobj in ipairs(shared.handed) do
        times[fileobj] = (times[fileobj] or 0) + 1
      end
      assert.equal(1, times[k1], "k1 handed once")
      assert.equal(1, times[k2], "k2 handed once")
      assert.is_nil(times[k3], "k3 was taken over by the new script itself")
      assert.is_nil(times[server], "a listener is not handed over")
      assert.equal(2, #shared.handed)
      assert(rawequal(shared.new1, sel:get_key(k1).data), "adopt moved k1 onto new code")
      assert(rawequal(old2, sel:get_key(k2).data), "k2 keeps its old callback")
      assert(rawequal(shared.new3, sel:get_key(k3).data))
      assert(rawequal(old_accept, sel:get_key(server).data), "the listener keeps its callback")
      assert(c1:send("to new code"))
      helpers.step_until(function() return shared.got1 end, nil, "k1's new callback")
      assert.equal("to new code", shared.got1)
    end)

    it("does not hand over a key that an earlier adopt call closed", function()
      local conns = {}
      for i = 1, 4 do
        local _, conn = pair()
        conns[i] = conn
        sel:register(conn, READ, noop)
      end
      shared.conns = conns
      reload_ok(script([[
T.handed = 0
function luahost.adopt(key)
  T.handed = T.handed + 1
  for _, conn in ipairs(T.conns) do
    if not rawequal(conn, key.fileobj) then conn:close() end
  end
end
]]))
      assert.equal(1, shared.handed)
    end)

    it("hands the keys still on old code over again at the next reload, and a script "
      .. "without adopt leaves them alone", function()
      local _, conn = pair()
      sel:register(conn, READ, noop)
      shared.conn = conn
      local recording = script([[
T.handed = 0
function luahost.adopt(key)
  if rawequal(key.fileobj, T.conn) then T.handed = T.handed + 1 end
end
]])
      reload_ok(recording)
      assert.equal(1, shared.handed)
      reload_ok(recording)
      assert.equal(1, shared.handed, "once per reload")
      reload_ok(script("T.plain = true\n"))
      assert.is_nil(luahost.adopt, "luahost.adopt is the new script's: none")
      assert(rawequal(noop, sel:get_key(conn).data))
    end)
  end)

  describe("listeners after a reload", function()
    it("closes the listeners the new script did not ask for, keeps those it did, and a "
      .. "refused reload closes none", function()
      local keep, keep_port = listen()
      local drop, drop_port = listen()
      sel:register(keep, READ, noop)
      sel:register(drop, READ, noop)
      reload_refused(script("error('asks for nothing, then raises')\n"))
      assert.are_not.equal(-1, keep:fileno())
      assert.are_not.equal(-1, drop:fileno())
      shared.keep_port = keep_port
      reload_ok(script("T.keep = luahost.listen('127.0.0.1', T.keep_port)\n"))
      assert(rawequal(keep, shared.keep))
      assert.are_not.equal(-1, keep:fileno())
      assert.is_true(is_listener(keep))
      assert.is_not_nil(sel:get_key(keep))
      assert.equal(-1, drop:fileno(), "the listener not asked for is closed")
      assert.is_false(is_listener(drop))
      assert.is_true(refused(drop_port))
      assert.is_false(refused(keep_port))
    end)

    it("closes a listener that only a refused reload asked for again, once a later reload "
      .. "does not ask for it", function()
      local server, port = listen()
      shared.port = port
      reload_refused(script([[
luahost.listen("127.0.0.1", T.port)
error("refused after asking for the listener")
]]))
      assert.are_not.equal(-1, server:fileno())
      reload_ok(script("T.nothing = true\n"))
      assert.equal(-1, server:fileno(), "the listener the new script did not ask for is open")
      assert.is_false(is_listener(server))
    end)
  end)

  describe("on_reload", function()
    it("runs the running script's callbacks, in order and once, after the new script loaded "
      .. "and before adopt; never for a refused reload", function()
      local calls = {}
      shared.calls = calls
      luahost.on_reload(function()
        calls[#calls + 1] = "first, new chunk ran: " .. tostring(shared.new_ran)
      end)
      luahost.on_reload(function() calls[#calls + 1] = "second" end)
      reload_refused(script([[
luahost.on_reload(function() T.calls[#T.calls + 1] = "refused" end)
error("no")
]]))
      assert.same({}, calls)
      local _, conn = pair()
      sel:register(conn, READ, noop)
      reload_ok(script([[
T.new_ran = true
luahost.on_reload(function() T.calls[#T.calls + 1] = "generation 2's" end)
function luahost.adopt() T.calls[#T.calls + 1] = "adopt" end
]]))
      assert.same({"first, new chunk ran: true", "second", "adopt"}, calls)
      reload_ok(script(""))
      assert.same({"first, new chunk ran: true", "second", "adopt", "generation 2's"}, calls)
    end)
  end)

  describe("timers", function()
    it("keeps the old script's timers unless the new script cancels them", function()
      local fired = 0
      local timer = track(luahost.every(0.005, function() fired = fired + 1 end))
      reload_ok(script("T.nothing = true\n"))
      assert.is_true(timer:active())
      local seen = fired
      helpers.step_until(function() return fired > seen end, 1, "the old timer to fire")
      shared.timer = timer
      reload_ok(script("T.timer:cancel()\n"))
      assert.is_false(timer:active())
    end)
  end)
end)
