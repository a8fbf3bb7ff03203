-- socket_spec.lua: proves the luahost.socket type and luahost.listen / connect / socket
-- work as documented: Python-style calls, Lua-style error returns (nil, message, errno),
-- buffered write with a limit, close/abort/shutdown, <close> and __gc.
local luahost = require "luahost"
local helpers = require "support.helpers"

local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local MiB = 1024 * 1024
local ECONNREFUSED, EINPROGRESS, EADDRINUSE, ENOTCONN = 111, 115, 98, 107
local EPIPE, ECONNRESET = 32, 104

local function close_all(...)
  for _, s in ipairs({...}) do
    s:close()
  end
end

-- A port nobody listens on: the kernel chose it for us a moment ago.
local function closed_port()
  local server, port = helpers.listen()
  server:close()
  return port
end

local function in_list(list, value)
  for _, v in ipairs(list) do
    if v == value then
      return true
    end
  end
  return false
end

describe("socket methods called on something else", function()
  it("raise 'luahost.socket expected' for other userdata (a key, a timer, a selector, a "
    .. "file) and for plain values, and write_all skips them", function()
    local client, conn = helpers.pair()
    local key = luahost.selector:register(conn, READ, function() end)
    local timer = luahost.after(60, function() end)
    finally(function()
      timer:cancel()
      luahost.selector:unregister(conn)
      close_all(client, conn)
    end)
    -- (a string and a table as long as a socket's userdata is large, too)
    local long_table = {}
    for i = 1, 64 do long_table[i] = i end
    local others = {key, timer, luahost.selector, io.stdout, {}, "socket", 42, false}
    for size = 1, 64 do
      others[#others + 1] = ("x"):rep(size)
      others[#others + 1] = {table.unpack(long_table, 1, size)}
    end
    for _, other in ipairs(others) do
      for _, method in ipairs({"recv", "send", "write", "close", "fileno", "pending"}) do
        local ok, err = pcall(conn[method], other, "x")
        assert.is_false(ok, method .. " accepted a " .. type(other))
        assert.matches("luahost.socket expected", err)
      end
    end
    local sockets = {[key] = true, [timer] = true, [io.stdout] = true, [conn] = true, [7] = true}
    assert.equals(1, luahost.write_all(sockets, "hi"))
    assert.equals("hi", client:recv(10))
  end)
end)

describe("luahost.listen", function()
  it("listens on 127.0.0.1 with port 0 and reports the port the kernel chose", function()
    local server = assert(luahost.listen("127.0.0.1", 0))
    local host, port = server:getsockname()
    assert.equals("127.0.0.1", host)
    assert.is_true(math.type(port) == "integer" and port > 0 and port < 65536)
    assert.equals(("luahost.socket (fd %d, 127.0.0.1:%d, listening)"):format(server:fileno(), port),
                  tostring(server))
    assert.is_true(helpers.fd_nonblocking(server:fileno()), "a listener must be non-blocking")
    assert.is_true(in_list(luahost.listeners(), server))
    server:close()
  end)

  it("makes no garbage for an accept that finds no client (an accept loop's last call)",
    function()
      local server = assert(luahost.listen("127.0.0.1", 0))
      collectgarbage()
      collectgarbage("stop")
      local before = collectgarbage("count")
      local failed = 0
      for _ = 1, 10000 do
        local conn, err = server:accept()
        if not conn and err == "wouldblock" then failed = failed + 1 end
      end
      local grown = (collectgarbage("count") - before) * 1024
      collectgarbage("restart")
      assert.equal(10000, failed)
      -- A socket made and dropped per call would be 10,000 userdata (~800 KB).
      assert.is_true(grown < 64 * 1024, ("10,000 failed accepts made %d bytes"):format(grown))
      local client, conn = helpers.pair(server) -- the kept socket serves the next client
      assert.equal(0, conn:write("x"))
      assert.equal("x", helpers.read_n(client, 1))
      close_all(client, conn, server)
    end)

  it("listens on ::1 (IPv6) with port 0", function()
    if not helpers.ipv6_available() then
      pending("no IPv6 loopback on this system")
      return
    end
    local server = assert(luahost.listen("::1", 0))
    local host, port = server:getsockname()
    assert.equals("::1", host)
    assert.is_true(port > 0)
    assert.matches("%[::1%]:" .. port .. ", listening", tostring(server))
    local client = assert(luahost.connect("::1", port))
    local conn, addr = helpers.accept(server)
    assert.equals("::1", addr)
    close_all(client, conn, server)
  end)

  it("accepts an IPv6 address in brackets", function()
    if not helpers.ipv6_available() then
      pending("no IPv6 loopback on this system")
      return
    end
    local server = assert(luahost.listen("[::1]", 0))
    assert.equals("::1", server:getsockname())
    server:close()
  end)

  it("takes backlog and reuseport options", function()
    local a = assert(luahost.listen("127.0.0.1", 0, {backlog = 16, reuseport = true}))
    local _, port = a:getsockname()
    local b = assert(luahost.listen("127.0.0.1", port, {reuseport = true}))
    assert.equals(port, select(2, b:getsockname()))
    close_all(a, b)
  end)

  it("returns nil, message, errno when the address is in use", function()
    local client, conn = helpers.pair()
    local _, taken = client:getsockname() -- a port a live connection holds
    local server, msg, errno = luahost.listen("127.0.0.1", taken)
    assert.is_nil(server)
    assert.equals(EADDRINUSE, errno)
    assert.matches("127.0.0.1:" .. taken, msg, 1, true)
    assert.matches("Address already in use", msg, 1, true)
    close_all(client, conn)
  end)

  it("raises on a port outside 0..65535 and on options that are not a table", function()
    assert.error_matches(function()
      luahost.listen("127.0.0.1", 70000)
    end, "port must be 0..65535", 1, true)
    assert.error_matches(function()
      luahost.listen("127.0.0.1", -1)
    end, "port must be 0..65535", 1, true)
    assert.error_matches(function()
      luahost.listen("127.0.0.1", 0, "fast")
    end, "table expected")
  end)
end)

describe("luahost.connect", function()
  it("returns at once a non-blocking socket that becomes writable once connected", function()
    local server, port = helpers.listen()
    local client = assert(luahost.connect("127.0.0.1", port))
    assert.is_true(helpers.fd_nonblocking(client:fileno()))
    helpers.wait_ready(client, WRITE)
    assert.same({"127.0.0.1", port}, {client:getpeername()})
    local conn, addr, peer_port = helpers.accept(server)
    assert.equals("127.0.0.1", addr)
    assert.equals(select(2, client:getsockname()), peer_port)
    assert.is_true(helpers.fd_nonblocking(conn:fileno()), "accepted sockets must be non-blocking")
    close_all(client, conn, server)
  end)

  it("reports a refused connection as ECONNREFUSED, at once or on the first recv", function()
    local client, msg, errno = luahost.connect("127.0.0.1", closed_port())
    if client then
      helpers.wait_ready(client, READ | WRITE)
      local data
      data, msg, errno = client:recv(10)
      assert.is_nil(data)
      client:close()
    end
    assert.equals(ECONNREFUSED, errno)
    assert.matches("refused", msg)
  end)

  it("raises on a port outside 0..65535", function()
    assert.error_matches(function()
      luahost.connect("127.0.0.1", 65536)
    end, "port must be 0..65535", 1, true)
  end)
end)

describe("luahost.socket", function()
  it("gives an unnamed unix socket the empty string as its name, not stray bytes", function()
    local s = assert(luahost.socket("unix", "stream"))
    assert.same({"", 0}, {s:getsockname()})
    s:close()
  end)

  it("creates a blocking inet stream socket by default, as Python does", function()
    local s = luahost.socket()
    assert.is_true(s:fileno() >= 0)
    assert.is_false(helpers.fd_nonblocking(s:fileno()))
    s:close()
  end)

  for _, args in ipairs({{"inet", "stream"}, {"inet6", "stream"}, {"unix", "stream"},
                          {"inet", "dgram"}}) do
    it(("creates a %s %s socket"):format(args[1], args[2]), function()
      local s = assert(luahost.socket(args[1], args[2]))
      assert.is_true(s:fileno() >= 0)
      s:close()
    end)
  end

  it("raises on an unknown family or type, naming it", function()
    assert.error_matches(function()
      luahost.socket("appletalk", "stream")
    end, "invalid option 'appletalk'", 1, true)
    assert.error_matches(function()
      luahost.socket("inet", "seqpacket")
    end, "invalid option 'seqpacket'", 1, true)
  end)

  it("bind and listen make a listener that accepts and shows in luahost.listeners()", function()
    local s = luahost.socket("inet", "stream")
    assert.is_true(s:bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    assert.is_true(port > 0)
    assert.is_false(in_list(luahost.listeners(), s))
    assert.is_true(s:listen(8))
    assert.is_true(in_list(luahost.listeners(), s))
    assert.matches("listening", tostring(s))
    s:setblocking(false)
    local client = assert(luahost.connect("127.0.0.1", port))
    local conn = helpers.accept(s)
    close_all(client, conn, s)
    assert.is_false(in_list(luahost.listeners(), s))
  end)

  it("bind returns nil, message, errno when the address is in use", function()
    local client, conn = helpers.pair()
    local _, taken = client:getsockname()
    local s = luahost.socket("inet", "stream")
    local ok, msg, errno = s:bind("127.0.0.1", taken)
    assert.is_nil(ok)
    assert.equals(EADDRINUSE, errno)
    assert.matches("Address already in use", msg, 1, true)
    close_all(s, client, conn)
  end)

  it("connect returns true on success and nil, message, errno when refused", function()
    local server, port = helpers.listen()
    local s = luahost.socket("inet", "stream")
    assert.is_true(s:connect("127.0.0.1", port))
    assert.same({"127.0.0.1", port}, {s:getpeername()})
    local conn = helpers.accept(server)
    local refused = luahost.socket("inet", "stream")
    local ok, msg, errno = refused:connect("127.0.0.1", closed_port())
    assert.is_nil(ok)
    assert.equals(ECONNREFUSED, errno)
    assert.matches("refused", msg)
    close_all(s, conn, server, refused)
  end)

  it("connect_ex returns 0 on success and the errno number otherwise", function()
    local server, port = helpers.listen()
    local ok = luahost.socket("inet", "stream")
    assert.equals(0, ok:connect_ex("127.0.0.1", port))
    local refused = luahost.socket("inet", "stream")
    assert.equals(ECONNREFUSED, refused:connect_ex("127.0.0.1", closed_port()))
    local nb = luahost.socket("inet", "stream")
    nb:setblocking(false)
    assert.equals(EINPROGRESS, nb:connect_ex("127.0.0.1", port))
    helpers.wait_ready(nb, WRITE)
    local a = helpers.accept(server)
    local b = helpers.accept(server)
    close_all(ok, refused, nb, a, b, server)
  end)
end)

describe("a socket's accept", function()
  it("returns the connection, the peer's address and port", function()
    local server, port = helpers.listen()
    local client = assert(luahost.connect("127.0.0.1", port))
    local conn, addr, peer_port = helpers.accept(server)
    assert.equals("luahost.socket", getmetatable(conn).__name)
    assert.equals("127.0.0.1", addr)
    assert.equals(select(2, client:getsockname()), peer_port)
    close_all(client, conn, server)
  end)

  it("returns nil, \"wouldblock\" when no client is waiting", function()
    local server = helpers.listen()
    local conn, err = server:accept()
    assert.is_nil(conn)
    assert.equals("wouldblock", err)
    server:close()
  end)
end)

describe("a socket's recv", function()
  local client, conn
  before_each(function()
    client, conn = helpers.pair()
  end)
  after_each(function()
    close_all(client, conn)
  end)

  it("returns what the peer sent, as a string", function()
    assert.equals(5, client:send("hello"))
    assert.equals("hello", helpers.read_n(conn, 5))
  end)

  it("returns at most n bytes", function()
    assert(client:send("abcdef"))
    helpers.wait_ready(conn, READ)
    assert.equals("abc", conn:recv(3))
    assert.equals("def", conn:recv(3))
  end)

  it("returns nil, \"wouldblock\" when nothing is there", function()
    local data, err = conn:recv(10)
    assert.is_nil(data)
    assert.equals("wouldblock", err)
  end)

  it("returns \"\" at the end of the stream", function()
    client:close()
    helpers.wait_ready(conn, READ)
    assert.equals("", conn:recv(10))
    assert.equals("", conn:recv(10))
  end)

  it("reads up to 64 KiB without a size, and more than that when asked", function()
    local data = helpers.payload(200000)
    helpers.send_all(client, data)
    helpers.wait_ready(conn, READ)
    helpers.sleep(0.02)
    local first = assert(conn:recv())
    assert.is_true(#first > 0 and #first <= 65536, "recv() returned " .. #first .. " bytes")
    helpers.wait_ready(conn, READ)
    local second = assert(conn:recv(200000))
    assert.is_true(#second > 0, "recv(200000) returned nothing")
    local rest = helpers.read_n(conn, #data - #first - #second)
    assert.is_true(first .. second .. rest == data, "the bytes differ")
  end)

  it("raises when the size is not positive", function()
    assert.error_matches(function()
      conn:recv(0)
    end, "size must be positive")
    assert.error_matches(function()
      conn:recv(-1)
    end, "size must be positive")
  end)

  it("returns nil, message, errno when the peer reset the connection", function()
    assert(client:send("never read")) -- closing with unread data sends a reset
    helpers.wait_ready(conn, READ)
    conn:abort()
    local data, msg, errno
    helpers.poll_until(function()
      data, msg, errno = client:recv(10)
      return data ~= nil or msg ~= "wouldblock"
    end, nil, "the reset")
    assert.is_nil(data)
    assert.equals(ECONNRESET, errno)
    assert.matches("reset", msg)
  end)
end)

describe("a socket's send", function()
  it("returns the bytes written, 0 for an empty string", function()
    local client, conn = helpers.pair()
    assert.equals(3, client:send("abc"))
    assert.equals(0, client:send(""))
    assert.equals("abc", helpers.read_n(conn, 3))
    close_all(client, conn)
  end)

  it("writes fewer bytes than given, then nil, \"wouldblock\", when the kernel is full", function()
    local client, conn = helpers.tight_pair()
    local data = helpers.payload(4 * MiB)
    local n = assert(client:send(data))
    assert.is_true(n < #data, "the kernel took all 4 MiB at once")
    local err
    helpers.poll_until(function()
      local m, e = client:send(data)
      err = e
      return m == nil
    end, nil, "the kernel buffer to fill")
    assert.equals("wouldblock", err)
    close_all(client, conn)
  end)

  it("returns nil, message, errno once the peer is gone (and SIGPIPE does not kill us)", function()
    local client, conn = helpers.pair()
    conn:abort()
    local ok, msg, errno
    helpers.poll_until(function()
      ok, msg, errno = client:send("x")
      return ok == nil
    end, nil, "send to fail")
    assert.is_true(errno == EPIPE or errno == ECONNRESET, "errno " .. tostring(errno))
    assert.equals("string", type(msg))
    client:close()
  end)

  it("returns nil, \"wouldblock\" while write() has bytes queued, keeping order", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(8 * MiB))
    assert.is_true(conn:write(helpers.payload(2 * MiB)) > 0)
    local n, err = conn:send("overtaking")
    assert.is_nil(n)
    assert.equals("wouldblock", err)
    close_all(client, conn)
  end)
end)

describe("a socket's write", function()
  it("returns 0 when the kernel takes everything at once", function()
    local client, conn = helpers.pair()
    assert.equals(0, conn:write("hello"))
    assert.equals(0, conn:pending())
    assert.equals("hello", helpers.read_n(client, 5))
    close_all(client, conn)
  end)

  it("returns the bytes still pending, and pending() agrees", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(8 * MiB))
    local pending = conn:write(helpers.payload(2 * MiB))
    assert.is_true(pending > 0 and pending <= 2 * MiB, "pending " .. pending)
    assert.equals(pending, conn:pending())
    local more = conn:write("tail")
    assert.equals(pending + 4, more)
    close_all(client, conn)
  end)

  it("delivers every byte, in order, of a write far larger than the socket buffer", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(16 * MiB))
    local data = helpers.payload(6 * MiB, 3)
    assert.is_true(conn:write(data:sub(1, 4 * MiB)) > 0)
    assert.is_true(conn:write(data:sub(4 * MiB + 1)) > 0)
    local got = helpers.read_n(client, #data, 20, "6 MiB")
    assert.equals(#data, #got)
    assert.is_true(got == data, "the bytes arrived changed or out of order")
    helpers.step_until(function()
      return conn:pending() == 0
    end, nil, "pending() to reach 0")
    close_all(client, conn)
  end)

  it("flushes without the socket being registered by the script", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(8 * MiB))
    assert.is_nil(luahost.selector:get_key(conn))
    assert.is_true(conn:write(helpers.payload(2 * MiB)) > 0)
    assert.equals(2 * MiB, #helpers.read_n(client, 2 * MiB))
    assert.is_nil(luahost.selector:get_key(conn), "the host's own interest leaked into the map")
    close_all(client, conn)
  end)

  it("returns nil, \"buffer full\" past the limit and closes the socket", function()
    local client, conn = helpers.tight_pair()
    assert.is_true(conn:setlimit(10000))
    local chunk = helpers.payload(3000)
    local results = {}
    for _ = 1, 10000 do
      local pending, err = conn:write(chunk)
      if pending == nil then
        results.err = err
        break
      end
      assert.is_true(pending <= 10000, "pending went past the limit: " .. pending)
    end
    assert.equals("buffer full", results.err)
    assert.equals(-1, conn:fileno())
    assert.equals("luahost.socket (closed)", tostring(conn))
    assert.error_matches(function()
      conn:write("x")
    end, "attempt to use a closed socket")
    client:close()
  end)

  it("returns nil, message, errno when the peer is gone", function()
    local client, conn = helpers.pair()
    client:abort()
    local ok, msg, errno
    helpers.poll_until(function()
      ok, msg, errno = conn:write("x")
      return ok == nil
    end, nil, "write to fail")
    assert.is_true(errno == EPIPE or errno == ECONNRESET, "errno " .. tostring(errno))
    assert.equals("string", type(msg))
    conn:close()
  end)

  it("withholds the script's READ events while too much output is pending", function()
    local client, conn = helpers.tight_pair()
    finally(function()
      close_all(client, conn)
    end)
    -- reads pause above a quarter of the limit and resume below a sixteenth
    assert(conn:setlimit(MiB))
    local reads = 0
    luahost.selector:register(conn, READ, function(s)
      reads = reads + 1
      s:recv(100)
    end)
    local pending = conn:write(helpers.payload(MiB - 1))
    assert.is_true(pending > MiB // 2, "not enough was buffered to pause: " .. pending)
    assert(client:send("ping"))
    local deadline = luahost.now() + 0.1
    while luahost.now() < deadline do
      luahost.step(0.01)
    end
    assert.equals(0, reads, ("READ was delivered with %d bytes pending"):format(conn:pending()))
    helpers.read_n(client, MiB - 1)
    helpers.step_until(function()
      return reads > 0
    end, nil, "READ once the output drained")
  end)
end)

describe("a socket's setlimit", function()
  it("returns true for a limit in 1..2^32-1 and raises otherwise", function()
    local client, conn = helpers.pair()
    assert.is_true(conn:setlimit(1))
    assert.is_true(conn:setlimit(4294967295))
    for _, bad in ipairs({0, -1, 4294967296}) do
      assert.error_matches(function()
        conn:setlimit(bad)
      end, "limit must be", 1, true)
    end
    close_all(client, conn)
  end)
end)

describe("luahost.write_all", function()
  -- The same sockets as a table keyed by socket, or as a sequence.
  local forms = {
    {name = "keys of a table", make = function(list)
      local set = {plain = true}
      for _, s in ipairs(list) do set[s] = "a client" end
      return set
    end},
    {name = "a sequence", make = function(list)
      local seq = {}
      for i, s in ipairs(list) do seq[i] = s end
      seq[#seq + 1] = "not a socket"
      return seq
    end},
  }
  for _, form in ipairs(forms) do
    it(("writes to every socket (%s) but the one excepted, and skips closed sockets and "
      .. "other values"):format(form.name), function()
      local pairs_ = {}
      for i = 1, 4 do pairs_[i] = {helpers.tight_pair()} end
      local servers = {}
      for i, p in ipairs(pairs_) do servers[i] = p[2] end
      pairs_[4][2]:close()
      local written, failed = luahost.write_all(form.make(servers), "hello\n", pairs_[1][2])
      assert.equal(2, written)
      assert.is_nil(failed)
      assert.equal("hello\n", helpers.read_n(pairs_[2][1], 6))
      assert.equal("hello\n", helpers.read_n(pairs_[3][1], 6))
      assert.same({nil, "wouldblock"}, {pairs_[1][1]:recv()})
      for _, p in ipairs(pairs_) do close_all(p[1], p[2]) end
    end)

    it(("reports the sockets (%s) past their limit as 'buffer full', closed as write "
      .. "closes them"):format(form.name), function()
      local c1, s1 = helpers.tight_pair()
      local c2, s2 = helpers.tight_pair()
      assert(s1:setlimit(1000))
      local big = ("x"):rep(MiB)
      local written, failed = luahost.write_all(form.make({s1, s2}), big)
      assert.equal(1, written)
      assert.same({[s1] = "buffer full"}, failed)
      assert.equal(-1, s1:fileno())
      assert.is_true(s2:pending() > 0)
      close_all(c1, c2, s2)
    end)
  end

  it("raises on a first argument that is not a table", function()
    assert.error_matches(function() luahost.write_all(nil, "x") end, "table expected")
  end)
end)

describe("a socket's on_drain", function()
  it("runs with the socket each time buffered output drains, until removed", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(8 * MiB))
    local calls = {}
    assert.equals(conn, conn:on_drain(function(s)
      calls[#calls + 1] = s
    end))
    assert.is_true(conn:write(helpers.payload(MiB)) > 0)
    assert.equals(0, #calls)
    helpers.read_n(client, MiB)
    helpers.step_until(function()
      return #calls == 1
    end, nil, "on_drain")
    assert.equals(conn, calls[1])
    assert.equals(0, conn:pending())
    assert.is_true(conn:write(helpers.payload(MiB)) > 0)
    helpers.read_n(client, MiB)
    helpers.step_until(function()
      return #calls == 2
    end, nil, "on_drain a second time")
    conn:on_drain(nil)
    assert.is_true(conn:write(helpers.payload(MiB)) > 0)
    helpers.read_n(client, MiB)
    helpers.step_until(function()
      return conn:pending() == 0
    end)
    luahost.step(0)
    assert.equals(2, #calls, "on_drain ran after it was removed")
    close_all(client, conn)
  end)

  it("raises when given something other than a function or nil", function()
    local client, conn = helpers.pair()
    assert.error_matches(function()
      conn:on_drain("later")
    end, "function expected")
    close_all(client, conn)
  end)

  it("a callback that raises does not stop the output or the loop", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(8 * MiB))
    conn:on_drain(function()
      error("drain failed on purpose")
    end)
    assert.is_true(conn:write(helpers.payload(MiB)) > 0)
    assert.equals(MiB, #helpers.read_n(client, MiB))
    helpers.step_until(function()
      return conn:pending() == 0
    end)
    assert.is_true(conn:fileno() >= 0)
    close_all(client, conn)
  end)
end)

describe("a socket's shutdown", function()
  it("shutdown(\"w\") delivers the end of stream after every pending byte", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(8 * MiB))
    local data = helpers.payload(2 * MiB, 5)
    assert.is_true(conn:write(data) > 0)
    assert.is_true(conn:shutdown("w"))
    local got = helpers.read_to_eof(client, 20)
    assert.equals(#data, #got)
    assert.is_true(got == data, "the bytes differ")
    -- the other direction still works
    assert(client:send("back"))
    assert.equals("back", helpers.read_n(conn, 4))
    close_all(client, conn)
  end)

  it("write after shutdown(\"w\") fails with EPIPE, with nothing pending", function()
    local client, conn = helpers.pair()
    assert.is_true(conn:shutdown("w"))
    local ok, msg, errno = conn:write("too late")
    assert.is_nil(ok)
    assert.equals(EPIPE, errno)
    assert.equals("string", type(msg))
    assert.equals("", helpers.read_to_eof(client))
    close_all(client, conn)
  end)

  it("write after shutdown(\"w\") fails with EPIPE while earlier output is pending", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(8 * MiB))
    local data = helpers.payload(2 * MiB, 7)
    assert.is_true(conn:write(data) > 0)
    assert.is_true(conn:shutdown("w"))
    local ok, _, errno = conn:write("too late")
    local got = helpers.read_to_eof(client, 20)
    close_all(client, conn)
    assert.equals(#data, #got, "the peer got bytes written after shutdown(\"w\")")
    assert.is_nil(ok, "write after shutdown(\"w\") was accepted")
    assert.equals(EPIPE, errno)
  end)

  it("shutdown(\"w\") with nothing pending ends the stream at once", function()
    local client, conn = helpers.pair()
    assert.is_true(conn:shutdown("w"))
    assert.equals("", helpers.read_to_eof(client))
    close_all(client, conn)
  end)

  it("shutdown(\"r\") makes recv return \"\"", function()
    local client, conn = helpers.pair()
    assert.is_true(conn:shutdown("r"))
    assert.equals("", conn:recv(10))
    close_all(client, conn)
  end)

  it("shutdown() shuts both directions", function()
    local client, conn = helpers.pair()
    assert.is_true(conn:shutdown())
    assert.equals("", conn:recv(10))
    assert.equals("", helpers.read_to_eof(client))
    close_all(client, conn)
  end)

  it("raises on an unknown direction", function()
    local client, conn = helpers.pair()
    assert.error_matches(function()
      conn:shutdown("x")
    end, "invalid option 'x'", 1, true)
    close_all(client, conn)
  end)
end)

describe("a socket's close and abort", function()
  it("close returns true, leaves fileno -1, and may be called again", function()
    local client, conn = helpers.pair()
    assert.is_true(conn:close())
    assert.equals(-1, conn:fileno())
    assert.equals("luahost.socket (closed)", tostring(conn))
    assert.is_true(conn:close())
    assert.equals(0, conn:pending())
    assert.equals("", helpers.read_to_eof(client))
    client:close()
  end)

  it("close still delivers the output that was pending", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(8 * MiB))
    local data = helpers.payload(2 * MiB, 9)
    assert.is_true(conn:write(data) > 0)
    assert.is_true(conn:close())
    assert.equals(-1, conn:fileno())
    local got = helpers.read_to_eof(client, 20)
    assert.equals(#data, #got)
    assert.is_true(got == data, "the bytes differ")
    client:close()
  end)

  it("abort drops the output that was pending, with a reset the peer sees", function()
    local client, conn = helpers.tight_pair()
    assert(conn:setlimit(8 * MiB))
    assert.is_true(conn:write(helpers.payload(2 * MiB)) > 0)
    local level = luahost.log_level()
    luahost.log_level("error") -- the reset's warning would only clutter busted's output
    assert.is_true(conn:abort())
    luahost.log_level(level)
    assert.equals(-1, conn:fileno())
    local got, ending = 0, nil
    helpers.step_until(function()
      local data, err = client:recv(65536)
      if data == "" or (data == nil and err ~= "wouldblock") then
        ending = err or "end of stream"
        return true
      end
      got = got + (data and #data or 0)
    end, 5, "the end of the stream")
    assert.matches("[Cc]onnection reset", ending)
    assert.is_true(got < 2 * MiB)
    assert.is_true(conn:abort())
    client:close()
  end)

  it("closing a listener removes it from luahost.listeners()", function()
    local server = helpers.listen()
    assert.is_true(in_list(luahost.listeners(), server))
    server:close()
    assert.is_false(in_list(luahost.listeners(), server))
  end)
end)

describe("a socket's addresses", function()
  it("getpeername and getsockname return address and port of both ends", function()
    local server, port = helpers.listen()
    local client = assert(luahost.connect("127.0.0.1", port))
    local conn = helpers.accept(server)
    helpers.wait_ready(client, WRITE)
    local ch, cp = client:getsockname()
    assert.same({"127.0.0.1", port}, {client:getpeername()})
    assert.same({"127.0.0.1", port}, {conn:getsockname()})
    assert.same({ch, cp}, {conn:getpeername()})
    close_all(client, conn, server)
  end)

  it("getpeername returns nil, message, errno on a socket that is not connected", function()
    local server = helpers.listen()
    local ok, msg, errno = server:getpeername()
    assert.is_nil(ok)
    assert.equals(ENOTCONN, errno)
    assert.equals("string", type(msg))
    server:close()
  end)
end)

describe("a socket's setblocking", function()
  it("switches O_NONBLOCK off and on", function()
    local client, conn = helpers.pair()
    assert.is_true(conn:setblocking(true))
    assert.is_false(helpers.fd_nonblocking(conn:fileno()))
    assert(client:send("x"))
    assert.equals("x", conn:recv(1)) -- blocking, but the byte is there
    assert.is_true(conn:setblocking(false))
    assert.is_true(helpers.fd_nonblocking(conn:fileno()))
    assert.equals("wouldblock", select(2, conn:recv(1)))
    close_all(client, conn)
  end)

  it("raises without an argument", function()
    local client, conn = helpers.pair()
    assert.has_error(function()
      conn:setblocking()
    end)
    close_all(client, conn)
  end)
end)

describe("a socket's setsockopt", function()
  local client, conn
  before_each(function()
    client, conn = helpers.pair()
  end)
  after_each(function()
    close_all(client, conn)
  end)

  for _, opt in ipairs({{"reuseaddr", true}, {"reuseport", true}, {"keepalive", true},
                        {"nodelay", true}, {"nodelay", false}, {"rcvbuf", 65536},
                        {"sndbuf", 65536}}) do
    it(("sets %s to %s"):format(opt[1], tostring(opt[2])), function()
      assert.is_true(conn:setsockopt(opt[1], opt[2]))
    end)
  end

  it("raises on an unknown option, naming it", function()
    assert.error_matches(function()
      conn:setsockopt("bogus", true)
    end, "invalid option 'bogus'", 1, true)
  end)

  it("raises on a buffer size that is negative or not a number", function()
    assert.error_matches(function()
      conn:setsockopt("rcvbuf", -1)
    end, "size out of range")
    assert.has_error(function()
      conn:setsockopt("sndbuf", "big")
    end)
  end)

  it("returns nil, message, errno when the kernel refuses", function()
    local unix = luahost.socket("unix", "stream")
    local ok, msg, errno = unix:setsockopt("nodelay", true)
    unix:close()
    assert.is_nil(ok)
    assert.equals("string", type(msg))
    assert.equals("number", type(errno))
  end)
end)

describe("a socket as a Lua value", function()
  it("__tostring shows the fd and the peer", function()
    local client, conn = helpers.pair()
    local host, port = conn:getpeername()
    assert.equals(("luahost.socket (fd %d, %s:%d)"):format(conn:fileno(), host, port),
                  tostring(conn))
    close_all(client, conn)
  end)

  it("is closed at the end of a <close> block, and when the block raises", function()
    local outer
    do
      local s <close> = luahost.socket("inet", "stream")
      outer = s
      assert.is_true(outer:fileno() >= 0)
    end
    assert.equals(-1, outer:fileno())
    local ok = pcall(function()
      local s <close> = luahost.socket("inet", "stream")
      outer = s
      error("leaving")
    end)
    assert.is_false(ok)
    assert.equals(-1, outer:fileno())
  end)

  it("has its fd closed by the garbage collector", function()
    helpers.sleep(0) -- the helpers' own selector, made now rather than during the count
    collectgarbage()
    collectgarbage()
    local before = helpers.fd_count()
    local function make()
      local client, conn = helpers.pair()
      return client:fileno(), conn:fileno()
    end
    local fd1, fd2 = make()
    assert.equals(before + 2, helpers.fd_count())
    collectgarbage()
    collectgarbage()
    assert.is_false(helpers.fd_open(fd1), "fd " .. fd1 .. " is still open")
    assert.is_false(helpers.fd_open(fd2), "fd " .. fd2 .. " is still open")
    assert.equals(before, helpers.fd_count())
  end)

  it("is not collected while registered, and is once unregistered", function()
    local function make()
      local client, conn = helpers.pair()
      client:close()
      luahost.selector:register(conn, READ, function() end)
      return conn:fileno()
    end
    local fd = make()
    collectgarbage()
    collectgarbage()
    assert.is_true(helpers.fd_open(fd), "a registered socket was collected")
    luahost.selector:unregister(fd)
    collectgarbage()
    collectgarbage()
    assert.is_false(helpers.fd_open(fd), "fd " .. fd .. " outlived its socket")
  end)
end)

describe("a closed socket", function()
  local calls = {
    accept = {}, recv = {10}, send = {"x"}, write = {"x"}, setlimit = {10},
    on_drain = {function() end}, shutdown = {"w"}, getpeername = {}, getsockname = {},
    setblocking = {false}, setsockopt = {"nodelay", true}, bind = {"127.0.0.1", 0},
    listen = {}, connect = {"127.0.0.1", 1}, connect_ex = {"127.0.0.1", 1},
  }
  local names = {}
  for name in pairs(calls) do
    names[#names + 1] = name
  end
  table.sort(names)

  for _, name in ipairs(names) do
    it("raises \"attempt to use a closed socket\" from " .. name, function()
      local s = luahost.socket("inet", "stream")
      s:close()
      assert.error_matches(function()
        s[name](s, table.unpack(calls[name]))
      end, "attempt to use a closed socket", 1, true)
    end)
  end

  it("still answers fileno (-1), pending (0), close, abort and tostring", function()
    local s = luahost.socket("inet", "stream")
    s:close()
    assert.equals(-1, s:fileno())
    assert.equals(0, s:pending())
    assert.is_true(s:close())
    assert.is_true(s:abort())
    assert.equals("luahost.socket (closed)", tostring(s))
  end)
end)

describe("luahost.listeners", function()
  it("returns a fresh list of the listening sockets", function()
    local a = helpers.listen()
    local b = helpers.listen()
    local list = luahost.listeners()
    assert.is_true(in_list(list, a) and in_list(list, b))
    assert.equals(2, #list)
    list[1] = nil
    assert.equals(2, #luahost.listeners())
    a:close()
    assert.same({b}, luahost.listeners())
    b:close()
    assert.same({}, luahost.listeners())
  end)
end)

describe("when the socket specs are done", function()
  it("nothing is left registered, listening or flushing", function()
    assert.is_true(helpers.host_is_idle(), table.concat(helpers.registered(), ", "))
    assert.is_nil(next(luahost.selector:get_map()))
    assert.is_nil(next(luahost.listeners()))
  end)
end)
