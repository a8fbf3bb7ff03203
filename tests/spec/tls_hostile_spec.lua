-- tls_hostile_spec.lua: what a TLS server must survive (issue 13), each with a real
-- client: plaintext and garbage on the TLS port, clients that stop mid-handshake or say
-- nothing, 1,000 handshakes at once, a client that expects another name, an expired
-- certificate, a peer that ends without close_notify, a record sent a byte at a time,
-- 10 MB to a slow reader, and a TLS 1.2 renegotiation. After each, the server still
-- serves a well-behaved client.
local T = require "luahost.test"

local tls = require "support.tls"
local SERVER, python, assert_exit0 = tls.SERVER, tls.python, tls.assert_exit0
local ECHO = "tests/support/tls_echo.lua"

-- The spawned TLS echo server, with a handshake timeout of timeout seconds (default 10).
local function spawn(timeout)
  return T.spawn(ECHO, {"127.0.0.1:0", SERVER.cert, SERVER.key, tostring(timeout or 10)},
    {log_level = "debug", timeout = 30}) -- room for memcheck (tests/valgrind/run.sh)
end

local function assert_still_serves(p)
  assert_exit0(python("echo", p, 2, 4096), p)
end

describe("a TLS port", function()
  it("hangs up on plaintext and on garbage, logging why at debug", function()
    local p = spawn()
    assert_exit0(python("plaintext", p), p)
    p:wait_log("debug 127%.0%.0%.1:%d+: TLS handshake failed: http request")
    assert_exit0(python("garbage", p, 4096), p)
    p:wait_log("debug 127%.0%.0%.1:%d+: TLS handshake failed: ", 3, 2)
    assert.is_nil(p:stderr():find("Z error ", 1, true), p:stderr()) -- nothing at level error
    assert_still_serves(p)
    T.assert_graceful_stop(p)
  end)

  it("ends a handshake that stalls, or never starts, at its timeout", function()
    local p = spawn(0.3)
    -- Each client fails unless the server hangs up within its 10 s socket timeout.
    assert_exit0(python("stall", p), p)
    assert_exit0(python("silent", p), p)
    p:wait_log("TLS handshake timed out after 0%.3 s")
    assert_still_serves(p)
    T.assert_graceful_stop(p)
  end)

  it("completes 1,000 concurrent handshakes", function()
    local p = spawn()
    assert_exit0(python("handshakes", p, 1000), p)
    assert_still_serves(p)
    T.assert_graceful_stop(p)
  end)

  it("is refused by a verifying client that expects another name, unharmed", function()
    local p = spawn()
    local r = python("wrongname", p, "other.example")
    assert_exit0(r, p)
    assert.matches("not valid for 'other.example'", r.stdout, 1, true)
    assert_still_serves(p)
    T.assert_graceful_stop(p)
  end)

  it("takes a record sent in a thousand 1-byte writes", function()
    local p = spawn()
    assert_exit0(python("split", p, 1000), p)
    T.assert_graceful_stop(p)
  end)

  it("tells the script of a peer that ends without close_notify as an error", function()
    local p = spawn()
    assert_exit0(python("truncate", p), p)
    p:wait_log("end: error TLS: the peer closed the connection without close_notify")
    assert_exit0(python("clean", p), p) -- close_notify, then the end: a clean one
    p:wait_log("end: eof")
    T.assert_graceful_stop(p)
  end)

  it("echoes on across a TLS 1.3 key update that asks to be answered", function()
    local p = spawn()
    local out = T.tempfile("", "s_client.out")
    -- Each step waits (up to 10 s) for the one before to show in s_client's output.
    local r = T.run_command({"sh", "-c", string.format(
      "w() { for i in $(seq 100); do grep -q \"$1\" %s && return; sleep 0.1; done; }; "
      .. "(printf 'before\\n'; w before; printf 'K\\n'; w KEYUPDATE; printf 'after\\n'; "
      .. "w after) | openssl s_client -connect 127.0.0.1:%d -CAfile %s -tls1_3 -no_ign_eof "
      .. ">%s 2>&1; cat %s", out, p.port, SERVER.cert, out, out)},
      {env = {LD_PRELOAD = false}, timeout = 40})
    assert.matches("KEYUPDATE\nafter\n", r.stdout)
    T.assert_graceful_stop(p)
  end)

  it("refuses a TLS 1.2 renegotiation", function()
    local p = spawn()
    local out = T.tempfile("", "s_client.out")
    local r = T.run_command({"sh", "-c", string.format(
      "w() { for i in $(seq 100); do grep -q \"$1\" %s && return; sleep 0.1; done; }; "
      .. "(printf 'R\\n'; w 'no renegotiation'; printf 'after\\n'; sleep 0.2) | openssl "
      .. "s_client -connect 127.0.0.1:%d -CAfile %s -tls1_2 -no_ign_eof >%s 2>&1; cat %s",
      out, p.port, SERVER.cert, out, out)}, {env = {LD_PRELOAD = false}, timeout = 40})
    assert.matches("RENEGOTIATING", r.stdout, 1, true)
    assert.matches("no renegotiation", r.stdout, 1, true)
    assert.is_nil(r.stdout:find("\nafter", 1, true))
    assert_still_serves(p)
    T.assert_graceful_stop(p)
  end)
end)

describe("a TLS client", function()
  it("fails to connect to a server with an expired certificate, saying so", function()
    local expired = T.tls_cert{expired = true}
    local srv = T.start(ECHO, {"127.0.0.1:0", expired.cert, expired.key}, {log_level = "debug"})
    local c = T.client(srv, {tls = {ca = expired.cert}, handshake = false})
    local ok, err = c:handshake()
    assert.is_nil(ok)
    assert.equal("TLS handshake with the server failed: certificate verify failed: "
      .. "certificate has expired", err)
    srv:run_until(function() return srv:log():find("certificate expired", 1, true) end)
    c:close()
    srv:stop()
    T.assert_clean(srv)
  end)
end)

describe("TLS backpressure", function()
  it("moves 10 MB through a slow reader byte-exact within the output limit", function()
    local srv = T.start(ECHO, {"127.0.0.1:0", SERVER.cert, SERVER.key})
    local c = T.client(srv, {tls = {ca = SERVER.cert}, rcvbuf = 65536})
    math.randomseed(13)
    local data = T.random_bytes(10 * 1024 * 1024)
    local sent, got, deadline = 0, {}, os.time() + 30
    local received = 0
    while received < #data do
      assert(os.time() < deadline, "10 MB did not come back within 30 s")
      if sent < #data then
        local n, err = c.sock:send(data:sub(sent + 1, sent + 65536))
        assert(n or err == "wouldblock", err)
        sent = sent + (n or 0)
      end
      local chunk, err = c.sock:recv(16384) -- a slow reader: a little at a time
      assert(chunk ~= "" and (chunk or err == "wouldblock"), err)
      if chunk then
        got[#got + 1] = chunk
        received = received + #chunk
      end
      srv:step(0)
    end
    assert.is_true(table.concat(got) == data, "the 10 MB came back changed")
    local seen = srv.env.SEEN
    assert.is_true(seen.largest_pending <= 1024 * 1024, tostring(seen.largest_pending))
    assert.same({}, seen.ends) -- not reset for a full buffer
    c:close()
    srv:stop()
    T.assert_clean(srv)
  end)
end)
