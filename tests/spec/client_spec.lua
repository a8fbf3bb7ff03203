-- client_spec.lua: scripts/client.lua, the multi-connection client, run by the real
-- luahost executable against echo.lua, against nothing and against servers that fail it:
-- its exit status and its one-line summary tell the truth, and it never hangs.
local luahost = require "luahost"
local process = require "support.process"

local CLIENT = "scripts/client.lua"
local USAGE = "usage: luahost scripts/client.lua [HOST:]PORT [CONNECTIONS] [MESSAGES]"
local RUN_TIMEOUT = 10 -- seconds any one client run may take before it is killed

-- The bytes client.lua sends (and expects back) for nconns connections of nmessages.
local function expected_bytes(nconns, nmessages)
  local total = 0
  for id = 1, nconns do
    for i = 1, nmessages do
      total = total + #string.format("Message %d from connection %d.\n", i, id)
    end
  end
  return total
end

-- A 127.0.0.1 port that nothing listens on: one the kernel gave a socket just closed.
local function free_port()
  local s = assert(luahost.socket("inet", "stream"))
  assert(s:bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

local function run_client(args, timeout)
  local argv = {CLIENT}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = process.run_luahost(argv, timeout or RUN_TIMEOUT)
  assert(not r.timed_out, string.format(
    "client.lua %s ran past %g s and was killed; stdout: %q stderr: %q",
    table.concat(args, " "), timeout or RUN_TIMEOUT, r.stdout, r.stderr))
  return r
end

-- The numbers of the summary line, which must be all of stdout.
local function summary(r)
  local n, sent, received, failed = r.stdout:match(
    "^(%d+) connections, (%d+) bytes sent, (%d+) received, (%d+) failed\n$")
  assert(n, "no summary line on stdout: " .. string.format("%q", r.stdout)
    .. "\nstderr: " .. r.stderr)
  return tonumber(n), tonumber(sent), tonumber(received), tonumber(failed)
end

local function describe_run(r)
  return string.format("%s %s; stdout: %s; stderr: %s", r.how, r.code, r.stdout, r.stderr)
end

-- A server script: accepts, and treats each connection with handle(conn, data).
local function server_script(body)
  return [[
    local luahost = require "luahost"
    local sel = luahost.selector
    local server = assert(luahost.listen("127.0.0.1", 0))
    local function on_read(conn)
      local data, err = conn:recv(65536)
      if data == nil then
        if err ~= "wouldblock" then conn:abort() end
      elseif data == "" then
        conn:close()
      else
        ]] .. body .. [[
      end
    end
    sel:register(server, luahost.EVENT_READ, function(listener)
      local conn = listener:accept()
      if conn then sel:register(conn, luahost.EVENT_READ, on_read) end
    end)
  ]]
end

describe("client.lua under the luahost executable", function()
  after_each(function()
    process.stop_all()
    assert.equal(0, process.live_count(), "a child process outlived its test")
  end)

  describe("against echo.lua", function()
    it("runs 20 connections of 5 messages, gets every byte back and exits 0", function()
      local echo = process.start("scripts/echo.lua")
      local r = run_client({"127.0.0.1:" .. echo.port, "20", "5"})
      assert.same({"exit", 0}, {r.how, r.code}, describe_run(r))
      local n, sent, received, failed = summary(r)
      assert.same({20, 0}, {n, failed})
      assert.equal(expected_bytes(20, 5), sent)
      assert.equal(sent, received)
      assert.equal("", r.stderr)
      assert.is_nil(echo:stderr():match("[^\n]* error [^\n]*"), echo:stderr())
    end)

    it("defaults to 2 connections of 2 messages", function()
      local echo = process.start("scripts/echo.lua")
      local r = run_client({"127.0.0.1:" .. echo.port})
      assert.same({"exit", 0}, {r.how, r.code}, describe_run(r))
      local n, sent, received, failed = summary(r)
      assert.same({2, expected_bytes(2, 2), expected_bytes(2, 2), 0},
        {n, sent, received, failed})
    end)

    it("with 0 messages finishes at once: succeeds, or refuses the count as bad usage",
      function()
        -- Nothing is sent, so there is nothing to wait for; the 30 s timeout must not be
        -- what ends the run.
        local echo = process.start("scripts/echo.lua")
        local r = run_client({"127.0.0.1:" .. echo.port, "1", "0"}, 5)
        if r.code == 0 then
          assert.same({1, 0, 0, 0}, {summary(r)})
        else
          assert.same({"exit", 1}, {r.how, r.code}, describe_run(r))
          assert.matches(USAGE, r.stderr, 1, true)
        end
      end)
  end)

  describe("when it cannot succeed", function()
    it("exits non-zero with a failure summary against a port nothing listens on", function()
      local port = free_port()
      local r = run_client({"127.0.0.1:" .. port, "3", "2"}, 5)
      assert.same({"exit", 1}, {r.how, r.code}, describe_run(r))
      assert.same({3, 0, 0, 3}, {summary(r)})
      for id = 1, 3 do
        assert.matches("connection " .. id .. ": [^\n]*[Rr]efused", r.stderr)
      end
      assert.matches("3 connections, 0 bytes sent, 0 received, 3 failed", r.stderr, 1, true)
    end)

    it("counts a connection the server closes without answering as failed", function()
      local script = process.temp_file(server_script("conn:abort()"), ".lua")
      local server = process.start(script)
      local r = run_client({"127.0.0.1:" .. server.port, "2", "3"})
      assert.same({"exit", 1}, {r.how, r.code}, describe_run(r))
      local n, _, received, failed = summary(r)
      assert.same({2, 0, 2}, {n, received, failed})
      assert.matches("connection 1: ", r.stderr, 1, true)
      assert.matches("connection 2: ", r.stderr, 1, true)
    end)

    it("counts a connection whose echo comes back changed as failed", function()
      local script = process.temp_file(server_script("conn:write(data:upper())"), ".lua")
      local server = process.start(script)
      local r = run_client({"127.0.0.1:" .. server.port, "2", "3"})
      assert.same({"exit", 1}, {r.how, r.code}, describe_run(r))
      local n, sent, received, failed = summary(r)
      assert.same({2, expected_bytes(2, 3), expected_bytes(2, 3), 2},
        {n, sent, received, failed})
      assert.matches("connection 1: got %d+ bytes back, expected %d+", r.stderr)
    end)
  end)

  describe("with bad usage", function()
    local port = tostring(free_port()) -- never connected to: usage fails first
    local cases = {
      {},
      {"127.0.0.1:notaport"},
      {"127.0.0.1:" .. port, "0"},
      {"127.0.0.1:" .. port, "many"},
      {"127.0.0.1:" .. port, "2", "-1"},
      {"127.0.0.1:" .. port, "2", "lots"},
    }
    for _, args in ipairs(cases) do
      local shown = #args == 0 and "no arguments" or table.concat(args, " ")
      it("exits 1 with the usage line for " .. shown, function()
        local r = run_client(args, 5)
        assert.same({"exit", 1}, {r.how, r.code}, describe_run(r))
        assert.matches(USAGE, r.stderr, 1, true)
        assert.equal(1, select(2, r.stderr:gsub("\n", "\n")), "one line: " .. r.stderr)
        assert.equal("", r.stdout)
      end)
    end
  end)
end)
