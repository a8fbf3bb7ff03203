-- nodelay_spec.lua: TCP sockets the host accepts or connects have Nagle's algorithm off
-- (TCP_NODELAY, as Redis, nginx and Go set it), so that a small reply is not held back
-- waiting for the peer's delayed ACK; setsockopt("nodelay", false) turns it back on.
-- Unix-domain sockets have no such option and are accepted as before.
local T = require "luahost.test"
local luahost = require "luahost"
local helpers = require "support.helpers"

local BACKENDS = {"epoll", "poll", "select"}

-- Logs each accepted connection's nodelay, then turns it off and logs it again.
local ACCEPTOR = [[
local luahost = require "luahost"
local server = assert(luahost.listen(arg[1], 0))
luahost.selector:register(server, luahost.EVENT_READ, function()
  local conn = server:accept()
  if not conn then return end
  local before = conn:getsockopt("nodelay")
  assert(conn:setsockopt("nodelay", false))
  luahost.log("info", "nodelay", before, conn:getsockopt("nodelay"))
  luahost.selector:register(conn, luahost.EVENT_READ, function(c)
    local data = c:recv(100)
    if data == "" or not data then c:close() else c:write(data) end
  end)
end)
]]

describe("TCP_NODELAY", function()
  for _, backend in ipairs(BACKENDS) do
    it("is on for accepted sockets on " .. backend .. ", and off once set false", function()
      local srv = T.start(T.tempfile(ACCEPTOR), {"127.0.0.1"}, {selector = backend})
      local c = T.client(srv)
      srv:run_until(function() return srv:log():find("nodelay", 1, true) end, 5, "the accept")
      assert.matches("info nodelay true false\n", srv:log(), 1, true)
      c:echo("still served with Nagle on")
    end)
  end

  it("is on for accepted IPv6 sockets", function()
    if not helpers.ipv6_available() then return pending("no IPv6 loopback here") end
    local srv = T.start(T.tempfile(ACCEPTOR), {"::1"})
    T.client(srv)
    srv:run_until(function() return srv:log():find("nodelay", 1, true) end, 5, "the accept")
    assert.matches("info nodelay true false\n", srv:log(), 1, true)
  end)

  it("is on for luahost.connect and for socket('inet', 'stream') before it connects",
    function()
      local listener = assert(luahost.listen("127.0.0.1", 0))
      local _, port = listener:getsockname()
      local connected = assert(luahost.connect("127.0.0.1", port))
      assert.is_true(connected:getsockopt("nodelay"))
      local raw = assert(luahost.socket("inet", "stream"))
      assert.is_true(raw:getsockopt("nodelay"))
      assert(raw:setblocking(false))
      local rc = raw:connect_ex("127.0.0.1", port)
      assert(rc == 0 or rc == 115, "connect_ex: " .. tostring(rc))
      assert.is_true(raw:getsockopt("nodelay"))
      assert.is_true(raw:setsockopt("nodelay", false))
      assert.is_false(raw:getsockopt("nodelay"))
      connected:close()
      raw:close()
      listener:close()
    end)

  it("is not asked of unix-domain sockets, which are accepted as before", function()
    local path = T.tempfile("", "sock")
    os.remove(path)
    local listener = assert(luahost.socket("unix", "stream"))
    assert(listener:bind(path))
    assert(listener:listen())
    local client = assert(luahost.socket("unix", "stream"))
    assert(client:connect(path))
    assert.is_nil((client:getsockopt("nodelay"))) -- the kernel has no such option here
    local conn, err
    for _ = 1, 100 do
      conn, err = listener:accept()
      if conn then break end
      T.sleep(0.01)
    end
    assert(conn, "accept: " .. tostring(err))
    assert(client:send("x") == 1)
    T.wait_until(function() return conn:recv(1) == "x" end, 2, "the byte over the unix socket")
    conn:close()
    client:close()
    listener:close()
    os.remove(path)
  end)
end)
