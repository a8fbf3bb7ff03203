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
