-- task_spec.lua: luahost.task, sequential-style streams on coroutines. Most run on the sim
-- backend, where a 30 s timeout takes no real time; the connect and the hundred
-- concurrent clients run on epoll, over real sockets.
local T = require "luahost.test"
local luahost = require "luahost"

-- A port nothing listens on (the kernel's choice, closed again): a connect is refused.
local function unused_port()
  local l = assert(luahost.listen("127.0.0.1", 0))
  local _, port = l:getsockname()
  l:close()
  return port
end

-- A server whose accept loop is a task, spawning HANDLER(stream) for each client; the
-- test sets HANDLER in the script's globals. Returns the server and its luahost.task.
local SCRIPT = [[
local luahost = require "luahost"
local task = require "luahost.task"
local server = task.wrap(assert(luahost.listen("127.0.0.1", 0)))
task.spawn(function()
  while true do
    local client = server:accept()
    if client then task.spawn(function(s) return HANDLER(s) end, client) end
  end
end)
]]

local function serve(handler, opts)
  local srv = T.start(T.tempfile(SCRIPT), nil, opts or {selector = "sim"})
  srv.env.HANDLER = handler
  return srv, srv.env.require("luahost.task")
end

-- A <close> value that counts, in closed, the tasks whose variables it closed.
local closed
local function closer()
  return setmetatable({}, {__close = function() closed = closed + 1 end})
end
before_each(function() closed = 0 end)

-- One line describing what a receive returned.
local function said(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  return table.concat(parts, " ") .. "\n"
end

describe("a luahost.task stream", function()
  it("receives lines (LF or CRLF), counts, up to a delimiter, and all, however split", function()
    local srv = serve(function(s)
      local r = {}
      r[1] = s:receive("*l")
      r[2] = s:receive("l")
      r[3] = s:receive(5)
      r[4] = s:receive_until("--")
      r[5] = s:receive("*l", "pre-")
      r[6] = s:receiveany(3)
      r[7] = s:receive("*a")
      s:send(table.concat(r, "/"))
    end)
    local c = T.client(srv)
    for _, piece in ipairs({"on", "e\r", "\ntwo\nab", "\ncd", "x-y-", "-z\nres", "tof it"}) do
      c:send(piece)
    end
    c:shutdown()
    assert.equal("one/two/ab\ncd/x-y/pre-z/res/tof it", c:read_all())
    srv:stop()
    T.assert_clean(srv)
  end)

  it("times out each operation on the virtual clock with nil, timeout and the partial data",
    function()
      local task
      local srv
      srv, task = serve(function(s)
        s:settimeout(30)
        s:send(said(s:receive(10)))
        s:send(said(s:receive("*l")))
        s:send(said(s:receive_until("END")))
        s:send(said(s:receiveany()))
        s:settimeout(0)
        s:send(said(s:receive(1)))
        s:settimeout(nil)
        s:receive("*l")
        task.sleep(1)
        s:settimeout(0)
        s:send(said(s:receive(2)))
      end)
      local c = T.client(srv)
      c:send("1234")
      srv:step()
      T.advance(29.9)
      assert.equal("", c:received())
      T.advance(0.2)
      assert.equal("nil timeout 1234", c:line())
      c:send("half a li")
      T.advance(30)
      assert.equal("nil timeout half a li", c:line())
      c:send("abcEN")
      T.advance(30)
      assert.equal("nil timeout abcEN", c:line())
      T.advance(30)
      assert.equal("nil timeout", c:line())
      -- settimeout(0): one try, no wait; what has come is still read
      assert.equal("nil timeout ", c:line())
      c:send("go\n")
      srv:step()
      c:send("xy")
      T.advance(1)
      assert.equal("xy nil nil", c:line(), "settimeout(0) did not read what had come")
      assert.same({true, "eof"}, {c:closed()})
      assert.equal(0, srv.luahost.stats().timers, "a timer of a finished wait is left")
      srv:stop()
      T.assert_clean(srv)
    end)

  it("cancels the timer of a wait that data ended, so it cannot end the next wait early", function()
    local srv = serve(function(s)
      s:settimeout(30)
      for _ = 1, 2 do s:send(said(s:receive("*l"))) end
    end)
    local c = T.client(srv)
    T.advance(20)
    c:send("a\n") -- the first wait's timer was due at 30: it must not end the second at 35
    assert.equal("a nil nil", c:line())
    T.advance(15)
    assert.equal("", c:received())
    assert.equal(1, srv.luahost.stats().timers, "the first wait's timer is left")
    c:send("b\n")
    assert.equal("b nil nil", c:line())
    T.advance(30)
    assert.same({true, "eof"}, {c:closed()})
    srv:stop()
    T.assert_clean(srv)
  end)

  it("answers a line past setmaxline with line too long, discards it, and goes on", function()
    local srv = serve(function(s)
      s:setmaxline(10)
      repeat
        local line, err = s:receive("*l")
        s:send(said(line, err))
        if line == "ok" then -- the next line is too long, then comes one read of any size
          local too_long, why = s:receive("*l")
          s:send(said(too_long, why))
          s:send(s:receiveany() .. "\n")
        end
      until err == "closed"
    end)
    local c = T.client(srv)
    c:send("0123456789\n0123456789\r\n")
    assert.same({"0123456789 nil", "0123456789 nil"}, c:lines(2))
    c:send(("x"):rep(11)) -- no end yet: already too long
    assert.equal("nil line too long", c:line())
    c:send(("y"):rep(5000))
    c:send("tail\nok\n")
    assert.equal("ok nil", c:line())
    c:send(("w"):rep(20)) -- too long again: discarded up to its end, however it comes
    assert.equal("nil line too long", c:line())
    c:send("www")
    srv:step() -- a read that brings only discarded bytes: receiveany waits on
    c:send("w\nafter")
    assert.equal("after", c:line())
    c:send(("z"):rep(11) .. "\n")
    assert.equal("nil line too long", c:line())
    c:shutdown()
    assert.equal("nil closed", c:line())
    assert.equal("", c:received())
    srv:stop()
    T.assert_clean(srv)
  end)

  it("sleeps on the virtual clock, and a task can be cancelled while it waits", function()
    local waiting, task
    local srv
    srv, task = serve(function(s)
      local _ <close> = closer()
      if s:receive("*l") == "sleep" then
        task.sleep(10)
        s:send("woke\n")
      else
        waiting = task.current()
        s:receive("*l")
        s:send("never\n")
      end
    end)
    local a, b = T.client(srv), T.client(srv)
    a:send("sleep\n")
    srv:step()
    T.advance(9.9)
    assert.equal("", a:received())
    T.advance(0.2)
    assert.equal("woke", a:line())
    assert.same({true, "eof"}, {a:closed()})
    b:send("wait\n")
    srv:step()
    assert.equal("waiting", waiting:status())
    assert.is_true(waiting:cancel())
    assert.equal("cancelled", waiting:status())
    assert.is_false(waiting:cancel())
    assert.equal(2, closed, "a <close> variable of a task did not run")
    assert.same({true, "eof"}, {b:closed()})
    assert.equal(1, task.count(), "tasks left but the accept loop")
    srv:stop()
    T.assert_clean(srv)
  end)

  it("logs a task's error with its peer and traceback and closes only its connection",
    function()
      local srv = serve(function(s)
        local _ <close> = closer()
        while true do
          local line = assert(s:receive("*l"))
          if line == "boom" then error("boom in a handler") end
          s:send(line .. "\n")
        end
      end)
      local a, b = T.client(srv), T.client(srv)
      a:echo("before\n")
      b:echo("before\n")
      a:send("boom\n")
      assert.is_true(a:closed())
      local log = srv:log()
      assert.matches("error error in task for 127%.0%.0%.1:%d+: [^\n]*boom in a handler"
        .. "\\nstack traceback:", log)
      assert.equal(1, closed)
      b:echo("after\n")
      assert.is_false(b:closed(0))
      srv:stop()
      T.assert_clean(srv)
    end)

  it("sends without waiting until the output passes its high water, then waits for it",
    function()
      local sent = 0
      local srv = serve(function(s)
        s:setlimit(4096) -- the high water is a quarter: 1024 bytes
        s:receive("*l") -- the test has shaped the connection
        for i = 1, 8 do
          assert(s:send(("%04d"):format(i) .. ("x"):rep(996)))
          sent = i
        end
      end)
      local c = T.client(srv)
      c:shape({would_block = 1e9}) -- nothing the server sends goes out
      c:send("go\n")
      for _ = 1, 5 do srv:step() end
      assert.equal(2, sent, "send did not wait at the high water")
      local other = T.client(srv) -- the waiting task holds up nobody else
      assert.equal(2, sent)
      c:shape({would_block = 0})
      local want = {}
      for i = 1, 8 do want[i] = ("%04d"):format(i) .. ("x"):rep(996) end
      assert.equal(table.concat(want), c:read_all())
      assert.equal(8, sent)
      other:close()
      srv:stop()
      T.assert_clean(srv)
    end)

  it("ends a send that waits at the high water with the error when the peer resets", function()
    local result
    local srv, task
    srv, task = serve(function(s)
      s:setlimit(4096)
      s:receive("*l")
      for _ = 1, 100 do
        local ok, err = s:send(("x"):rep(1000))
        if not ok then
          result = err
          return
        end
      end
      result = "all sent"
    end)
    local c = T.client(srv)
    c:shape({would_block = 1e9})
    c:send("go\n")
    srv:step()
    assert.is_nil(result, "send did not wait")
    c:reset()
    srv:run_until(function() return result end)
    assert.matches("reset", result)
    assert.equal(1, task.count(), "tasks left but the accept loop")
    assert.equal(0, srv.luahost.stats().connections)
    srv:stop()
    T.assert_clean(srv)
  end)

  -- receiveany and send run in C (src/lua_task.c) when nothing is unusual: a message
  -- wakes the task, is read and sent, and the task waits again, message after message.
  -- (A first version waited again at once on being woken, since the read before its wait
  -- had left the socket dry: the first message came back, no later one.)
  it("echoes message after message with receiveany and send, each waking its task", function()
    local srv = serve(function(s)
      while true do
        local data, err = s:receiveany(4) -- at most 4: the rest stays for the next call
        if not data then
          s:send("end: " .. err .. "\n")
          return
        end
        s:send("[" .. data .. "]")
      end
    end)
    local c = T.client(srv)
    for i = 1, 5 do
      c:send("m" .. i .. "\n")
      assert.equal("[m" .. i .. "\n]", c:read(5))
    end
    c:send("abcdef\n")
    assert.equal("[abcd][ef\n]", c:read(11))
    c:shutdown()
    assert.equal("end: closed", c:line())
    srv:stop()
    T.assert_clean(srv)
  end)

  -- The C paths read a stream's fields from its table, which a script can write: each
  -- value is checked, and one that is not what task.lua put there goes to the Lua path,
  -- which raises as any misuse does: the task fails, the host goes on.
  it("fails only the task whose stream's fields a script overwrote", function()
    local srv = serve(function(s)
      local what = s:receive("*l")
      if what == "core" then -- its paths in C keep the core they were made with; task.lua's fail
        s[1] = {}
        s:receive("*l")
      elseif what == "buffer" then
        s[1][2] = 42
      end
      s:send(assert(s:receiveany()))
    end)
    local a, b, c = T.client(srv), T.client(srv), T.client(srv)
    a:send("core\n")
    b:send("buffer\n")
    assert.is_true(a:closed())
    assert.is_true(b:closed())
    c:send("fine\nback")
    assert.equal("back", c:read(4))
    assert.matches("error in task for [^\n]*string expected, got nil", srv:log())
    assert.matches("error in task for [^\n]*string expected, got number", srv:log())
    srv:stop()
    T.assert_clean(srv)
  end)

  it("mixes with callbacks on the same selector", function()
    local srv = T.start(T.tempfile([[
local luahost = require "luahost"
local task = require "luahost.task"
local listener = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(listener, luahost.EVENT_READ, function(l)
  local conn = l:accept()
  if not conn then return end
  task.spawn(function(s) -- a callback accepts; a task serves
    s:send("task " .. s:receive("*l") .. "\n")
  end, task.wrap(conn))
end)
]]), nil, {selector = "sim"})
    local a = T.client(srv)
    a:send("one\n")
    assert.equal("task one", a:line())
    assert.same({true, "eof"}, {a:closed()})
    srv:stop()
    T.assert_clean(srv)
  end)
end)

describe("luahost.task over real sockets", function()
  it("connects to a server, and says why a connect failed", function()
    local refused = unused_port()
    local results = {}
    local srv, task = serve(function(s)
      s:send("hello " .. s:receive("*l") .. "\n")
    end, {})
    task.spawn(function()
      local s, err = task.connect("127.0.0.1", srv.port, {timeout = 5})
      results.err = err
      if s then
        s:send("me\n")
        results.reply = s:receive("*l")
      end
      results.refused = select(2, task.connect("127.0.0.1", refused))
    end)
    srv:run_until(function() return results.refused end)
    assert.is_nil(results.err)
    assert.equal("hello me", results.reply)
    assert.matches("refused", results.refused)
    srv:run_until(function() return srv.luahost.stats().connections == 0 end)
    srv:stop()
    T.assert_clean(srv)
  end)

  it("serves 100 concurrent clients byte-exact with every kind of receive, sleep and timeout",
    function()
      local sleep
      local srv = serve(function(s)
        s:settimeout(5)
        local n = tonumber(assert(s:receive("*l")):match("^n=(%d+)$"))
        local body = assert(s:receive(n))
        local tail = assert(s:receive_until("\r\n\r\n"))
        sleep(0.01)
        s:settimeout(0.05)
        local none, err = s:receive("*l") -- nothing more comes: a timeout
        s:send(#body .. ":" .. body .. "|" .. tail .. "|" .. tostring(none) .. " " .. err)
      end, {})
      local task = srv.env.require("luahost.task")
      sleep = task.sleep
      math.randomseed(14)
      local clients = T.clients(srv.host, srv.port, 100)
      local want = {}
      for i, c in ipairs(clients) do
        local body = T.random_bytes(math.random(1, 20000))
        local tail = ("t"):rep(math.random(0, 300)) .. i
        want[i] = #body .. ":" .. body .. "|" .. tail .. "|nil timeout"
        c.srv = srv -- its waits drive the server
        c:send("n=" .. #body .. "\n" .. body .. tail .. "\r\n\r\n")
      end
      for i, c in ipairs(clients) do
        local got = c:read_all(10)
        assert(got == want[i], ("client %d got %d bytes, not the %d it sent back"):format(i,
          #got, #want[i]))
      end
      assert.is_nil(srv:log():match("error [^\n]*"))
      for _, c in ipairs(clients) do c:close() end
      assert.equal(0, task.count() - 1) -- the accept loop
      srv:stop()
      T.assert_clean(srv)
    end)
end)

-- A versioned echo of lines whose accept loop outlives reloads: each load puts its serve
-- in STATE, and the loop of the first load spawns each new client's task with the latest.
local VERSIONED = [[
local luahost = require "luahost"
local task = require "luahost.task"
local listener = assert(luahost.listen("127.0.0.1", 0))
STATE = STATE or {}
STATE.serve = function(s)
  while true do
    local line = s:receive("*l")
    if not line then return end
    s:send("v%d " .. line .. "\n")
  end
end
if not STATE.acceptor then
  local server = task.wrap(listener)
  STATE.acceptor = task.spawn(function()
    while true do
      local client = server:accept()
      if client then task.spawn(STATE.serve, client) end
    end
  end)
end
]]

-- The same, each load with an accept loop of its own, which the next load replaces: the
-- old load's on_reload cancels its loop once the new one has loaded.
local REPLACED = [[
local luahost = require "luahost"
local task = require "luahost.task"
local server = task.wrap(assert(luahost.listen("127.0.0.1", 0)))
local function serve(s)
  while true do
    local line = s:receive("*l")
    if not line then return end
    s:send("v%d " .. line .. "\n")
  end
end
local acceptor = task.spawn(function()
  while true do
    local client = server:accept()
    if client then task.spawn(serve, client) end
  end
end)
luahost.on_reload(function() acceptor:cancel() end)
]]

describe("luahost.task and reloads", function()
  it("keeps running tasks on their code and spawns new ones with the new code", function()
    local path = T.tempfile(VERSIONED:format(1))
    local srv = T.start(path, nil, {selector = "sim"})
    local old = T.client(srv)
    old:send("a\n")
    assert.equal("v1 a", old:line())
    local f = assert(io.open(path, "w"))
    f:write(VERSIONED:format(2))
    f:close()
    assert.is_true(srv:reload())
    local new = T.client(srv)
    new:send("b\n")
    assert.equal("v2 b", new:line())
    old:send("c\n")
    assert.equal("v1 c", old:line(), "a running task changed code")
    f = assert(io.open(path, "w"))
    f:write("this does not compile")
    f:close()
    assert.is_nil(srv:reload())
    local third = T.client(srv)
    third:send("d\n")
    assert.equal("v2 d", third:line(), "a failed reload stopped the accept loop")
    srv:stop()
    T.assert_clean(srv)
  end)

  it("can replace the accept loop itself, and a failed reload keeps the old one", function()
    local path = T.tempfile(REPLACED:format(1))
    local srv = T.start(path, nil, {selector = "sim"})
    local task = srv.env.require("luahost.task")
    local old = T.client(srv)
    old:send("a\n")
    assert.equal("v1 a", old:line())
    local function rewrite(text)
      local f = assert(io.open(path, "w"))
      f:write(text)
      f:close()
    end
    rewrite("error('a load that raises')")
    assert.is_nil(srv:reload())
    local second = T.client(srv)
    second:send("b\n")
    assert.equal("v1 b", second:line(), "a failed reload stopped the accept loop")
    rewrite(REPLACED:format(2))
    assert.is_true(srv:reload())
    local new = T.client(srv)
    new:send("c\n")
    assert.equal("v2 c", new:line())
    old:send("d\n")
    assert.equal("v1 d", old:line(), "a running task changed code")
    assert.equal(4, task.count(), "one accept loop and three clients' tasks")
    srv:stop()
    T.assert_clean(srv)
  end)
end)

-- Echoes lines; "spin" loops for ever, "hog" allocates without end.
local LIMITED = [[
local luahost = require "luahost"
local task = require "luahost.task"
local server = task.wrap(assert(luahost.listen("127.0.0.1", tonumber(arg[1]:match("%d+$")))))
task.spawn(function()
  while true do
    local client = server:accept()
    if client then
      task.spawn(function(s)
        while true do
          local line = s:receive("*l")
          if not line then return end
          if line == "spin" then while true do end end
          if line == "hog" then
            local t = {}
            for i = 1, math.huge do t[i] = ("x"):rep(64) .. i end
          end
          s:send(line .. "\n")
        end
      end, client)
    end
  end
end)
]]

-- The first two clients belong to one task, which reads from the first only; every later
-- client gets an echo task of its own.
local PAIRED = [[
local luahost = require "luahost"
local task = require "luahost.task"
local server = task.wrap(assert(luahost.listen("127.0.0.1", tonumber(arg[1]:match("%d+$")))))
task.spawn(function()
  local x, y = server:accept(), server:accept()
  task.spawn(function(a)
    while true do
      local line = a:receive("*l")
      if not line then return end
      if line == "spin" then while true do end end
      a:send(line .. "\n")
    end
  end, x, y)
  while true do
    local client = server:accept()
    task.spawn(function(s)
      for line in function() return s:receive("*l") end do s:send(line .. "\n") end
    end, client)
  end
end)
]]

describe("luahost.task under the executable", function()
  it("cuts a task that runs past --max-instructions and serves the other clients", function()
    local proc = T.spawn(T.tempfile(LIMITED), nil, {options = {"--max-instructions", "1000000"},
      env = {LUA_PATH_5_4 = package.path}})
    local a = T.client(proc.host, proc.port)
    local b = T.client(proc.host, proc.port)
    a:echo("one\n")
    b:echo("two\n")
    a:send("spin\n")
    assert.is_true(a:closed(5), "the spinning task's connection is still open")
    proc:wait_log("budget")
    b:echo("three\n")
    local c = T.client(proc.host, proc.port)
    c:echo("four\n")
    proc:stop()
  end)

  it("ends a task cut short by --max-instructions at the host's next event, resetting "
    .. "the streams it owned beside the one that ran it", function()
    local proc = T.spawn(T.tempfile(PAIRED), nil, {options = {"--max-instructions", "1000000"},
      env = {LUA_PATH_5_4 = package.path}})
    local a = T.client(proc.host, proc.port)
    local b = T.client(proc.host, proc.port)
    a:echo("one\n")
    a:send("spin\n")
    assert.is_true(a:closed(5), "the spinning task's connection is still open")
    proc:wait_log("budget")
    local c = T.client(proc.host, proc.port) -- the host's next event
    c:echo("two\n")
    assert.is_true(b:closed(5), "the cut task's other stream is still open")
    proc:wait_log("error in task for [^\n]*cut short")
    proc:stop()
  end)

  it("reloads examples/chat_task.lua on SIGHUP: its accept loop carries on from the old "
    .. "load, so the new chunk registers nothing new, and that is not an empty load", function()
    local port = T.free_port()
    local proc = T.spawn("examples/chat_task.lua", {"127.0.0.1:" .. port},
      {env = {LUA_PATH_5_4 = package.path}})
    local a = T.client("127.0.0.1", port)
    assert.equal("welcome", a:json().type)
    proc:signal("HUP")
    proc:wait_log("reloaded examples/chat_task%.lua: generation 2")
    assert.same({}, proc:log_lines("reload rejected", true))
    local b = T.client("127.0.0.1", port)
    assert.equal("welcome", b:json().type)
    assert.equal("join", a:json().type)
    a:send("still here\n")
    assert.same("still here", b:json().text)
    proc:stop()
  end)

  it("fails a task that allocates past --max-memory, logged, and serves the others", function()
    local proc = T.spawn(T.tempfile(LIMITED), nil, {options = {"--max-memory", "33554432"},
      env = {LUA_PATH_5_4 = package.path}})
    local a = T.client(proc.host, proc.port)
    local b = T.client(proc.host, proc.port)
    a:send("hog\n")
    assert.is_true(a:closed(10), "the hog's connection is still open")
    local line = proc:wait_log("error in task for 127%.0%.0%.1:%d+: [^\n]*not enough memory")
    assert.truthy(line)
    b:echo("still here\n")
    local c = T.client(proc.host, proc.port)
    c:echo("new\n")
    proc:stop()
  end)
end)
