-- echo_spec.lua: scripts/echo.lua run in process with the test kit. Protocol and flow
-- control on the sim backend (in-memory clients, shaped sends, resets), big payloads and
-- half-closes over real sockets. The executable itself: echo_e2e_spec.lua.
local T = require "luahost.test"
local payload = require("support.helpers").payload

local ECHO = "scripts/echo.lua"
local MiB = 1024 * 1024

local function connections(srv)
  return srv.luahost.stats().connections
end

-- The clients close; echo.lua must then close its ends by itself, and leave nothing
-- behind once stopped.
local function finish(srv)
  for _, c in ipairs(srv.clients) do c:close() end
  srv:run_until(function() return connections(srv) == 0 end, nil, "echo.lua to close its ends")
  srv:stop()
  T.assert_clean(srv)
end

describe("scripts/echo.lua on a real backend", function()
  it("listens on the address in arg[1], port 0 giving a free port", function()
    local srv = T.start(ECHO, {"127.0.0.1:0"})
    assert.same({"127.0.0.1", 1}, {srv.host, #srv.luahost.listeners()})
    assert.is_true(srv.port > 0)
    local key = assert(srv.luahost.selector:get_key(srv.listener), "listener not registered")
    assert.same({srv.luahost.EVENT_READ, "function"}, {key.events, type(key.data)})
    finish(srv)
  end)

  it("echoes 4 MiB, far more than the socket buffers hold, in order", function()
    local srv = T.start(ECHO)
    local c, data = T.client(srv), payload(4 * MiB, 11)
    c:send(data)
    assert.is_true(c:read(#data, 30) == data, "the echoed bytes differ")
    finish(srv)
  end)

  it("sends every byte back to a client that shut down its write side, then closes", function()
    local srv = T.start(ECHO)
    local c, data = T.client(srv), payload(2 * MiB, 13)
    c:send(data)
    c:shutdown()
    assert.is_true(c:closed(30), "no end of stream")
    assert.is_true(c:received() == data, "the echoed bytes differ")
    finish(srv)
  end)
end)

describe("scripts/echo.lua on sim", function()
  local function start()
    return T.start(ECHO, nil, {selector = "sim"})
  end

  it("echoes what a client sends", function()
    local srv = start()
    local c = T.client(srv)
    c:send("hello, echo\n")
    assert.equal("hello, echo\n", c:read(12))
    c:send("again")
    assert.equal("again", c:read(5))
    finish(srv)
  end)

  it("serves several clients at once, each getting back only its own bytes", function()
    local srv = start()
    local cs, sent = {}, {}
    for i = 1, 8 do cs[i], sent[i] = T.client(srv), "" end
    for round = 1, 5 do
      for i, c in ipairs(cs) do
        local msg = ("client %d round %d;"):format(i, round)
        c:send(msg)
        sent[i] = sent[i] .. msg
      end
    end
    for i, c in ipairs(cs) do assert.equal(sent[i], c:read(#sent[i])) end
    finish(srv)
  end)

  it("loses no byte when its sends are short or would block", function()
    local srv = start()
    local c, data = T.client(srv), payload(300 * 1024, 7)
    c:shape({max_write = 1000, would_block = 50})
    c:send(data)
    assert.is_true(c:read(#data) == data, "the echoed bytes differ")
    finish(srv)
  end)

  it("gives the end of the stream to a client that shuts down at once", function()
    local srv = start()
    local c = T.client(srv)
    c:shutdown()
    assert.is_true(c:closed())
    assert.equal("", c:received())
    finish(srv)
  end)

  it("closes its end of a connection once the client has gone", function()
    local srv = start()
    local c = T.client(srv)
    c:send("x")
    c:read(1)
    assert.equal(1, connections(srv))
    c:close()
    srv:run_until(function() return connections(srv) == 0 end, nil, "echo.lua to close")
    finish(srv)
  end)

  it("delivers output still pending when the client's end of stream arrives", function()
    local srv = start()
    local c, data = T.client(srv), payload(200 * 1024, 17)
    c:shape({would_block = 1e9}) -- nothing reaches the client while it sends
    c:send(data)
    c:shutdown()
    srv:run_until(function() return srv.luahost.stats().registered == 1 end, nil,
      "echo.lua to close the connection")
    assert.equal(1, connections(srv), "closed at once, its output dropped")
    c:shape({would_block = 0})
    assert.is_true(c:closed(), "no end of stream")
    assert.is_true(c:received() == data, "the echoed bytes differ")
    finish(srv)
  end)

  it("keeps serving others when a client resets its connection", function()
    local srv = start()
    local rude, polite = T.client(srv), T.client(srv)
    rude:send(payload(100000))
    polite:send("before")
    assert.equal("before", polite:read(6))
    rude:reset()
    srv:run_until(function() return connections(srv) == 1 end, nil, "the reset to be handled")
    polite:send("after")
    assert.equal("after", polite:read(5))
    finish(srv)
  end)

  it("stops reading from a client that never reads, and serves the others", function()
    local srv = start()
    local stuck, other = T.client(srv), T.client(srv)
    stuck:shape({would_block = 1e9}) -- its echo can only pile up
    local chunk, refused, rounds = payload(65536), 0, 0
    repeat -- until ten rounds of the server's loop in a row took nothing from it
      rounds, refused = rounds + 1, stuck.sock:send(chunk) and 0 or refused + 1
      srv:step()
    until refused == 10 or rounds == 500
    assert.equal(10, refused, "echo.lua kept reading from a client that never reads")
    for i = 1, 20 do
      other:send("ping " .. i)
      assert.equal("ping " .. i, other:read(#("ping " .. i)))
    end
    stuck:shape({would_block = 0}) -- the host now finds the peer gone, as a real one would
    finish(srv)
  end)
end)
