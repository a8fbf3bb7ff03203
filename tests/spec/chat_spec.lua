-- chat_spec.lua: scripts/chat.lua run in process on the sim backend with the test kit:
-- joins and leaves, say, nick, who, line framing, bad input, and, on the sim clock and
-- with shaped sends, the idle timeout and a slow consumer. Then one run of the real
-- executable over real sockets. The protocol's spec: chat_task_spec.lua runs it on
-- examples/chat_task.lua, giving that script's path as this chunk's argument.
local T = require "luahost.test"
local cjson = require "cjson"

local CHAT = type(...) == "string" and ... or "scripts/chat.lua" -- busted gives a table
local NAME_RULE = "a name is 1-32 letters, digits, '_' or '-'"

local srv -- the chat server of the running test

-- Starts chat.lua on sim with the given options, before each test of a describe.
local function start_each(...)
  local args = {"127.0.0.1:0", ...}
  before_each(function() srv = T.start(CHAT, args, {selector = "sim"}) end)
end

-- The first line of log at level error, if any.
local function error_line(log)
  return ("\n" .. log):match("\n(error [^\n]*)")
end

-- The next message c got must have the fields of want; returns it.
local function expect(c, want)
  local line = c:line()
  local msg = cjson.decode(line)
  local got = {}
  for k in pairs(want) do got[k] = msg[k] end
  assert.same(want, got, "got " .. line)
  return msg
end

local function expect_all(clients, want)
  for _, c in ipairs(clients) do expect(c, want) end
end

-- c has been sent nothing it has not read (sim: the server has done all it will do).
local function quiet(c)
  srv:step()
  assert.is_false(c:closed(0), "the server closed the connection")
  assert.equal("", c:received(), "unexpected messages")
end

local function who(c)
  c:send("/who\n")
  return expect(c, {type = "who"}).names
end

local function sorted(list)
  table.sort(list)
  return list
end

-- n new clients, each having read its welcome (c.name) and the joins of those after it.
local function connect(n)
  local list = {}
  for i = 1, n do
    local c = T.client(srv)
    c.name = expect(c, {type = "welcome"}).name
    for j = 1, i - 1 do expect(list[j], {type = "join", name = c.name}) end
    list[i] = c
  end
  return table.unpack(list)
end

