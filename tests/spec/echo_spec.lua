-- echo_spec.lua: runs scripts/echo.lua in this process (as the host would: `arg` set, then
-- the main chunk) and drives it with luahost.step while luahost clients talk to it, to
-- prove it echoes every byte, to many clients at once, through half-closes and slow readers.
local luahost = require "luahost"
local helpers = require "support.helpers"

local MiB = 1024 * 1024

-- The connections the echo server holds: everything registered but its listener.
local function connections(server)
  local n = 0
  for fileobj in pairs(luahost.selector:get_map()) do
    if fileobj ~= server then
      n = n + 1
    end
  end
  return n
end

describe("scripts/echo.lua, run in-process", function()
  local server, port
  local clients = {}

  -- A connected client; the spec closes every one it made.
  local function client()
    local c = assert(luahost.connect("127.0.0.1", port))
    clients[#clients + 1] = c
    return c
  end

  setup(function()
    assert.is_nil(next(luahost.listeners()), "a listener existed before the script ran")
    local saved = _G.arg
    _G.arg = {[0] = "scripts/echo.lua", "127.0.0.1:0"}
    local ok, err = pcall(dofile, "scripts/echo.lua")
    _G.arg = saved
    assert(ok, err)
    server = luahost.listeners()[1]
    assert(server, "echo.lua did not listen")
    port = select(2, server:getsockname())
  end)

  teardown(function()
    for _, c in ipairs(clients) do
      c:close()
    end
    if server then
      server:close()
    end
  end)

  after_each(function()
    for _, c in ipairs(clients) do
      c:close()
    end
    clients = {}
    helpers.step_until(function()
      return connections(server) == 0
    end, nil, "the echo server to close its connections")
  end)

  it("listens on the address in arg[1], port 0 giving a free port", function()
    local list = luahost.listeners()
    assert.equals(1, #list)
    local host, p = server:getsockname()
    assert.equals("127.0.0.1", host)
    assert.is_true(p > 0)
    local key = luahost.selector:get_key(server)
    assert.is_not_nil(key, "the listener is not registered")
    assert.equals(luahost.EVENT_READ, key.events)
    assert.equals("function", type(key.data))
  end)

  it("echoes what a client sends", function()
    local c = client()
    helpers.send_all(c, "hello, echo\n")
    assert.equals("hello, echo\n", helpers.read_n(c, 12))
    helpers.send_all(c, "again")
    assert.equals("again", helpers.read_n(c, 5))
  end)

  it("serves several clients at once, each getting back only its own bytes", function()
    local cs, sent = {}, {}
    for i = 1, 8 do
      cs[i] = client()
      sent[i] = {}
    end
    for round = 1, 5 do
      for i, c in ipairs(cs) do
        local msg = ("client %d round %d;"):format(i, round)
        helpers.send_all(c, msg)
        sent[i][#sent[i] + 1] = msg
      end
    end
    for i, c in ipairs(cs) do
      local want = table.concat(sent[i])
      assert.equals(want, helpers.read_n(c, #want, nil, "client " .. i .. "'s echo"))
    end
  end)

  it("echoes a payload much larger than the socket buffers, in order", function()
    local c = client()
    assert(c:setlimit(16 * MiB))
    local data = helpers.payload(4 * MiB, 11)
    c:write(data)
    local got = helpers.read_n(c, #data, 30, "4 MiB back")
    assert.equals(#data, #got)
    assert.is_true(got == data, "the echoed bytes differ")
  end)

  it("a client that sends, then shuts down its write side, still receives every byte", function()
    local c = client()
    assert(c:setlimit(16 * MiB))
    local data = helpers.payload(2 * MiB, 13)
    c:write(data)
    assert.is_true(c:shutdown("w"))
    local got = helpers.read_to_eof(c, 30, "the echo and the end of the stream")
    assert.equals(#data, #got)
    assert.is_true(got == data, "the echoed bytes differ")
    helpers.step_until(function()
      return connections(server) == 0
    end, nil, "the server to close the connection")
  end)

  it("a client that sends, shuts down, and only then reads, still receives every byte", function()
    local c = client()
    assert(c:setsockopt("rcvbuf", 65536))
    -- Small kernel buffers on the server's side of the connection too, so that its echo
    -- backs up: it then reads everything and the end of stream while output is still
    -- buffered, and closes with it pending. close() must still deliver it.
    local conn = helpers.step_until(function()
      for fileobj in pairs(luahost.selector:get_map()) do
        if fileobj ~= server then
          return fileobj
        end
      end
    end, nil, "the server to accept")
    assert(conn:setsockopt("sndbuf", 65536))
    local data = helpers.payload(400 * 1024, 17)
    assert(c:setlimit(MiB))
    c:write(data)
    assert.is_true(c:shutdown("w"))
    helpers.step_until(function()
      return connections(server) == 0
    end, nil, "the server to close the connection")
    local got = helpers.read_to_eof(c, 20, "the echo and the end of the stream")
    assert.equals(#data, #got)
    assert.is_true(got == data, "the echoed bytes differ")
  end)

  it("a client that shuts down its write side at once gets the end of the stream", function()
    local c = client()
    helpers.wait_ready(c, luahost.EVENT_WRITE)
    assert.is_true(c:shutdown("w"))
    assert.equals("", helpers.read_to_eof(c))
  end)

  it("closes its end of a connection once the client has gone", function()
    local c = client()
    helpers.send_all(c, "x")
    helpers.read_n(c, 1)
    assert.equals(1, connections(server))
    c:close()
    helpers.step_until(function()
      return connections(server) == 0
    end, nil, "the server to close the connection")
  end)

  it("keeps serving others when a client disconnects abruptly", function()
    local rude, polite = client(), client()
    helpers.send_all(rude, helpers.payload(100000))
    helpers.send_all(polite, "before")
    assert.equals("before", helpers.read_n(polite, 6))
    rude:abort()
    helpers.send_all(polite, "after")
    assert.equals("after", helpers.read_n(polite, 5))
  end)

  it("keeps serving others while a client never reads its echo", function()
    local stuck, other = client(), client()
    assert(stuck:setsockopt("rcvbuf", 65536))
    assert(stuck:setlimit(64 * MiB))
    -- far more than the kernel buffers on both sides and the server's output limit hold
    stuck:write(helpers.payload(32 * MiB))
    local deadline = luahost.now() + 0.3
    local rounds = 0
    while luahost.now() < deadline do
      local msg = "ping " .. rounds
      helpers.send_all(other, msg)
      assert.equals(msg, helpers.read_n(other, #msg, 2, "the other client's echo"))
      rounds = rounds + 1
    end
    assert.is_true(rounds > 10, "only " .. rounds .. " echoes in 0.3 s")
    assert.is_true(stuck:pending() > 0, "the stuck client's output all went through")
    stuck:abort()
  end)
end)

describe("when the echo specs are done", function()
  it("nothing is left registered, listening or flushing", function()
    assert.is_true(helpers.host_is_idle(), table.concat(helpers.registered(), ", "))
    assert.is_nil(next(luahost.selector:get_map()))
    assert.is_nil(next(luahost.listeners()))
  end)
end)
