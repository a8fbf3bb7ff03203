-- redis_spec.lua: luahost.redis against a redis-server of the spec's own (tests/support/
-- redis.lua) on a free loopback port: replies as Lua values, pipelining, tasks, pub/sub,
-- reconnects with resubscription, commands while down, a stalled Redis that the loop
-- keeps serving around, AUTH and SELECT; and luahost.resp (hiredis) on its own.
local T = require "luahost.test"
local R = require "support.redis"

-- A server of the kit's whose script only listens: the spec drives luahost.redis through
-- the script's own module (srv.env.require), so its host's loop serves it.
local function start_host()
  local script = T.tempfile('assert(require("luahost").listen("127.0.0.1", 0))\n')
  local srv = T.start(script)
  return srv, srv.env.require("luahost.redis"), srv.env.require("luahost.task")
end

-- Runs srv's loop until t[key] is set; returns it.
local function await(srv, t, key, timeout)
  return srv:run_until(function() return t[key] ~= nil end, timeout or 3, key)
    and t[key]
end

describe("luahost.resp", function()
  local resp = require("luahost").resp

  it("formats a command with hiredis, numbers as their text", function()
    assert.equal("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n", resp.format({"SET", "k", 12}))
    assert.has_error(function() resp.format({"SET", {}}) end)
    assert.has_error(function() resp.format({}) end)
  end)

  it("reads replies in pieces, nested ones as Redis's own Lua does", function()
    local rd = resp.reader()
    rd:feed("+OK\r\n:5\r\n$-1\r\n-ERR bad\r\n*3\r\n$1\r\na\r\n$-1\r\n-E x\r\n$3\r\nab")
    assert.same({true, "OK"}, {rd:get()})
    assert.same({true, 5}, {rd:get()})
    assert.same({n = 2, true, nil}, table.pack(rd:get()))
    assert.same({n = 3, true, nil, "ERR bad"}, table.pack(rd:get()))
    assert.same({true, {"a", false, {err = "E x"}}}, {rd:get()})
    assert.is_false(rd:get()) -- "ab" of "abc" has come
    rd:feed("c\r\n")
    assert.same({true, "abc"}, {rd:get()})
  end)

  it("counts the bytes of the reply still coming", function()
    local rd = resp.reader()
    rd:feed("+OK\r\n$10\r\nabc")
    assert.equal(13, rd:partial())
    assert.same({true, "OK"}, {rd:get()})
    assert.equal(8, rd:partial()) -- "$10\r\nabc"
    assert.is_false(rd:get())
    rd:feed("defghij\r\n")
    assert.same({true, "abcdefghij"}, {rd:get()})
    assert.equal(0, rd:partial())
  end)

  it("says when the bytes are not RESP", function()
    local rd = resp.reader()
    rd:feed("hello\r\n")
    local ok, err = rd:get()
    assert.is_nil(ok)
    assert.matches("^protocol error", err)
  end)
end)