describe(CHAT .. " on sim", function()
  -- A script error is logged and costs only one connection, so a test could pass while
  -- chat.lua raises: the log must hold no error line.
  after_each(function()
    assert.is_nil(error_line(srv:log()), srv:log())
    T.assert_clean(srv) -- the kit stopped it when the test ended
  end)

  describe("joining and leaving", function()
    start_each()

    it("welcomes each client with its own guest name and tells the earlier ones", function()
      local a, b, c = connect(3)
      for _, x in ipairs({a, b, c}) do
        assert.matches("^guest%-%d+$", x.name)
        quiet(x) -- the newest is not told of its own join, and nobody got anything else
      end
      assert.is_true(a.name ~= b.name and b.name ~= c.name and a.name ~= c.name)
    end)

    it("tells the others when a client leaves, with the reason quit", function()
      local a, b, c = connect(3)
      c:close()
      expect_all({a, b}, {type = "leave", name = c.name, reason = "quit"})
      quiet(a)
      assert.same(sorted({a.name, b.name}), who(a))
    end)
  end)

  describe("say", function()
    start_each()

    it("delivers a plain-text line to every other client and never to the sender", function()
      local a, b, c = connect(3)
      a:send("hello everyone\n")
      expect_all({b, c}, {type = "say", from = a.name, text = "hello everyone"})
      quiet(a)
      b:send("hi a\n")
      expect_all({a, c}, {type = "say", from = b.name, text = "hi a"})
      for _, x in ipairs({a, b, c}) do quiet(x) end
    end)

    it("takes a JSON say object and keeps its text exactly", function()
      local a, b, c = connect(3)
      local text = "h\195\169llo \226\156\147 \"quoted\" {braces} /nick not-a-command"
      b:send(cjson.encode({type = "say", text = text}) .. "\n")
      expect_all({a, c}, {type = "say", from = b.name, text = text})
      quiet(b)
    end)

    it("treats a line that is not a command as plain text, slash or not", function()
      local a, b = connect(2)
      a:send("/nickname is not a command\n/whoami\n")
      expect(b, {type = "say", from = a.name, text = "/nickname is not a command"})
      expect(b, {type = "say", from = a.name, text = "/whoami"})
      quiet(a)
    end)
  end)

  describe("nick", function()
    start_each()

    it("renames a client and tells everyone, the renamed client included", function()
      local a, b, c = connect(3)
      a:send("/nick alice\n")
      expect_all({a, b, c}, {type = "nick", from = a.name, name = "alice"})
      b:send('{"type":"nick","name":"bob"}\n')
      expect_all({a, b, c}, {type = "nick", from = b.name, name = "bob"})
      a:send("now I am alice\n")
      expect_all({b, c}, {type = "say", from = "alice", text = "now I am alice"})
      quiet(a)
      assert.same(sorted({"alice", "bob", c.name}), who(a))
    end)

    it("refuses a name another client has, and frees a name its owner gave up", function()
      local a, b, c = connect(3)
      a:send("/nick alice\n")
      expect_all({a, b, c}, {type = "nick", from = a.name, name = "alice"})
      b:send('/nick alice\n{"type":"nick","name":"alice"}\n')
      expect(b, {type = "error", reason = "name alice is taken"})
      expect(b, {type = "error", reason = "name alice is taken"})
      quiet(a) -- nobody else heard of the attempts, and b kept its name
      quiet(c)
      b:send("still me\n")
      expect_all({a, c}, {type = "say", from = b.name, text = "still me"})
      a:send("/nick alicia\n") -- once alice renames, her old name can be taken
      expect_all({a, b, c}, {type = "nick", from = "alice", name = "alicia"})
      b:send("/nick alice\n")
      expect_all({a, b, c}, {type = "nick", from = b.name, name = "alice"})
    end)

    it("rejects invalid names with an error and tells nobody else", function()
      local a, b = connect(2)
      for _, line in ipairs({
        "/nick", "/nick ", "/nick two words", "/nick " .. string.rep("n", 33),
        "/nick bad!name", "/nick dot.ted",
        "/nick \195\169mile", -- é: letters are ASCII only
        '{"type":"nick","name":""}', '{"type":"nick","name":42}',
        '{"type":"nick","name":["x"]}', '{"type":"nick"}',
      }) do
        a:send(line .. "\n")
        assert.same({type = "error", reason = NAME_RULE}, a:json(), "reply to " .. line)
      end
      quiet(b)
      local longest = string.rep("L", 32) -- the longest and most varied valid names
      a:send("/nick " .. longest .. "\n/nick a_B-9\n")
      expect(b, {type = "nick", from = a.name, name = longest})
      expect(b, {type = "nick", from = longest, name = "a_B-9"})
    end)
  end)

  describe("who", function()
    start_each()

    it("lists every name sorted, for /who and for a JSON who", function()
      local a, b, c = connect(3)
      for x, name in pairs({[a] = "zed", [b] = "alice", [c] = "mike"}) do
        x:send("/nick " .. name .. "\n")
        expect_all({a, b, c}, {type = "nick", name = name})
      end
      assert.same({"alice", "mike", "zed"}, who(b))
      quiet(b)
      c:send('{"type":"who"}\n')
      expect(c, {type = "who", names = {"alice", "mike", "zed"}})
    end)
  end)

  describe("line framing", function()
    start_each()

    it("joins a line split across two sends", function()
      local a, b = connect(2)
      a:send("hel") -- the server reads (and keeps) this part on its own
      a:send("lo there\n")
      expect(b, {type = "say", from = a.name, text = "hello there"})
      a:send('{"type":"sa')
      a:send('y","text":"split json"}\n')
      expect(b, {type = "say", from = a.name, text = "split json"})
      quiet(b)
    end)

    it("handles two lines in one send, in order", function()
      local a, b = connect(2)
      a:send('first\n{"type":"say","text":"second"}\n/nick third\n')
      expect(b, {type = "say", from = a.name, text = "first"})
      expect(b, {type = "say", from = a.name, text = "second"})
      expect_all({a, b}, {type = "nick", from = a.name, name = "third"})
    end)

    it("takes CRLF line endings as well as LF", function()
      local a, b = connect(2)
      a:send("crlf line\r\n/nick carol\r\n")
      expect(b, {type = "say", from = a.name, text = "crlf line"})
      expect_all({a, b}, {type = "nick", from = a.name, name = "carol"})
      a:send('{"type":"say","text":"json crlf"}\r\n/who\r\n')
      expect(b, {type = "say", from = "carol", text = "json crlf"})
      expect(a, {type = "who"})
    end)

    it("ignores empty lines", function()
      local a, b = connect(2)
      a:send("\n\r\n\nafter blanks\n")
      expect(b, {type = "say", from = a.name, text = "after blanks"})
      quiet(a)
    end)
  end)

  describe("with --max-line 100", function()
    start_each("--max-line", "100")
    local line = ("e"):rep(100)

    it("answers an over-long line with line too long and stays usable", function()
      local a, b = connect(2)
      a:send(string.rep("x", 101) .. "\n")
      expect(a, {type = "error", reason = "line too long"})
      a:send("next line works\n")
      expect(b, {type = "say", from = a.name, text = "next line works"})
      quiet(a)
      quiet(b)
    end)

    it("discards an over-long line that arrives in pieces, with one error", function()
      local a, b = connect(2)
      a:send(string.rep("y", 150)) -- no newline yet: the server sees it is too long
      expect(a, {type = "error", reason = "line too long"})
      a:send(string.rep("z", 300))
      a:send("end of the long one\nshort one\n")
      expect(b, {type = "say", from = a.name, text = "short one"})
      quiet(a) -- exactly one error for the whole long line
      quiet(b)
    end)

    it("accepts a line of exactly 100 bytes, whole or in pieces, LF or CRLF", function()
      local a, b = connect(2)
      -- the CR is part of the line ending, not of the line, wherever the reads split
      local ways = {{line .. "\n"}, {line .. "\r\n"}, {line, "\n"}, {line .. "\r", "\n"}}
      for _, pieces in ipairs(ways) do
        for _, piece in ipairs(pieces) do a:send(piece) end
        expect(b, {type = "say", from = a.name, text = line})
        quiet(a)
      end
    end)
  end)

  describe("bad input", function()
    start_each()

    it("replies with an error to each kind of bad line and stays usable", function()
      local a, b = connect(2)
      for _, case in ipairs({
        {"{bad json", "malformed JSON"},
        {'{"type":"say","text":"unterminated}', "malformed JSON"},
        {"[1,2]", "expected a JSON object"},
        {'["say","x"]', "expected a JSON object"},
        {"[nope", "malformed JSON"},
        {'{"type":"dance"}', 'unknown type: string "dance"'},
        {'{"text":"no type"}', "missing type"},
        {'{"type":"say"}', "say needs a text string"},
        {'{"type":"say","text":5}', "say needs a text string"},
        {"bad \255\254 bytes", "invalid UTF-8"},
        {"\192\128 overlong", "invalid UTF-8"},
        {'{"type":"say","text":"\237\160\128"}', "invalid UTF-8"}, -- a surrogate
      }) do
        a:send(case[1] .. "\n")
        assert.same({type = "error", reason = case[2]}, a:json(), ("reply to %q"):format(case[1]))
      end
      quiet(b) -- nothing bad was broadcast
      a:send("still here\n")
      expect(b, {type = "say", from = a.name, text = "still here"})
    end)

    -- Regression: {"type":{}} was answered "unknown type table: 0x55...", a heap address;
    -- null as "userdata: (nil)" and 123 as "123.0", Lua's names for what the client sent.
    it("names the JSON type of a type that is no known name, never a Lua value", function()
      local a, b = connect(2)
      for _, case in ipairs({
        {'{"type":{}}', "object"},
        {'{"type":{"say":"x"}}', "object"},
        {'{"type":null}', "null"},
        {'{"type":123}', "number"},
        {'{"type":-1.5e3}', "number"},
        {'{"type":[]}', "array"},
        {'{"type":["say"]}', "array"},
        {'{"type":"str"}', 'string "str"'},
        {'{"type":true}', "boolean"},
        {'{"type":false}', "boolean"},
        -- cjson decodes {} and [] alike: the line itself tells them apart
        {'{"a":{"type":[]},"type":{},"b":"type"}', "object"},
        {'{"type": [ ] , "x":{"type":{}}}', "array"},
        {'{"t\\"":"[","\\u0074ype":[]}', "array"}, -- an escaped quote, an escaped name
        {'{"type":{},"type":[]}', "array"}, -- the last one counts, as in cjson
      }) do
        a:send(case[1] .. "\n")
        local reason = expect(a, {type = "error"}).reason
        local what = ("reply to %s: %q"):format(case[1], reason)
        assert.equal("unknown type: " .. case[2], reason, what)
        for _, lua_word in ipairs({"0x", "table:", "userdata", "nil", "123"}) do
          assert.is_nil(reason:find(lua_word, 1, true), what)
        end
      end
      quiet(b)
    end)
  end)

  describe("with --idle-timeout 0.5, on the sim clock", function()
    start_each("--idle-timeout", "0.5")

    it("disconnects a silent client with an error and tells the others why", function()
      local a, b, idle = connect(3)
      T.advance(0.3)
      who(a) -- a and b stay active
      who(b)
      T.advance(0.19) -- idle has been silent 0.49 s: still there
      for _, x in ipairs({a, b, idle}) do quiet(x) end
      T.advance(0.11)
      expect_all({a, b}, {type = "leave", name = idle.name, reason = "idle timeout"})
      expect(idle, {type = "error", reason = "idle timeout"})
      assert.is_true(idle:closed(), "the idle client is still connected")
      assert.equal("", idle:received(), "more than the error before the close")
      for _, x in ipairs({a, b}) do quiet(x) end -- the active clients were not dropped
      assert.same(sorted({a.name, b.name}), who(a))
    end)
  end)

  describe("with a client that nothing the server sends reaches", function()
    start_each()

    local function text(i)
      return ("%05d "):format(i) .. string.rep(string.char(97 + i % 26), 1017)
    end

    it("drops it as a slow consumer past its output limit; the others get every say", function()
      local slow, sender, r1, r2 = connect(4)
      slow:shape({would_block = 1e9}) -- all the server sends it piles up, unsent
      local leaves = {[r1] = {}, [r2] = {}}
      local function say(i) -- sends line i; the readers get it, maybe after a leave
        sender:send(text(i) .. "\n")
        for _, r in ipairs({r1, r2}) do
          local msg = r:json()
          if msg.type == "leave" then
            table.insert(leaves[r], msg)
            msg = r:json()
          end
          assert.same({type = "say", from = sender.name, text = text(i)}, msg)
        end
      end
      local i = 0
      repeat -- 1 KiB a line: about a thousand fill the 1 MiB limit
        i = i + 1
        say(i)
        assert(i < 2000, "the slow client was not dropped after 2000 lines")
      until slow:closed(0)
      for k = i + 1, i + 20 do say(k) end
      assert.matches("output buffer full", srv:log(), 1, true)
      local leave = {type = "leave", name = slow.name, reason = "slow consumer"}
      assert.same({{leave}, {leave}}, {leaves[r1], leaves[r2]})
      expect(sender, leave)
      for _, x in ipairs({sender, r1, r2}) do quiet(x) end
      assert.same(sorted({sender.name, r1.name, r2.name}), who(sender))
      sender:send("after the flood\n")
      expect_all({r1, r2}, {type = "say", from = sender.name, text = "after the flood"})
    end)
  end)
end)

describe(CHAT .. " under the luahost executable", function()
  it("serves clients over real sockets and logs no error", function()
    local proc = T.spawn(CHAT, {"127.0.0.1:0", "--idle-timeout", "30", "--max-line", "100"},
      {env = {LUA_PATH_5_4 = package.path}}) -- where it finds luahost.task, if it uses it
    local a = T.client(proc.host, proc.port)
    local name = expect(a, {type = "welcome"}).name
    local b = T.client(proc.host, proc.port)
    local b_name = expect(b, {type = "welcome"}).name
    expect(a, {type = "join", name = b_name})
    a:send("/nick ann\nhello\n" .. string.rep("x", 101) .. "\n")
    expect_all({a, b}, {type = "nick", from = name, name = "ann"})
    expect(b, {type = "say", from = "ann", text = "hello"})
    expect(a, {type = "error", reason = "line too long"})
    b:close()
    expect(a, {type = "leave", name = b_name, reason = "quit"})
    a:close()
    proc:stop()
    assert.is_nil(proc:stderr():match("[^\n]* error [^\n]*"), proc:stderr())
  end)
end)
