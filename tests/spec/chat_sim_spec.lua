-- chat_sim_spec.lua: scripts/chat.lua in process on the sim backend, where the tests
-- decide what the network and the clock do: idle timeouts by advancing the clock, lines
-- split at every byte, short and refused sends, a peer reset in the middle of a
-- broadcast, accept failing with EMFILE. Nothing sleeps; every wait is bounded.
local cjson = require "cjson"
local T = require "luahost.test"

local IDLE = 10 -- --idle-timeout; chat sweeps every second

-- Starts chat.lua on sim with the idle timeout above.
local function start(opts)
  return T.start("scripts/chat.lua", {"127.0.0.1:0", "--idle-timeout", tostring(IDLE)},
    {selector = "sim", log_level = opts and opts.log_level})
end

-- Connects a client that has read its welcome (c.name is its name), and has each of
-- `others` read its join.
local function join(srv, others)
  local c = T.client(srv)
  local welcome = c:json()
  assert.equal("welcome", welcome.type)
  c.name = welcome.name
  for _, o in ipairs(others or {}) do
    assert.same({type = "join", name = c.name}, o:json())
  end
  return c
end

-- n clients, each told of the ones after it.
local function connect(srv, n)
  local clients = {}
  for i = 1, n do clients[i] = join(srv, {table.unpack(clients, 1, i - 1)}) end
  return table.unpack(clients)
end

-- Asserts that nothing arrived for c that was not read (everything the host has sent is
-- there at once on sim).
local function quiet(c, what)
  assert.equal("", c:received(), what)
end

