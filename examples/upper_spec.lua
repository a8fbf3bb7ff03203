-- upper_spec.lua: the README's example of testing a script with busted and the test kit.
local T = require "luahost.test"

describe("upper.lua", function()
  it("answers in upper case", function()
    local srv = T.start("examples/upper.lua", {"0"}) -- in this process, on port 0
    local client = T.client(srv)
    client:send("hello")
    assert.equals("HELLO", client:read(5)) -- runs the server's loop while it waits
  end)
end)

describe("upper.lua, for a client that resets", function()
  it("lets go of the connection: nothing stays registered", function()
    local srv = T.start("examples/upper.lua", {"0"}, {selector = "sim"})
    local before = srv.luahost.stats().registered
    local client = T.client(srv)
    client:send("hi")
    assert.equals("HI", client:read(2))
    client:reset()
    srv:run_until(function() return srv.luahost.stats().registered == before end, 2,
      "the reset connection to be let go")
  end)
end)
