-- seeds_spec.lua: the clients of the Python `selectors` tutorials, written anew in
-- tests/e2e/, against scripts/echo.lua on every backend: a plain blocking socket client,
-- and the multi-connection selectors client that shuts down its write side and reads
-- until everything came back. Each client exits 0 only if every byte came back.
local T = require "luahost.test"

local BACKENDS = {"epoll", "poll", "select"}
local ECHO = "scripts/echo.lua"
local BLOCKING = "tests/e2e/blocking_client.py"
local MULTICONN = "tests/e2e/multiconn_client.py"

-- Runs a Python client to completion (bounded). The sanitizer runtime that a sanitized
-- build preloads is meant for luahost, not for python3, so it is left out here.
local function python(script, ...)
  local argv = {"python3", script}
  for _, a in ipairs({...}) do argv[#argv + 1] = tostring(a) end
  return T.run_command(argv, {env = {LD_PRELOAD = false}, timeout = 30})
end

local function assert_passed(r, server)
  assert.is_false(r.timed_out, "the client did not finish\n" .. tostring(r))
  assert.same({"exit", 0}, {r.how, r.code}, tostring(r) .. "\nserver log:\n" .. server:stderr())
end

-- An echo server that gets every chunk slightly wrong: the first byte flipped.
local CORRUPTING_ECHO = [[
local luahost = require "luahost"
local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 0))
local function on_read(conn)
  local data = conn:recv(65536)
  if data == "" or (data == nil) then
    conn:close()
  elseif data then
    conn:write(string.char(data:byte(1) ~ 1) .. data:sub(2))
  end
end
luahost.selector:register(assert(luahost.listen(host, port)), luahost.EVENT_READ,
  function(server)
    local conn = server:accept()
    if conn then luahost.selector:register(conn, luahost.EVENT_READ, on_read) end
  end)
]]

describe("the Python tutorials' clients against echo.lua", function()
  for _, backend in ipairs(BACKENDS) do
    describe("with --selector " .. backend, function()
      it("the blocking socket client gets back exactly the bytes it sent", function()
        local server = T.spawn(ECHO, nil, {selector = backend})
        local r = python(BLOCKING, "127.0.0.1", server.port, "Hello, world",
          "and a second message", "--random", 200000)
        assert_passed(r, server)
        assert.matches("received 200032 bytes back", r.stdout, 1, true)
        T.assert_graceful_stop(server)
      end)

      it("the selectors multi-connection client gets every byte back on every connection, "
        .. "then EOF", function()
        local server = T.spawn(ECHO, nil, {selector = backend})
        local r = python(MULTICONN, "127.0.0.1", server.port, 20,
          "Message 1 from client.", "Message 2 from client.", "--random", 100000)
        assert_passed(r, server)
        assert.matches("20 of 20 connections echoed", r.stdout, 1, true)
        T.assert_graceful_stop(server)
      end)
    end)
  end

  -- The controls: each client must notice a server that does not echo faithfully, or
  -- the tests above could pass against anything.
  describe("against a server that corrupts the echo", function()
    it("the blocking client exits non-zero", function()
      local server = T.spawn(T.tempfile(CORRUPTING_ECHO))
      local r = python(BLOCKING, "127.0.0.1", server.port, "Hello, world")
      assert.is_false(r.timed_out, tostring(r))
      assert.same({"exit", 1}, {r.how, r.code}, tostring(r))
      assert.matches("contents differ", r.stderr, 1, true)
    end)

    it("the multi-connection client exits non-zero", function()
      local server = T.spawn(T.tempfile(CORRUPTING_ECHO))
      local r = python(MULTICONN, "127.0.0.1", server.port, 3)
      assert.is_false(r.timed_out, tostring(r))
      assert.same({"exit", 1}, {r.how, r.code}, tostring(r))
      assert.matches("connection 1:", r.stderr, 1, true)
    end)
  end)
end)
