-- chat_spec.lua: scripts/chat.lua on the sim backend; docs/testing.md quotes this file.
local T = require "luahost.test"

describe("chat.lua", function()
  it("relays a say, then drops idle clients", function()
    local srv = T.start("scripts/chat.lua", {"127.0.0.1:0", "--idle-timeout", "10"},
      {selector = "sim"})
    local ann, bob = T.client(srv), T.client(srv)
    assert.same({type = "welcome", name = "guest-1"}, ann:json())
    assert.same({type = "welcome", name = "guest-2"}, bob:json())
    assert.same({type = "join", name = "guest-2"}, ann:json())
    ann:send("hello\n")
    assert.same({type = "say", from = "guest-1", text = "hello"}, bob:json())
    T.advance(11) -- virtual seconds: returns at once
    assert.is_true(ann:closed() and bob:closed())
    assert.matches("idle timeout", ann:received())
    srv:stop()
    T.assert_clean(srv)
  end)
end)