-- Every complete line c received, decoded, in order.
local function messages(c)
  local list = {}
  for line in c:received():gmatch("([^\n]*)\n") do list[#list + 1] = cjson.decode(line) end
  return list
end

-- Sorts messages by type: for those whose order chat leaves to its table order.
local function by_type(list)
  table.sort(list, function(x, y) return x.type < y.type end)
  return list
end

-- The last thing c was told, once c is closed.
local function closed_after(c, want)
  assert.is_true(c:closed(1), "the server did not close the client")
  local list = messages(c)
  assert.same(want, list[#list])
end

describe("chat.lua on sim", function()
  describe("the idle timeout", function()
    it("closes a client idle past --idle-timeout and keeps one that sends before each",
      function()
        local srv = start()
        local idle, active = connect(srv, 2) -- t = 0
        T.advance(5)
        local late = join(srv, {idle, active}) -- t = 5
        T.advance(4.5) -- t = 9.5
        active:send("/who\n")
        local names = {active.name, idle.name, late.name}
        table.sort(names)
        assert.same({type = "who", names = names}, active:json())
        T.advance(0.49) -- t = 9.99: the idle one has 0.01 s left
        quiet(idle, "told something before its timeout")
        assert.is_false(idle:closed(0))
        T.advance(0.02) -- t = 10.01
        closed_after(idle, {type = "error", reason = "idle timeout"})
        local leave_idle = {type = "leave", name = idle.name, reason = "idle timeout"}
        assert.same(leave_idle, active:json())
        assert.same(leave_idle, late:json())
        -- The late one's time counts from its own join.
        T.advance(4.98) -- t = 14.99
        quiet(late)
        T.advance(0.02) -- t = 15.01
        closed_after(late, {type = "error", reason = "idle timeout"})
        assert.same({type = "leave", name = late.name, reason = "idle timeout"}, active:json())
        -- The active one speaks every 9.5 s (its last word was at 9.5): never swept.
        T.advance(4) -- t = 19.01
        for _ = 1, 6 do
          active:send("/who\n")
          assert.same({type = "who", names = {active.name}}, active:json())
          T.advance(9.5)
          quiet(active, "told something while active")
        end
        T.advance(1) -- the next sweep finds it silent for 10.5 s
        closed_after(active, {type = "error", reason = "idle timeout"})
        assert.equal(0, srv.luahost.stats().connections)
        srv:stop()
        T.assert_clean(srv)
      end)

    -- Regression: any byte reset a client's idle time, so one that sent a byte a minute
    -- and never a newline held its slot forever.
    it("closes a client that trickles bytes without a newline; a completed line counts",
      function()
        local srv = start()
        local trickler, talker = connect(srv, 2) -- t = 0
        for _ = 1, 9 do
          T.advance(1)
          trickler:send("x") -- t = 1 .. 9: a byte a second, no newline
        end
        T.advance(0.5) -- t = 9.5
        talker:send("/who\n")
        local names = {talker.name, trickler.name}
        table.sort(names)
        assert.same({type = "who", names = names}, talker:json())
        T.advance(0.51) -- t = 10.01: the sweep at 10 finds the trickler silent for 10 s
        closed_after(trickler, {type = "error", reason = "idle timeout"})
        assert.same({type = "leave", name = trickler.name, reason = "idle timeout"},
          talker:json())
        -- The talker's line at 9.5 and then one it completes at 19 keep it.
        T.advance(5) -- t = 15.01
        talker:send("hel")
        T.advance(4) -- t = 19.01
        talker:send("lo\n")
        T.advance(1.5) -- t = 20.51: 11 s after the who, 1.5 s after the completed line
        assert.is_false(talker:closed(0), "closed though its last line came 1.5 s ago")
        quiet(talker)
        T.advance(9.5) -- t = 30.01: the sweep at 30 finds it silent for 10.99 s
        closed_after(talker, {type = "error", reason = "idle timeout"})
        srv:stop()
        T.assert_clean(srv)
      end)
  end)

  describe("a long line arriving in small pieces, --max-line raised", function()
    -- Regression: each piece was joined to everything before it, so a 20 MB line took
    -- 23 s and 139 MB. With the collector stopped, what the feed allocates is what it
    -- copies: kept as its pieces, the line costs about its length; joined at every recv
    -- it cost the sum of its prefixes (2 GiB here: the loop stops well before).
    it("allocates about its length while it comes, then is delivered whole", function()
      local SIZE, PIECE = 4 * 1024 * 1024, 4096
      local srv = T.start("scripts/chat.lua", {"127.0.0.1:0", "--max-line", tostring(2 * SIZE)},
        {selector = "sim", max_output = 2 * SIZE}) -- the say to b is one write of 4 MiB
      local a, b = connect(srv, 2)
      local piece = string.rep("x", PIECE - 1) .. "y"
      local bound = 2 * SIZE -- the pieces, and what the kit and the host use on the way
      local grown, sent = 0, 0
      finally(function() collectgarbage("restart") end)
      collectgarbage()
      collectgarbage("stop")
      local base = collectgarbage("count") * 1024
      while sent < SIZE and grown <= bound do
        a:send(piece)
        sent = sent + PIECE
        grown = collectgarbage("count") * 1024 - base
      end
      collectgarbage("restart")
      assert(grown <= bound, ("%d bytes allocated for the first %d of a %d-byte line")
        :format(grown, sent, SIZE))
      quiet(b, "told something before the line ended")
      a:send("\r\n")
      local say = b:json()
      assert.equal(SIZE, #say.text)
      assert.equal(piece:rep(SIZE / PIECE), say.text)
      quiet(a)
      srv:stop()
      T.assert_clean(srv)
    end)

    it("keeps a line trickling in a byte at a time in a few strings, not one a byte",
      function()
        local SIZE = 8192
        local srv = start()
        local a, b = connect(srv, 2)
        collectgarbage()
        collectgarbage()
        local base = collectgarbage("count") * 1024
        for i = 1, SIZE do a:send(string.char(97 + i % 26)) end
        collectgarbage()
        collectgarbage()
        local held = collectgarbage("count") * 1024 - base
        -- as one piece a byte it held 130 KB: a table slot a byte (one-byte strings are
        -- shared)
        assert(held < 4 * SIZE, ("%d bytes held for %d bytes of a line"):format(held, SIZE))
        a:send("\n")
        assert.equal(SIZE, #b:json().text)
        srv:stop()
        T.assert_clean(srv)
      end)
  end)

  describe("a line split at every byte", function()
    local cases = {
      {"a plain say line", "h\195\169llo, w\195\182rld \226\156\147\n",
        "h\195\169llo, w\195\182rld \226\156\147"},
      {"a JSON say line", '{"type":"say","text":"a \\"quoted\\" w\195\182rd\\n"}\n',
        'a "quoted" w\195\182rd\n'},
      {"a say line ending in CRLF", "over and out\r\n", "over and out"},
      {"a say line ending in CR, CRLF", "cr\r\r\n", "cr\r"},
    }
    for _, case in ipairs(cases) do
      local what, line, text = table.unpack(case)
      it("delivers " .. what .. " exactly once, whatever the split", function()
        local srv = start()
        local a, b = connect(srv, 2)
        local want = {type = "say", from = a.name, text = text}
        for k = 1, #line - 1 do
          a:send(line:sub(1, k))
          quiet(b, "after the first " .. k .. " bytes")
          a:send(line:sub(k + 1))
          assert.same(want, b:json())
          quiet(b, "more than one message for the split at " .. k)
          quiet(a, "the sender was told something for the split at " .. k)
        end
        srv:stop()
        T.assert_clean(srv)
      end)
    end
  end)

  describe("short sends", function()
    local shapes = {
      {"one byte per send", {max_write = 1}},
      {"the first three sends refused (EAGAIN) before each message", {would_block = 3}},
    }
    for _, case in ipairs(shapes) do
      local what, shape = table.unpack(case)
      it("deliver every broadcast complete and in order: " .. what, function()
        local srv = start()
        local a, b, c = connect(srv, 3)
        b:shape(shape)
        local want = {}
        for i = 1, 24 do
          if shape.would_block then b:shape(shape) end
          local from = i % 2 == 1 and a or c
          local text = string.format("message %d %s", i, ("x"):rep(i * 5))
          from:send(text .. "\n")
          want[#want + 1] = {type = "say", from = from.name, text = text}
          if i == 1 then -- the shape bites: the host still holds output for b
            assert.equal(1, srv.luahost.stats().flushing)
            assert.is_true(#b:received() < #cjson.encode(want[1]))
          end
          if i % 8 == 0 then -- other kinds of message go the same way
            from:send("/nick speaker" .. i .. "\n")
            want[#want + 1] = {type = "nick", from = from.name, name = "speaker" .. i}
            from.name = "speaker" .. i
          end
        end
        for i, msg in ipairs(want) do
          assert.same(msg, b:json(), "message " .. i)
        end
        quiet(b)
        srv:run_until(function() return srv.luahost.stats().flushing == 0 end, 1, "flushed")
        srv:stop()
        T.assert_clean(srv)
      end)
    end
  end)

  describe("leaving", function()
    -- chat keeps its connections in a luahost.group, which fills a leaver's place with
    -- the last one: leaving first, last and in the middle must not lose anyone.
    it("reaches exactly the clients still there after leaves from every position",
      function()
        local srv = start()
        local list = {connect(srv, 6)}
        local gone = {}
        for _, i in ipairs({1, 6, 3, 2}) do
          list[i]:close()
          gone[i] = true
          for j, o in ipairs(list) do
            if not gone[j] then assert.equal(list[i].name, o:json().name) end
          end
        end
        local left = {list[4], list[5]}
        local late = join(srv, left)
        left[1]:send("still here\n")
        local say = {type = "say", from = left[1].name, text = "still here"}
        assert.same(say, left[2]:json())
        assert.same(say, late:json())
        for _, o in ipairs({left[1], left[2], late}) do quiet(o) end
        srv:stop()
        T.assert_clean(srv)
      end)
  end)

  describe("a reload from a version that kept no group", function()
    it("builds the group from its clients, and every one of them still hears", function()
      local srv = start()
      local a, b, c = connect(srv, 3)
      srv.env.CHAT.room = nil -- as the older chat.lua left it (a sequence, or nothing)
      srv.env.CHAT.members = {}
      assert.is_true(srv:reload())
      a:send("after the reload\n")
      local say = {type = "say", from = a.name, text = "after the reload"}
      assert.same(say, b:json())
      assert.same(say, c:json())
      b:close()
      assert.equal(b.name, a:json().name)
      assert.equal(b.name, c:json().name)
      srv:stop()
      T.assert_clean(srv)
    end)
  end)

  describe("a reload from a version that kept a partial line as one string", function()
    it("keeps the start of the line, and the line ends as sent", function()
      local srv = start()
      local a, b = connect(srv, 2)
      a:send("half a li")
      for _, client in pairs(srv.env.CHAT.clients) do -- as the older chat.lua left them
        client.partial = table.concat(client.pieces)
        client.pieces, client.held = nil, nil
      end
      assert.is_true(srv:reload())
      a:send("ne\n")
      assert.same({type = "say", from = a.name, text = "half a line"}, b:json())
      b:send("whole\n")
      assert.same({type = "say", from = b.name, text = "whole"}, a:json())
      srv:stop()
      T.assert_clean(srv)
    end)
  end)

  describe("a peer reset in the middle of a broadcast", function()
    -- After a reset: the others heard the leave, the host serves them and new clients,
    -- and its stats no longer count the reset connection.
    local function still_serving(srv, others)
      local a = others[1]
      a:send("still there?\n")
      for i = 2, #others do
        assert.same({type = "say", from = a.name, text = "still there?"}, others[i]:json())
      end
      local late = join(srv, others)
      local stats = srv.luahost.stats()
      assert.equal(#others + 1, stats.connections)
      assert.equal(#others + 2, stats.registered) -- and the listener
      assert.equal(0, stats.flushing)
      for _, o in ipairs(others) do quiet(o) end
      quiet(late)
    end

    it("drops the peer whose broadcast is still being sent when it resets", function()
      local srv = start()
      local a, b, c, d = connect(srv, 4)
      c:shape({max_write = 1})
      a:send("to everyone\n")
      local say = {type = "say", from = a.name, text = "to everyone"}
      assert.same(say, b:json())
      assert.same(say, d:json())
      assert.equal(1, srv.luahost.stats().flushing) -- c's copy is on its way...
      assert.equal("{", c:received()) -- ...one byte of it so far
      c:reset()
      for _, o in ipairs({a, b, d}) do
        local leave = o:json()
        assert.equal("leave", leave.type)
        assert.equal(c.name, leave.name)
        assert.matches("^connection error: .*reset", leave.reason)
      end
      still_serving(srv, {a, b, d})
      srv:stop()
      T.assert_clean(srv)
    end)

    it("drops a peer found reset by the broadcast itself, and the broadcast goes on",
      function()
        local srv = start()
        local a, b, c, d = connect(srv, 4)
        -- c resets, and before the host has looked at c, a's line is read: the sim
        -- backend reports ready fds in the order they were registered, so a's comes
        -- first and the broadcast to c is the first to learn of the reset.
        srv.sim.reset(c.sock)
        a:send("mid-broadcast\n")
        local say = {type = "say", from = a.name, text = "mid-broadcast"}
        for _, o in ipairs({b, d}) do
          local got = by_type({o:json(), o:json()}) -- the order is chat's table order
          assert.equal("leave", got[1].type)
          assert.equal(c.name, got[1].name)
          assert.matches("^write failed: .*reset", got[1].reason)
          assert.same(say, got[2])
        end
        local leave = a:json()
        assert.equal("leave", leave.type)
        assert.equal(c.name, leave.name)
        still_serving(srv, {a, b, d})
        srv:stop()
        T.assert_clean(srv)
      end)
  end)

  describe("names", function()
    it("keeps a client that renames itself to its own name (regression: /nick to one's own "
      .. "name removed it from the names)", function()
        local srv = start()
        local ann, bob = connect(srv, 2)
        ann:send("/nick ann\n")
        assert.same({type = "nick", from = ann.name, name = "ann"}, ann:json())
        assert.same({type = "nick", from = ann.name, name = "ann"}, bob:json())
        ann:send("/nick ann\n")
        assert.same({type = "nick", from = "ann", name = "ann"}, ann:json())
        assert.same({type = "nick", from = "ann", name = "ann"}, bob:json())
        bob:send("/nick ann\n")
        assert.same({type = "error", reason = "name ann is taken"}, bob:json())
        bob:send("/who\n")
        assert.same({type = "who", names = {"ann", bob.name}}, bob:json())
        srv:stop()
        T.assert_clean(srv)
      end)

    it("lists no names as an empty JSON array (regression: cjson made it {})", function()
      local srv = start()
      local c = join(srv)
      for name in pairs(srv.env.CHAT.by_name) do srv.env.CHAT.by_name[name] = nil end
      c:send("/who\n")
      assert.equal('{"type":"who","names":[]}', c:line())
      srv:stop()
      T.assert_clean(srv)
    end)
  end)

  describe("accept failing with EMFILE", function()
    it("sheds the waiting client, pauses accepting, and serves new clients after",
      function()
        local srv = start()
        local a = join(srv)
        local refused = srv.luahost.stats().refused
        srv.sim.fail_accept(srv.listener, "EMFILE", 1)
        -- The host gives up its spare fd to accept and close who waits, then pauses.
        local shed = T.client(srv)
        assert.is_true(shed:closed(1))
        assert.equal("", shed:received())
        assert.equal(refused + 1, srv.luahost.stats().refused)
        assert.matches("warn out of file descriptors %(Too many open files%) with 1 "
          .. "connections open: closed 1 waiting connections, accepting again in 0.1 s",
          srv:log())
        -- Connected clients go on being served; nobody heard of the shed one.
        a:send("/who\n")
        assert.same({type = "who", names = {a.name}}, a:json())
        -- During the pause a new client waits, unaccepted.
        local waiting = T.client(srv)
        T.advance(0.05)
        assert.equal(1, srv.sim.waiting(srv.listener))
        quiet(waiting)
        assert.is_false(waiting:closed(0))
        quiet(a)
        -- After it, the waiting client is accepted and new ones are served at once.
        T.advance(0.2)
        assert.equal(0, srv.sim.waiting(srv.listener))
        local welcome = waiting:json()
        assert.equal("welcome", welcome.type)
        assert.same({type = "join", name = welcome.name}, a:json())
        local new = join(srv, {a, waiting})
        new:send("hello again\n")
        local say = {type = "say", from = new.name, text = "hello again"}
        assert.same(say, a:json())
        assert.same(say, waiting:json())
        assert.equal(3, srv.luahost.stats().connections)
        srv:stop()
        T.assert_clean(srv)
      end)
  end)
end)
