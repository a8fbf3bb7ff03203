-- client_spec.lua: scripts/client.lua, the multi-connection client, run by the real
-- luahost executable, since its exit status and one-line summary are what it is for:
-- against echo.lua, against nothing and against servers that fail it. It never hangs.
local T = require "luahost.test"

local USAGE = "usage: luahost scripts/client.lua [HOST:]PORT [CONNECTIONS] [MESSAGES]"
  .. " [--tls [--ca FILE]]"

-- The bytes client.lua sends (and expects back) for nconns connections of nmessages.
local function expected_bytes(nconns, nmessages)
  local total = 0
  for id = 1, nconns do
    for i = 1, nmessages do
      total = total + #("Message %d from connection %d.\n"):format(i, id)
    end
  end
  return total
end

-- A 127.0.0.1 port that nothing listens on: one the kernel gave a socket just closed.
-- Runs client.lua with args, killed past timeout seconds (default 10); returns its run and
-- a description for failure messages.
local function run_client(args, timeout)
  local r = T.run({"scripts/client.lua", table.unpack(args)}, {timeout = timeout or 10})
  local shown = ("%s %s; stdout: %q; stderr: %q"):format(r.how, r.code, r.stdout, r.stderr)
  assert(not r.timed_out, "client.lua ran past its time and was killed: " .. shown)
  return r, shown
end

-- The numbers of the summary line, which must be all of stdout.
local function summary(r)
  local numbers = {r.stdout:match(
    "^(%d+) connections, (%d+) bytes sent, (%d+) received, (%d+) failed\n$")}
  assert(#numbers == 4, ("no summary line on stdout: %q; stderr: %s"):format(r.stdout, r.stderr))
  for i, n in ipairs(numbers) do numbers[i] = tonumber(n) end
  return numbers
end

local function server(mode)
  if not mode then return T.spawn("scripts/echo.lua") end
  return T.spawn("tests/support/bad_echo.lua", {"127.0.0.1:0", mode})
end

describe("client.lua under the luahost executable", function()
  describe("against echo.lua", function()
    it("runs 20 connections of 5 messages, gets every byte back and exits 0", function()
      local echo = server()
      local r, shown = run_client({"127.0.0.1:" .. echo.port, "20", "5"})
      assert.same({"exit", 0, ""}, {r.how, r.code, r.stderr}, shown)
      assert.same({20, expected_bytes(20, 5), expected_bytes(20, 5), 0}, summary(r))
      assert.is_nil(echo:stderr():match("[^\n]* error [^\n]*"), echo:stderr())
    end)

    it("defaults to 2 connections of 2 messages", function()
      local r, shown = run_client({"127.0.0.1:" .. server().port})
      assert.same({"exit", 0}, {r.how, r.code}, shown)
      assert.same({2, expected_bytes(2, 2), expected_bytes(2, 2), 0}, summary(r))
    end)

    it("with 0 messages finishes at once: succeeds, or refuses the count as bad usage",
      function()
        -- Nothing is sent, so nothing to wait for: its own 30 s timeout must not end it.
        local r, shown = run_client({"127.0.0.1:" .. server().port, "1", "0"}, 5)
        if r.code == 0 then
          assert.same({1, 0, 0, 0}, summary(r))
        else
          assert.same({"exit", 1}, {r.how, r.code}, shown)
          assert.matches(USAGE, r.stderr, 1, true)
        end
      end)
  end)

  describe("when it cannot succeed", function()
    it("exits non-zero with a failure summary against a port nothing listens on", function()
      local r, shown = run_client({"127.0.0.1:" .. T.free_port(), "3", "2"}, 5)
      assert.same({"exit", 1}, {r.how, r.code}, shown)
      assert.same({3, 0, 0, 3}, summary(r))
      for id = 1, 3 do
        assert.matches("connection " .. id .. ": [^\n]*[Rr]efused", r.stderr)
      end
      assert.matches("3 connections, 0 bytes sent, 0 received, 3 failed", r.stderr, 1, true)
    end)

    it("counts a connection the server closes without answering as failed", function()
      local r, shown = run_client({"127.0.0.1:" .. server("abort").port, "2", "3"})
      assert.same({"exit", 1}, {r.how, r.code}, shown)
      local numbers = summary(r)
      assert.same({2, 0, 2}, {numbers[1], numbers[3], numbers[4]})
      assert.matches("connection 1: ", r.stderr, 1, true)
      assert.matches("connection 2: ", r.stderr, 1, true)
    end)

    it("counts a connection whose echo comes back changed as failed", function()
      local r, shown = run_client({"127.0.0.1:" .. server("upper").port, "2", "3"})
      assert.same({"exit", 1}, {r.how, r.code}, shown)
      assert.same({2, expected_bytes(2, 3), expected_bytes(2, 3), 2}, summary(r))
      assert.matches("connection 1: got %d+ bytes back, expected %d+", r.stderr)
    end)
  end)

  describe("with bad usage", function()
    local port = tostring(T.free_port()) -- never connected to: usage fails first
    for _, args in ipairs({
      {},
      {"127.0.0.1:notaport"},
      {"127.0.0.1:" .. port, "0"},
      {"127.0.0.1:" .. port, "many"},
      {"127.0.0.1:" .. port, "2", "-1"},
      {"127.0.0.1:" .. port, "2", "lots"},
    }) do
      local shown_args = #args == 0 and "no arguments" or table.concat(args, " ")
      it("exits 1 with the usage line for " .. shown_args, function()
        local r, shown = run_client(args, 5)
        assert.same({"exit", 1, ""}, {r.how, r.code, r.stdout}, shown)
        assert.matches(USAGE, r.stderr, 1, true)
        assert.equal(1, select(2, r.stderr:gsub("\n", "\n")), "one line: " .. r.stderr)
      end)
    end
  end)
end)
