-- upper_spec.lua: the README's example of testing a script in-process with busted.
local luahost = require "luahost"

describe("upper.lua", function()
  it("answers in upper case", function()
    dofile("examples/upper.lua")
    local _, port = luahost.listeners()[1]:getsockname()
    local client = luahost.socket("inet", "stream")
    assert(client:connect("127.0.0.1", port))
    client:setblocking(false)
    client:send("hello")
    local reply, deadline = "", luahost.now() + 5
    while #reply < 5 and luahost.now() < deadline do
      luahost.step(0.01) -- one round of the server's loop
      reply = reply .. (client:recv() or "")
    end
    assert.equals("HELLO", reply)
    client:close()
    luahost.listeners()[1]:close()
  end)
end)
