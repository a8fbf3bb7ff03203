-- tls_spec.lua: TLS (issue 13) as scripts use it: echo and chat over TLS, with clients
-- nobody here wrote (Python's ssl module, openssl s_client) and the kit's own;
-- tls_info, ALPN, SNI, client certificates, STARTTLS, and certificates that reload
-- with the script. The certificates are made by `openssl` when the spec runs.
local T = require "luahost.test"
local luahost = require "luahost"

local tls = require "support.tls"
local SERVER, python, assert_exit0 = tls.SERVER, tls.python, tls.assert_exit0

local function spawn_echo(extra)
  local args = {"127.0.0.1:0", "--tls-cert", SERVER.cert, "--tls-key", SERVER.key}
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  -- Generous timeouts: tests/valgrind/run.sh runs these servers under memcheck.
  return T.spawn("scripts/echo.lua", args, {log_level = "debug", timeout = 30})
end

describe("echo over TLS", function()
  it("echoes 256 KB byte-exact for each of 50 concurrent Python ssl clients", function()
    local p = spawn_echo()
    assert_exit0(python("echo", p, 50, 262144), p)
    T.assert_graceful_stop(p)
  end)

  it("echoes a line to openssl s_client, which verifies the certificate", function()
    local p = spawn_echo()
    -- stdin stays open until the echo is in s_client's output (at most 10 s), so a slow
    -- server (under valgrind) is waited for and a fast one is not.
    local out = T.tempfile("", "s_client.out")
    local r = T.run_command({"sh", "-c", string.format(
      "(printf 'hello over tls\\n'; for i in $(seq 100); do grep -q 'hello over tls' %s && "
      .. "break; sleep 0.1; done) | openssl s_client -connect 127.0.0.1:%d -CAfile %s "
      .. "-verify_return_error -servername localhost -quiet -no_ign_eof >%s 2>&1; cat %s",
      out, p.port, SERVER.cert, out, out)}, {env = {LD_PRELOAD = false}, timeout = 20})
    assert.matches("hello over tls", r.stdout, 1, true)
    assert.matches("verify return:1", r.stdout, 1, true)
    T.assert_graceful_stop(p)
  end)

  it("serves scripts/client.lua --tls, which verifies the server against --ca", function()
    local p = spawn_echo()
    local address = "127.0.0.1:" .. p.port
    local r = T.run({"scripts/client.lua", address, "20", "3", "--tls", "--ca", SERVER.cert},
      {timeout = 60})
    assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
    assert.matches("20 connections, %d+ bytes sent, %d+ received, 0 failed", r.stdout)
    local refused = T.run({"scripts/client.lua", address, "1", "1", "--tls"}, -- system CAs
      {timeout = 60})
    assert.same({"exit", 1}, {refused.how, refused.code}, tostring(refused))
    assert.matches("certificate verify failed: self%-signed certificate", refused.stderr)
    T.assert_graceful_stop(p)
  end)

  -- luahost.task's C receive path reads plain sockets only: a stream over TLS must take
  -- task.lua's path, through s:recv, or it would read records as data.
  it("echoes byte-exact through luahost.task streams over TLS", function()
    local script = T.tempfile(string.format([[
local luahost = require "luahost"
local task = require "luahost.task"
local ctx = assert(luahost.tls_context{cert = %q, key = %q})
local server = task.wrap(assert(luahost.listen("127.0.0.1", 0, {tls = ctx})))
task.spawn(function()
  while true do
    local client = server:accept()
    if client then
      task.spawn(function()
        while true do
          local data = client:receiveany()
          if not data then return end
          client:send(data)
        end
      end)
    end
  end
end)
]], SERVER.cert, SERVER.key))
    local p = T.spawn(script, {}, {env = {LUA_PATH_5_4 = package.path}, timeout = 30})
    assert_exit0(python("echo", p, 20, 65536), p)
    T.assert_graceful_stop(p)
  end)

  it("serves the kit's TLS clients in process, and says what was negotiated", function()
    local srv = T.start("tests/support/tls_echo.lua", {"127.0.0.1:0", SERVER.cert, SERVER.key})
    local c = T.client(srv, {tls = {ca = SERVER.cert, alpn = {"h2", "echo/1"}}})
    c:send("ping\n")
    assert.equal("ping", c:line())
    local mine = c.sock:tls_info()
    assert.equal("TLSv1.3", mine.version)
    assert.equal("echo/1", mine.alpn)
    assert.is_true(mine.verified)
    assert.equal("/CN=localhost", mine.subject)
    local _, theirs = next(srv.env.SEEN.infos)
    assert.same({version = "TLSv1.3", cipher = mine.cipher, alpn = "echo/1", verified = false},
      theirs) -- no client certificate, and an address is sent as no SNI
    c:close()
    srv:stop()
    T.assert_clean(srv)
  end)
end)

-- A server with two names on one listener, wanting client certificates.
local SNI_MTLS = [[
local luahost = require "luahost"
local sel = luahost.selector
local a, b, client = ...
local tls = assert(luahost.tls_context{cert = a .. ".pem", key = a .. ".key",
  servers = {["b.test"] = {cert = b .. ".pem", key = b .. ".key"}},
  ca = client .. ".pem", verify = true})
INFOS = {}
local server = assert(luahost.listen("127.0.0.1", 0, {tls = tls}))
sel:register(server, luahost.EVENT_READ, function()
  local conn = server:accept()
  if not conn then return end
  sel:register(conn, luahost.EVENT_READ, function()
    local data = conn:recv(100)
    if data and data ~= "" then
      INFOS[#INFOS + 1] = conn:tls_info()
      conn:write(data)
    elseif data == "" or (data == nil) then
      sel:unregister(conn)
      conn:close()
    end
  end)
end)
]]

describe("SNI and client certificates", function()
  local function base(cert) return (cert.cert:gsub("%.pem$", "")) end

  it("picks the certificate by server name, and verifies the client's", function()
    local a, b = T.tls_cert{name = "a.test"}, T.tls_cert{name = "b.test"}
    local client = T.tls_cert{name = "client.test"}
    local srv = T.start(T.tempfile(SNI_MTLS), {base(a), base(b), base(client)})
    local to_b = T.client(srv, {tls = {ca = b.cert, servername = "b.test", cert = client.cert,
      key = client.key}})
    to_b:send("x\n")
    assert.equal("x", to_b:line())
    assert.equal("/CN=b.test", to_b.sock:tls_info().subject)
    local to_a = T.client(srv, {tls = {ca = a.cert, servername = "a.test", cert = client.cert,
      key = client.key}})
    to_a:send("y\n")
    assert.equal("y", to_a:line())
    assert.equal("/CN=a.test", to_a.sock:tls_info().subject)
    local seen = srv.env.INFOS
    assert.equal("b.test", seen[1].servername)
    assert.equal("/CN=client.test", seen[1].subject)
    assert.is_true(seen[1].verified)
    -- No client certificate: refused by the server, which goes on serving.
    local anonymous = T.client(srv, {tls = {ca = a.cert, servername = "a.test"},
      handshake = false})
    local ok = anonymous:handshake()
    if ok then -- TLS 1.3: the client learns of the refusal on its first read
      anonymous:send("z\n")
      assert.is_true(anonymous:closed())
      assert.is_nil(anonymous:buffered():find("z", 1, true))
    end
    to_a:send("again\n")
    assert.equal("again", to_a:line())
    srv:stop()
    T.assert_clean(srv)
  end)
end)

describe("chat over TLS", function()
  it("runs on the sim backend too, its idle timeout on the virtual clock", function()
    local srv = T.start("scripts/chat.lua", {"127.0.0.1:0", "--tls-cert", SERVER.cert,
      "--tls-key", SERVER.key, "--idle-timeout", "10"}, {selector = "sim"})
    local ann = T.client(srv, {tls = {ca = SERVER.cert}})
    assert.same({type = "welcome", name = "guest-1"}, ann:json())
    local bob = T.client(srv, {tls = {ca = SERVER.cert}})
    assert.same({type = "welcome", name = "guest-2"}, bob:json())
    assert.same({type = "join", name = "guest-2"}, ann:json())
    ann:send("over the socketpair\n")
    assert.same({type = "say", from = "guest-1", text = "over the socketpair"}, bob:json())
    assert.equal("TLSv1.3", bob.sock:tls_info().version)
    T.advance(11)
    assert.is_true(ann:closed() and bob:closed())
    assert.matches("idle timeout", ann:received())
    srv:stop()
    T.assert_clean(srv)
  end)

  it("relays a message between two TLS clients", function()
    local srv = T.start("scripts/chat.lua",
      {"127.0.0.1:0", "--tls-cert", SERVER.cert, "--tls-key", SERVER.key})
    local ann = T.client(srv, {tls = {ca = SERVER.cert}})
    assert.same({type = "welcome", name = "guest-1"}, ann:json())
    local bob = T.client(srv, {tls = {ca = SERVER.cert}})
    assert.same({type = "welcome", name = "guest-2"}, bob:json())
    assert.same({type = "join", name = "guest-2"}, ann:json())
    ann:send("hello over tls\n")
    assert.same({type = "say", from = "guest-1", text = "hello over tls"}, bob:json())
    ann:close()
    bob:close()
    srv:stop()
    T.assert_clean(srv)
  end)
end)

local STARTTLS = [[
local luahost = require "luahost"
local sel = luahost.selector
local tls = assert(luahost.tls_context{cert = arg[1], key = arg[2]})
local server = assert(luahost.listen("127.0.0.1", 0))
sel:register(server, luahost.EVENT_READ, function()
  local conn = server:accept()
  if not conn then return end
  sel:register(conn, luahost.EVENT_READ, function()
    local data = conn:recv(100)
    if data == "STARTTLS\n" and not conn:tls_info() then
      conn:write("GO\n")
      conn:starttls(tls)
    elseif data and data ~= "" then
      conn:write((conn:tls_info() and "tls:" or "plain:") .. data)
    elseif data == "" or data == nil then
      sel:unregister(conn)
      conn:close()
    end
  end)
end)
]]

describe("starttls", function()
  it("upgrades a plain connection on both sides", function()
    local srv = T.start(T.tempfile(STARTTLS), {SERVER.cert, SERVER.key})
    local c = T.client(srv)
    c:send("before\n")
    assert.equal("plain:before", c:line())
    c:send("STARTTLS\n")
    assert.equal("GO", c:line())
    assert.is_true(c.sock:starttls({ca = SERVER.cert}))
    assert.is_true(c:handshake())
    c:send("after\n")
    assert.equal("tls:after", c:line())
    c:close()
    srv:stop()
    T.assert_clean(srv)
  end)
end)

-- Serves with the certificate whose base name is in the file next to the script, so a
-- test can change it and reload.
local RELOADING = [[
local luahost = require "luahost"
local dir = arg[1]
local f = assert(io.open(dir .. "/which"))
local base = f:read("l")
f:close()
local tls = assert(luahost.tls_context{cert = base .. ".pem", key = base .. ".key"})
local server = assert(luahost.listen("127.0.0.1", tonumber(arg[2]), {tls = tls}))
local fail = io.open(dir .. "/fail")
if fail then
  fail:close()
  error("failing after listen")
end
luahost.selector:register(server, luahost.EVENT_READ, function()
  local conn = server:accept()
  if not conn then return end
  luahost.selector:register(conn, luahost.EVENT_READ, function()
    local data = conn:recv(100)
    if data and data ~= "" then conn:write(data) else
      luahost.selector:unregister(conn)
      conn:close()
    end
  end)
end)
]]

describe("certificates and reload", function()
  it("gives new connections the new certificate, keeps the old for open ones, and "
    .. "refuses a reload whose certificate is bad", function()
    local one, two = T.tls_cert{name = "one.test"}, T.tls_cert{name = "two.test"}
    local script = T.tempfile(RELOADING, "server.lua")
    local dir = script:match("^(.*)/")
    local function use(text)
      local f = assert(io.open(dir .. "/which", "w"))
      f:write(text, "\n")
      f:close()
    end
    use((one.cert:gsub("%.pem$", "")))
    local srv = T.start(script, {dir, tostring(T.free_port())})
    local function client(cert, name)
      local c = T.client(srv, {tls = {ca = cert.cert, servername = name}})
      c:send(name .. "\n")
      assert.equal(name, c:line())
      return c
    end
    local old = client(one, "one.test")
    use((two.cert:gsub("%.pem$", "")))
    assert(srv:reload())
    local new = client(two, "two.test")
    assert.equal("/CN=two.test", new.sock:tls_info().subject)
    old:send("still\n")
    assert.equal("still", old:line())
    assert.equal("/CN=one.test", old.sock:tls_info().subject)
    local bad = T.tempfile("not a certificate\n", "bad.pem")
    local f = assert(io.open(dir .. "/bad.key", "w"))
    f:write("not a key\n")
    f:close()
    use((bad:gsub("%.pem$", "")))
    local ok, err = srv:reload()
    assert.is_nil(ok)
    assert.matches("cannot load certificate", err)
    local after = client(two, "two.test")
    assert.equal("/CN=two.test", after.sock:tls_info().subject)
    -- A good certificate, but the chunk fails after listen took it: the reload is
    -- refused, and the listener keeps the certificate it had.
    use((one.cert:gsub("%.pem$", "")))
    assert(io.open(dir .. "/fail", "w")):close()
    ok, err = srv:reload()
    assert.is_nil(ok)
    assert.matches("failing after listen", err)
    local still = client(two, "two.test")
    assert.equal("/CN=two.test", still.sock:tls_info().subject)
    for _, c in ipairs({old, new, after, still}) do c:close() end
    srv:stop()
    T.assert_clean(srv)
  end)
end)

-- Writes 512 KB as it accepts (before the handshake is done) and counts its drains.
local DRAINING = [[
local luahost = require "luahost"
local sel = luahost.selector
local tls = assert(luahost.tls_context{cert = arg[1], key = arg[2]})
DRAINS = 0
local server = assert(luahost.listen("127.0.0.1", 0, {tls = tls}))
sel:register(server, luahost.EVENT_READ, function()
  local conn = server:accept()
  if not conn then return end
  conn:on_drain(function() DRAINS = DRAINS + 1 end)
  assert(conn:setsockopt("sndbuf", 16384)) -- so that most of it waits in the host
  BUFFERED = conn:write(string.rep("d", 512 * 1024)) -- all of it: the handshake runs
  sel:register(conn, luahost.EVENT_READ, function()
    local data = conn:recv(100)
    if data and data ~= "" then
      conn:write(data)
    elseif data == "" then
      sel:unregister(conn)
      conn:close()
    end
  end)
end)
]]

describe("buffered output over TLS", function()
  it("sends what was written during the handshake, then runs on_drain", function()
    local srv = T.start(T.tempfile(DRAINING), {SERVER.cert, SERVER.key})
    local c = T.client(srv, {tls = {ca = SERVER.cert}, rcvbuf = 16384})
    c:send("ping\n") -- read by the server while its output is still queued
    assert.equal(string.rep("d", 512 * 1024), c:read(512 * 1024, 10))
    assert.equal("ping", c:line())
    srv:run_until(function() return srv.env.DRAINS > 0 end, 5, "on_drain ran")
    assert.is_true(srv.env.BUFFERED > 0)
    c:close()
    srv:stop()
    T.assert_clean(srv)
  end)
end)

-- Registers each connection for reading only 0.2 s after accepting it.
local LATE = [[
local luahost = require "luahost"
local sel = luahost.selector
local tls = assert(luahost.tls_context{cert = arg[1], key = arg[2]})
local server = assert(luahost.listen("127.0.0.1", 0, {tls = tls}))
sel:register(server, luahost.EVENT_READ, function()
  local conn = server:accept()
  if not conn then return end
  luahost.after(0.2, function()
    sel:register(conn, luahost.EVENT_READ, function()
      local data = conn:recv(100)
      if data and data ~= "" then conn:write(data) end
    end)
  end)
end)
]]

describe("a TLS socket registered late", function()
  it("is told of a request that came with the handshake's last flight", function()
    local srv = T.start(T.tempfile(LATE), {SERVER.cert, SERVER.key})
    local c = T.client(srv, {tls = {ca = SERVER.cert}})
    c:send("late\n") -- read by the host with the client's Finished, before the register
    assert.equal("late", c:line(3))
    c:close()
    srv:stop()
    T.assert_clean(srv)
  end)
end)

describe("session resumption", function()
  -- Tickets cost every full handshake (~170,000 instructions each, findings.md), and a
  -- client resumes only at the process (and context) that made them: off unless asked.
  it("is off by default: a client offering its last session gets a full handshake", function()
    local p = spawn_echo()
    assert_exit0(python("resume", p, "full"), p)
    T.assert_graceful_stop(p)
  end)

  it("resumes a client's session with tickets = 1", function()
    local script = T.tempfile([[
      local luahost = require "luahost"
      local tls = assert(luahost.tls_context{cert = arg[2], key = arg[3], tickets = 1})
      local server = assert(luahost.listen("127.0.0.1", 0, {tls = tls}))
      luahost.selector:register(server, luahost.EVENT_READ, function(listener)
        local conn = listener:accept()
        if not conn then return end
        luahost.selector:register(conn, luahost.EVENT_READ, function(c)
          local data, err = c:recv(65536)
          if data and data ~= "" then c:write(data)
          elseif data == "" or err ~= "wouldblock" then c:close() end
        end)
      end)
    ]], "resuming_echo.lua")
    local p = T.spawn(script, {"-", SERVER.cert, SERVER.key}, {log_level = "debug"})
    assert_exit0(python("resume", p, "resumed"), p)
    T.assert_graceful_stop(p)
  end)
end)

describe("luahost.tls_context", function()
  it("returns nil and why for a missing file, and raises on a misused option", function()
    local ctx, err = luahost.tls_context{cert = "/nonexistent.pem", key = "/nonexistent.key"}
    assert.is_nil(ctx)
    assert.matches("cannot load certificate /nonexistent.pem", err, 1, true)
    assert.has_error(function() luahost.tls_context{cert = 1} end)
    assert.has_error(function() luahost.tls_context{min_version = "1.0"} end)
    assert.has_error(function() luahost.tls_context{tickets = -1} end)
    assert.has_error(function() luahost.listen("127.0.0.1", 0, {tls = {}}) end,
      "bad argument #3 to 'listen' (a TLS listener needs a certificate (cert and key))")
  end)
end)