describe("luahost.redis", function()
  it("gives replies as Lua values, pipelined, in order", function()
    local server = R.start()
    local srv, redis = start_host()
    local r = redis.connect(server.host, server.port)
    local got = {}
    r:call({"SET", "k", "v"}, function(v, e) got.set = v or e end)
    r:call({"GET", "k"}, function(v, e) got.get = v or e end)
    r:call({"GET", "missing"}, function(v, e) got.missing = {v, e} end)
    r:call({"INCR", "k"}, function(v, e) got.incr = {v, e} end)
    r:call({"MGET", "k", "missing"}, function(v) got.mget = v end)
    assert.equal("v", await(srv, got, "get"))
    local order = {}
    for i = 1, 5000 do -- issued at once: one connection, replies in the order asked
      r:call({"INCR", "n"}, function(v) order[#order + 1] = v == i end)
    end
    r:call({"PING"}, function(v) got.done = v end)
    assert.equal("PONG", await(srv, got, "done"))
    assert.equal("OK", got.set)
    assert.equal("v", got.get)
    assert.same({}, got.missing)
    assert.is_nil(got.incr[1])
    assert.matches("not an integer", got.incr[2])
    assert.same({"v", false}, got.mget)
    assert.equal(5000, #order)
    for i = 1, 5000 do assert.is_true(order[i], "reply " .. i) end
    r:close()
    srv:stop()
    T.assert_clean(srv) -- no socket, registration or timer of the client's is left
  end)

  -- Regression: a call without a callback queued no one for its reply, so that reply went
  -- to the next call's callback (chat.lua's PUBLISH count reached a name claim's).
  it("drops the reply of a call made without a callback, not the next call's", function()
    local server = R.start()
    local srv, redis = start_host()
    local r = redis.connect(server.host, server.port)
    local got = {}
    r:call({"SET", "k", "v"})
    r:publish("nobody", "hello")
    r:call({"GET", "k"}, function(v, e) got.get = v or e end)
    r:call({"ECHO", "last"}, function(v, e) got.echo = v or e end)
    assert.equal("last", await(srv, got, "echo"))
    assert.equal("v", got.get)
    r:close()
    srv:stop()
    T.assert_clean(srv)
  end)

  -- Regression: a reply was held however long it grew (hiredis keeps a bulk string until
  -- its last byte), so a Redis, or whatever listens on its port, could take all memory.
  it("drops a connection whose reply grows past max_reply", function()
    local srv, redis = start_host()
    local fake = assert(srv.luahost.listen("127.0.0.1", 0))
    local _, port = fake:getsockname()
    local peers = {}
    srv.luahost.selector:register(fake, srv.luahost.EVENT_READ, function()
      local c = fake:accept()
      if not c then return end
      peers[#peers + 1] = c
      srv.luahost.selector:register(c, srv.luahost.EVENT_READ, function()
        local data = c:recv()
        if data and data ~= "" then -- a bulk string announced at 1 GB, and 8 KiB of it
          c:write("$1000000000\r\n" .. string.rep("x", 8192))
        end
      end)
    end)
    local got = {}
    local r = redis.connect("127.0.0.1", port, {max_reply = 4096, min_backoff = 10,
      on_disconnect = function(_, why) got.why = why end})
    r:call({"GET", "big"}, function(v, e) got.reply = {v, e} end)
    await(srv, got, "why")
    assert.matches("longer than max_reply %(4096 bytes%)", got.why)
    assert.is_nil(got.reply[1])
    assert.matches("connection lost: a reply longer than max_reply", got.reply[2])
    r:close()
    for _, c in ipairs(peers) do c:close() end
    fake:close()
    srv:stop()
    T.assert_clean(srv)
  end)

  it("returns the reply directly inside a task", function()
    local server = R.start()
    local srv, redis, task = start_host()
    local r = redis.connect(server.host, server.port)
    local got = {}
    task.spawn(function()
      r:call({"SET", "t", "1"})
      got.value = r:call({"INCRBY", "t", "41"})
      got.error = {r:call({"HGET", "t", "f"})}
    end)
    assert.equal(42, await(srv, got, "error") and got.value)
    assert.is_nil(got.error[1])
    assert.matches("WRONGTYPE", got.error[2])
    r:close()
  end)

  it("does not wake a task cancelled while it waited, and fails a call at once when closed",
    function()
    local server = R.start()
    local srv, redis, task = start_host()
    local r = redis.connect(server.host, server.port)
    local got = {}
    r:call({"PING"}, function(v) got.up = v end)
    await(srv, got, "up")
    local t = task.spawn(function()
      got.reply = r:call({"PING"})
      got.woken = true
    end)
    assert.equal("waiting", t:status())
    t:cancel()
    r:call({"ECHO", "x"}, function(v) got.x = v end) -- after the PING's reply
    assert.equal("x", await(srv, got, "x"))
    assert.is_nil(got.woken)
    assert.equal("cancelled", t:status())
    r:close()
    local after = task.spawn(function() got.closed = {r:call({"PING"})} end)
    assert.equal("done", after:status()) -- it never waited
    assert.same({nil, "not connected: closed"}, got.closed)
  end)

  it("subscribes, publishes and unsubscribes", function()
    local server = R.start()
    local srv, redis = start_host()
    local r = redis.connect(server.host, server.port)
    local messages = {}
    r:subscribe("news", function(msg, channel) messages[#messages + 1] = channel .. ":" .. msg end)
    -- Subscribed once PUBLISH counts a receiver.
    local receivers = {}
    srv:run_until(function()
      r:publish("news", "first", function(n) receivers[#receivers + 1] = n end)
      srv:step(0.01)
      return receivers[#receivers] == 1
    end, 3, "the subscription")
    srv:run_until(function() return messages[1] end, 3, "a message")
    r:unsubscribe("news")
    local after = {}
    srv:run_until(function()
      r:publish("news", "unheard", function(n) after[#after + 1] = n end)
      srv:step(0.01)
      return after[#after] == 0
    end, 3, "the unsubscription")
    for _, m in ipairs(messages) do assert.equal("news:first", m) end
    r:close()
  end)

  it("reconnects with backoff when Redis comes back, and subscribes again", function()
    local server = R.start()
    local srv, redis = start_host()
    local events = {}
    local r = redis.connect(server.host, server.port, {max_backoff = 0.2,
      on_connect = function() events[#events + 1] = "up" end,
      on_disconnect = function(_, why) events[#events + 1] = "down: " .. why end})
    local heard = {}
    r:subscribe("ch", function(msg) heard[#heard + 1] = msg end)
    srv:run_until(function() return events[1] == "up" end)
    R.kill(server)
    local lost = {}
    r:call({"DEBUG", "SLEEP", "0.5"}, function(v, e) lost.reply = {v, e} end) -- never answered
    await(srv, lost, "reply")
    assert.is_nil(lost.reply[1])
    assert.matches("connection lost", lost.reply[2])
    -- Down: a command fails at once; retries go on without another on_disconnect.
    local now_failed
    r:call({"PING"}, function(_, e) now_failed = e end)
    assert.matches("not connected", now_failed)
    local until_t = srv.luahost.now() + 0.5
    srv:run_until(function() return srv.luahost.now() >= until_t end) -- several retries
    assert.equal(2, #events)
    assert.matches("^down: ", events[2])
    R.start(server.port)
    srv:run_until(function() return events[3] == "up" end, 3, "the reconnect")
    assert.equal(3, #events)
    local got = {}
    r:call({"PING"}, function(v) got.pong = v end)
    assert.equal("PONG", await(srv, got, "pong"))
    srv:run_until(function() -- the subscription was made anew
      r:publish("ch", "again")
      srv:step(0.01)
      return heard[1]
    end, 3, "a message after the reconnect")
    r:close()
  end)

  it("queues commands while connecting, and fails them when the connect fails", function()
    local port = T.free_port()
    local srv, redis = start_host()
    local r = redis.connect("127.0.0.1", port, {queue = 2})
    local got = {}
    r:call({"PING"}, function(_, e) got[1] = e end)
    r:call({"PING"}, function(_, e) got[2] = e end)
    r:call({"PING"}, function(_, e) got[3] = e end) -- past the queue: at once
    assert.equal("queue full while connecting", got[3])
    await(srv, got, 1)
    assert.matches("connection lost: .*refused", got[1])
    assert.matches("connection lost: .*refused", got[2])
    r:close()
  end)

  it("keeps the loop serving while Redis is stalled", function()
    local server = R.start()
    local srv, redis = start_host()
    local r = redis.connect(server.host, server.port)
    local got = {}
    r:call({"PING"}, function(v) got.first = v end)
    await(srv, got, "first")
    local stall = R.stall(server, 1)
    T.sleep(0.05) -- Redis is asleep
    r:call({"PING"}, function(v) got.late = v end)
    local ticks = 0
    local timer = srv.luahost.every(0.01, function() ticks = ticks + 1 end)
    srv:run_until(function() return ticks >= 20 end, 0.9, "the loop's timers, while Redis sleeps")
    assert.is_nil(got.late) -- ticks came while the reply could not
    assert.equal("PONG", await(srv, got, "late", 3))
    assert.equal("+OK", (stall:line(3):gsub("\r$", "")))
    timer:cancel()
    r:close()
  end)

  it("authenticates and selects a database", function()
    local server = R.start()
    assert.equal("+OK", R.command(server, "CONFIG", "SET", "requirepass", "s3cret"))
    local srv, redis = start_host()
    local got = {}
    local bad = redis.connect(server.host, server.port, {password = "wrong",
      on_disconnect = function(_, why) got.bad = why end})
    local r = redis.connect(server.host, server.port, {password = "s3cret", db = 3})
    r:call({"SET", "in3", "yes"}, function(v) got.set = v end)
    assert.equal("OK", await(srv, got, "set"))
    assert.matches("AUTH refused", await(srv, got, "bad"))
    bad:close()
    local r0 = redis.connect(server.host, server.port, {password = "s3cret"})
    r0:call({"GET", "in3"}, function(v) got.in0 = v or false end)
    r:call({"GET", "in3"}, function(v) got.in3 = v end)
    assert.is_false(await(srv, got, "in0"))
    assert.equal("yes", await(srv, got, "in3"))
    r:close()
    r0:close()
  end)
end)
