-- chat_spec.lua: scripts/chat.lua served by the real luahost executable on 127.0.0.1:0,
-- talked to by several real clients: joins and leaves, say, nick, who, line framing,
-- bad input, the idle timeout and a slow consumer. Every wait is bounded.
local luahost = require "luahost"
local cjson = require "cjson"
local process = require "support.process"
local chat = require "support.chatclient"

local CHAT = "scripts/chat.lua"
local HOST = "127.0.0.1"
local NAME_RULE = "a name is 1-32 letters, digits, '_' or '-'"

local server -- the chat process of the running test
local open_clients -- every client a test connected, closed in after_each

-- Starts chat.lua. opts.options: host options (before the script); opts.args: script
-- options after the address.
local function start(opts)
  opts = opts or {}
  local args = {"127.0.0.1:0"}
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  server = process.start(CHAT, {options = opts.options, args = args})
  return server
end

-- Connects clients labelled as given; each has read its welcome, and the earlier ones
-- the later ones' joins.
local function connect(labels)
  return chat.connect_all(HOST, server.port, labels, open_clients)
end

local function connect_one(label, opts)
  local c = chat.connect(HOST, server.port, label, opts)
  open_clients[#open_clients + 1] = c
  return c
end

-- The types of a list of messages, for readable failures.
local function types(list)
  local t = {}
  for i, m in ipairs(list) do t[i] = m.type end
  return table.concat(t, ",")
end

-- Asserts that c has no pending message: a who round trip proves the server sent nothing
-- before its reply (it handles one client's lines in order). Returns the names.
local function assert_quiet(c)
  local names, skipped = c:who()
  assert(#skipped == 0, string.format("%s got unexpected messages: %s", c.label,
    chat.show(skipped)))
  return names
end

local function sleep(seconds)
  process.sleep(seconds)
end

describe("chat.lua under the luahost executable", function()
  before_each(function()
    open_clients = {}
    server = nil
  end)

  after_each(function()
    for _, c in ipairs(open_clients) do c:close() end
    local log = server and server:stderr() or ""
    process.stop_all()
    assert.equal(0, process.live_count(), "a child process outlived its test")
    -- A script error is logged and costs only one connection, so a test could pass
    -- while chat.lua raises: the log must hold no error line.
    local bad = log:match("[^\n]* error [^\n]*")
    assert(not bad, "chat.lua logged an error:\n" .. log)
  end)

  describe("joining and leaving", function()
    it("welcomes each client with its own guest name and tells the earlier ones", function()
      start()
      local a, b, c = table.unpack(connect({"a", "b", "c"}))
      for _, x in ipairs({a, b, c}) do
        assert.is_truthy(x.name:match("^guest%-%d+$"), "guest name: " .. x.name)
      end
      assert.are_not.equal(a.name, b.name)
      assert.are_not.equal(b.name, c.name)
      assert.are_not.equal(a.name, c.name)
      -- the newest client is not told of its own join, and nobody got anything else
      for _, x in ipairs({a, b, c}) do assert_quiet(x) end
    end)

    it("tells the others when a client leaves, with the reason quit", function()
      start()
      local a, b, c = table.unpack(connect({"a", "b", "c"}))
      c:close()
      a:expect({type = "leave", name = c.name, reason = "quit"})
      b:expect({type = "leave", name = c.name, reason = "quit"})
      local names = assert_quiet(a)
      local want = {a.name, b.name}
      table.sort(want)
      assert.same(want, names)
    end)
  end)

  describe("say", function()
    it("delivers a plain-text line to every other client and never to the sender", function()
      start()
      local a, b, c = table.unpack(connect({"a", "b", "c"}))
      a:say("hello everyone")
      b:expect({type = "say", from = a.name, text = "hello everyone"})
      c:expect({type = "say", from = a.name, text = "hello everyone"})
      assert_quiet(a)
      b:say("hi a")
      a:expect({type = "say", from = b.name, text = "hi a"})
      c:expect({type = "say", from = b.name, text = "hi a"})
      assert_quiet(b)
      assert_quiet(c)
    end)

    it("takes a JSON say object and keeps its text exactly", function()
      start()
      local a, b, c = table.unpack(connect({"a", "b", "c"}))
      local text = "h\195\169llo \226\156\147 \"quoted\" {braces} /nick not-a-command"
      b:send_json({type = "say", text = text})
      a:expect({type = "say", from = b.name, text = text})
      c:expect({type = "say", from = b.name, text = text})
      assert_quiet(b)
    end)

    it("treats a line that is not a command as plain text, slash or not", function()
      start()
      local a, b = table.unpack(connect({"a", "b"}))
      a:say("/nickname is not a command")
      a:say("/whoami")
      b:expect({type = "say", from = a.name, text = "/nickname is not a command"})
      b:expect({type = "say", from = a.name, text = "/whoami"})
      assert_quiet(a)
    end)
  end)

  describe("nick", function()
    it("renames a client and tells everyone, the renamed client included", function()
      start()
      local a, b, c = table.unpack(connect({"a", "b", "c"}))
      a:say("/nick alice")
      for _, x in ipairs({a, b, c}) do x:expect({type = "nick", from = a.name, name = "alice"}) end
      b:send_json({type = "nick", name = "bob"})
      for _, x in ipairs({a, b, c}) do x:expect({type = "nick", from = b.name, name = "bob"}) end
      a:say("now I am alice")
      b:expect({type = "say", from = "alice", text = "now I am alice"})
      c:expect({type = "say", from = "alice", text = "now I am alice"})
      local want = {"alice", "bob", c.name}
      table.sort(want)
      assert.same(want, assert_quiet(a))
    end)

    it("refuses a name another client has, and frees a name its owner gave up", function()
      start()
      local a, b, c = table.unpack(connect({"a", "b", "c"}))
      a:say("/nick alice")
      for _, x in ipairs({a, b, c}) do x:expect({type = "nick", from = a.name, name = "alice"}) end
      b:say("/nick alice")
      b:expect({type = "error", reason = "name alice is taken"})
      b:send_json({type = "nick", name = "alice"})
      b:expect({type = "error", reason = "name alice is taken"})
      -- nobody else heard of the attempt, and b kept its name
      assert_quiet(a)
      assert_quiet(c)
      b:say("still me")
      a:expect({type = "say", from = b.name, text = "still me"})
      c:expect({type = "say", from = b.name, text = "still me"})
      -- once alice renames, her old name can be taken
      a:say("/nick alicia")
      for _, x in ipairs({a, b, c}) do
        x:expect({type = "nick", from = "alice", name = "alicia"})
      end
      b:say("/nick alice")
      for _, x in ipairs({a, b, c}) do x:expect({type = "nick", from = b.name, name = "alice"}) end
    end)

    it("rejects invalid names with an error and tells nobody else", function()
      start()
      local a, b = table.unpack(connect({"a", "b"}))
      local bad_lines = {
        "/nick",
        "/nick ",
        "/nick two words",
        "/nick " .. string.rep("n", 33),
        "/nick bad!name",
        "/nick dot.ted",
        "/nick \195\169mile", -- é: letters are ASCII only
        cjson.encode({type = "nick", name = ""}),
        cjson.encode({type = "nick", name = 42}),
        cjson.encode({type = "nick", name = {"x"}}),
        cjson.encode({type = "nick"}),
      }
      for _, line in ipairs(bad_lines) do
        a:say(line)
        local msg = a:next("the error for " .. line)
        assert.same({type = "error", reason = NAME_RULE}, msg, "reply to " .. line)
      end
      assert_quiet(b)
      -- the longest and the most varied valid names are accepted
      local longest = string.rep("L", 32)
      a:say("/nick " .. longest)
      b:expect({type = "nick", from = a.name, name = longest})
      a:say("/nick a_B-9")
      b:expect({type = "nick", from = longest, name = "a_B-9"})
    end)
  end)

  describe("who", function()
    it("lists every name sorted, for /who and for a JSON who", function()
      start()
      local a, b, c = table.unpack(connect({"a", "b", "c"}))
      for x, name in pairs({[a] = "zed", [b] = "alice", [c] = "mike"}) do
        x:say("/nick " .. name)
        for _, y in ipairs({a, b, c}) do y:expect({type = "nick", name = name}) end
      end
      assert.same({"alice", "mike", "zed"}, assert_quiet(b))
      c:send_json({type = "who"})
      local msg = c:expect({type = "who"})
      assert.same({"alice", "mike", "zed"}, msg.names)
    end)
  end)

  describe("line framing", function()
    it("joins a line split across two sends", function()
      start()
      local a, b = table.unpack(connect({"a", "b"}))
      a:send("hel")
      sleep(0.1) -- the server reads the first part on its own
      a:send("lo there\n")
      b:expect({type = "say", from = a.name, text = "hello there"})
      a:send('{"type":"sa')
      sleep(0.1)
      a:send('y","text":"split json"}\n')
      b:expect({type = "say", from = a.name, text = "split json"})
      assert_quiet(b)
    end)

    it("handles two lines in one send, in order", function()
      start()
      local a, b = table.unpack(connect({"a", "b"}))
      a:send('first\n{"type":"say","text":"second"}\n/nick third\n')
      b:expect({type = "say", from = a.name, text = "first"})
      b:expect({type = "say", from = a.name, text = "second"})
      b:expect({type = "nick", from = a.name, name = "third"})
      a:expect({type = "nick", from = a.name, name = "third"})
    end)

    it("takes CRLF line endings as well as LF", function()
      start()
      local a, b = table.unpack(connect({"a", "b"}))
      a:send("crlf line\r\n/nick carol\r\n")
      b:expect({type = "say", from = a.name, text = "crlf line"})
      b:expect({type = "nick", from = a.name, name = "carol"})
      a:expect({type = "nick", from = a.name, name = "carol"})
      a:send('{"type":"say","text":"json crlf"}\r\n/who\r\n')
      b:expect({type = "say", from = "carol", text = "json crlf"})
      a:expect({type = "who"})
    end)

    it("ignores empty lines", function()
      start()
      local a, b = table.unpack(connect({"a", "b"}))
      a:send("\n\r\n\nafter blanks\n")
      b:expect({type = "say", from = a.name, text = "after blanks"})
      assert_quiet(a)
    end)
  end)

  describe("with --max-line 100", function()
    it("answers an over-long line with line too long and keeps the connection usable",
      function()
        start({args = {"--max-line", "100"}})
        local a, b = table.unpack(connect({"a", "b"}))
        a:say(string.rep("x", 150))
        a:expect({type = "error", reason = "line too long"})
        a:say("next line works")
        b:expect({type = "say", from = a.name, text = "next line works"})
        assert_quiet(a)
        assert_quiet(b)
      end)

    it("discards an over-long line that arrives in pieces, with one error", function()
      start({args = {"--max-line", "100"}})
      local a, b = table.unpack(connect({"a", "b"}))
      a:send(string.rep("y", 150)) -- no newline yet: the server sees it is too long
      a:expect({type = "error", reason = "line too long"})
      a:send(string.rep("z", 300))
      sleep(0.1)
      a:send("end of the long one\nshort one\n")
      b:expect({type = "say", from = a.name, text = "short one"})
      assert_quiet(a) -- exactly one error for the whole long line
      assert_quiet(b)
    end)

    it("accepts a line of exactly 100 bytes, whole or in pieces, LF or CRLF", function()
      start({args = {"--max-line", "100"}})
      local a, b = table.unpack(connect({"a", "b"}))
      local line = string.rep("e", 100)
      a:say(line)
      b:expect({type = "say", from = a.name, text = line})
      a:send(line .. "\r\n")
      b:expect({type = "say", from = a.name, text = line})
      a:send(line)
      sleep(0.1)
      a:send("\n")
      b:expect({type = "say", from = a.name, text = line})
      -- the CR is part of the line ending, not of the line, wherever the read splits
      a:send(line .. "\r")
      sleep(0.1)
      a:send("\n")
      local _, replies = a:who()
      assert(#replies == 0, "a 100-byte line whose CR arrived before its LF got: "
        .. chat.show(replies))
      b:expect({type = "say", from = a.name, text = line})
    end)
  end)

  describe("bad input", function()
    it("replies with an error to each kind of bad line and stays usable", function()
      start()
      local a, b = table.unpack(connect({"a", "b"}))
      local cases = {
        {"{bad json", "malformed JSON"},
        {"{\"type\":\"say\",\"text\":\"unterminated}", "malformed JSON"},
        {"[1,2]", "expected a JSON object"},
        {"[\"say\",\"x\"]", "expected a JSON object"},
        {"[nope", "malformed JSON"},
        {"{\"type\":\"dance\"}", "unknown type dance"},
        {"{\"text\":\"no type\"}", "unknown type nil"},
        {"{\"type\":\"say\"}", "say needs a text string"},
        {"{\"type\":\"say\",\"text\":5}", "say needs a text string"},
        {"bad \255\254 bytes", "invalid UTF-8"},
        {"\192\128 overlong", "invalid UTF-8"},
        {"{\"type\":\"say\",\"text\":\"\237\160\128\"}", "invalid UTF-8"}, -- a surrogate
      }
      for _, case in ipairs(cases) do
        a:say(case[1])
        local msg = a:next(string.format("the error for %q", case[1]))
        assert.same({type = "error", reason = case[2]}, msg, string.format("reply to %q", case[1]))
      end
      -- a type that is not a string is unknown too (how the number is shown is not fixed)
      a:say('{"type":7}')
      assert.matches("^unknown type 7", a:expect({type = "error"}).reason)
      assert_quiet(b) -- nothing bad was broadcast
      a:say("still here")
      b:expect({type = "say", from = a.name, text = "still here"})
    end)
  end)

  describe("with --idle-timeout 0.5", function()
    it("disconnects a silent client with an error and tells the others why", function()
      start({args = {"--idle-timeout", "0.5"}})
      local a, b = table.unpack(connect({"a", "b"}))
      local idle = connect_one("idle")
      local joined = luahost.now()
      local name = idle:expect({type = "welcome"}).name
      a:expect({type = "join", name = name})
      b:expect({type = "join", name = name})
      -- a and b stay active (a who every 0.1 s) until both have seen idle leave
      local want = {type = "leave", name = name, reason = "idle timeout"}
      local seen = {}
      local deadline = luahost.now() + 5
      while not (seen[a] and seen[b]) do
        assert(luahost.now() < deadline, "no leave for the idle client within 5 s")
        for _, x in ipairs({a, b}) do
          local _, skipped = x:who()
          for _, m in ipairs(skipped) do
            if chat.matches(want, m) then
              seen[x] = seen[x] or luahost.now()
            else
              error(x.label .. " got an unexpected message: " .. chat.show(m))
            end
          end
        end
        sleep(0.1)
      end
      local waited = math.min(seen[a], seen[b]) - joined
      assert(waited >= 0.45, string.format("dropped after %.2f s, before the timeout", waited))
      local got, how = idle:expect_closed(2)
      assert.equal("eof", how)
      assert.equal(1, #got, "messages before the close: " .. chat.show(got))
      assert.same({type = "error", reason = "idle timeout"}, got[1])
      -- the active clients were not dropped
      local names = assert_quiet(a)
      local want_names = {a.name, b.name}
      table.sort(want_names)
      assert.same(want_names, names)
    end)
  end)

  describe("with --max-output 65536", function()
    -- The slow client's bytes first fill its own receive buffer and the server's kernel
    -- send buffer (which Linux grows up to tcp_wmem's maximum, 4 MiB by default) before
    -- chat.lua's own 64 KiB limit is reached. So the sender keeps flooding until it sees
    -- the slow client leave, then sends EXTRA more lines, never more than MAX_LINES.
    local SIZE, MIN_LINES, EXTRA, MAX_LINES = 1024, 2000, 200, 24576

    local function line_text(i)
      return string.format("%05d ", i) .. string.rep(string.char(97 + i % 26), SIZE - 7)
    end

    it("drops a client that never reads; the others get every message in order", function()
      start({options = {"--max-output", "65536"}})
      -- the slow client joins first, with a small receive buffer, and never reads again
      local slow = connect_one("slow", {rcvbuf = 4096})
      slow.name = slow:expect({type = "welcome"}).name
      local sender, r1, r2 = table.unpack(connect({"sender", "reader1", "reader2"}))
      local everyone = {sender, r1, r2}

      -- The test keeps the readers within WINDOW bytes of the sender, so that only the
      -- client that never reads can fall behind by more than the output limit.
      local WINDOW = 64 * SIZE
      local target = MAX_LINES -- lines to send; cut down once the slow client is gone
      local queued, sent, outbuf = 0, 0, "" -- lines put in outbuf; bytes sent
      local says = {[r1] = 0, [r2] = 0}
      local others = {[sender] = {}, [r1] = {}, [r2] = {}} -- every message but says
      local sel = luahost.new_selector()
      local deadline, last_progress = luahost.now() + 25, luahost.now()

      local function saw_leave(x)
        for _, m in ipairs(others[x]) do
          if m.type == "leave" then return true end
        end
        return false
      end
      local function done()
        if queued < target or #outbuf > 0 or says[r1] < target or says[r2] < target then
          return false
        end
        return saw_leave(sender) and saw_leave(r1) and saw_leave(r2)
      end
      local function progress()
        return string.format("sent %d of %d lines (%d bytes), readers got %d and %d says;"
          .. " other messages: %s", queued - #outbuf // SIZE, target, sent, says[r1], says[r2],
          chat.show({sender = others[sender], reader1 = others[r1], reader2 = others[r2]}))
      end
      local function take(x, m)
        if m.type == "say" and x ~= sender then
          says[x] = says[x] + 1
          local i = says[x]
          if m.from ~= sender.name or m.text ~= line_text(i) then
            error(string.format("%s: say %d out of order or damaged: from %s, text %q...",
              x.label, i, tostring(m.from), tostring(m.text):sub(1, 12)))
          end
        else
          table.insert(others[x], m)
          if x == sender and m.type == "leave" then
            target = math.min(MAX_LINES, math.max(MIN_LINES, queued + EXTRA))
          end
        end
      end

      while not done() do
        local now = luahost.now()
        assert(now < deadline, "flood not done in 25 s: " .. progress())
        assert(now - last_progress < 5, "no progress for 5 s: " .. progress())
        while #outbuf < 16384 and queued < target do
          queued = queued + 1
          outbuf = outbuf .. line_text(queued) .. "\n"
        end
        local behind = sent - math.min(says[r1], says[r2]) * SIZE
        for _, x in ipairs(everyone) do
          local ev = luahost.EVENT_READ
          if x == sender and #outbuf > 0 and behind < WINDOW then ev = ev | luahost.EVENT_WRITE end
          sel:register(x.sock, ev, x)
        end
        local ready = {}
        for key, mask in sel:select(0.2) do ready[key.data] = mask end
        for _, x in ipairs(everyone) do sel:unregister(x.sock) end
        if (ready[sender] or 0) & luahost.EVENT_WRITE ~= 0 then
          local n, err = sender.sock:send(outbuf:sub(1, WINDOW - behind))
          assert(n or err == "wouldblock", "sender: send failed: " .. tostring(err))
          if n and n > 0 then
            sent, outbuf, last_progress = sent + n, outbuf:sub(n + 1), now
          end
        end
        for _, x in ipairs(everyone) do
          if ready[x] then
            x:pump(nil)
            assert(not x.eof, x.label .. " was disconnected: " .. tostring(x.reset or "EOF"))
            while #x.queue > 0 do
              last_progress = now
              take(x, table.remove(x.queue, 1))
            end
          end
        end
      end
      sel:close()

      local want = {type = "leave", name = slow.name, reason = "slow consumer"}
      for _, x in ipairs(everyone) do
        assert.equal(1, #others[x], x.label .. " got besides says: " .. types(others[x]))
        assert.same(want, others[x][1])
      end
      -- the slow client was disconnected: after what was queued for it, the stream ends
      local _, how = slow:expect_closed(5)
      assert.is_truthy(how == "eof" or how:find("reset", 1, true), "slow: " .. tostring(how))
      assert.is_truthy(server:stderr():find("output buffer full", 1, true),
        "the host logged no 'output buffer full':\n" .. server:stderr())
      -- the others are still connected and still served
      local names = assert_quiet(sender)
      local want_names = {sender.name, r1.name, r2.name}
      table.sort(want_names)
      assert.same(want_names, names)
      sender:say("after the flood")
      r1:expect({type = "say", from = sender.name, text = "after the flood"})
      r2:expect({type = "say", from = sender.name, text = "after the flood"})
    end)
  end)
end)
