-- reliability_hangup_spec.lua: a peer that is gone (FIN, RST, a half-close) or an fd
-- closed behind the host's back (POLLNVAL under poll, EBADF under select), against a
-- script that never closes nor unregisters: the end is delivered once to the owning
-- key, the loop does not spin, and the host goes on serving. On every backend.
local luahost = require "luahost"
local T = require "luahost.test"

local READ = luahost.EVENT_READ
local now = luahost.now

-- An echo server that ignores the end of its connections: it never closes nor
-- unregisters them, and counts the calls after recv said the stream ended or failed,
-- per peer port. "late" on a half-closed connection is written 0.2 s after its end, to
-- show the write side still works. A connection that sends "drop-fd" has its integer fd
-- registered, then its socket closed behind the host's back. Every 0.1 s it logs
--   ends PORT=CALLS ... calls=N
-- where calls counts every callback run for the integer-fd registrations.
local IGNORING = [[
local sel, READ = luahost.selector, luahost.EVENT_READ
local server = assert(luahost.listen("127.0.0.1", 0))
local ends, fd_calls = {}, 0
sel:register(server, READ, function(listener)
  local conn = listener:accept()
  if not conn then return end
  local _, port = conn:getpeername()
  sel:register(conn, READ, function(c)
    local data, err = c:recv(65536)
    if data == "drop-fd" then
      local fd = c:fileno()
      sel:unregister(c)
      sel:register(fd, READ, function() fd_calls = fd_calls + 1 end)
      luahost.log("info", "dropped fd " .. fd)
      c:close()
    elseif data and data ~= "" then
      c:write(data)
    elseif data == "" or err ~= "wouldblock" then
      ends[port] = (ends[port] or 0) + 1
      if ends[port] == 1 then
        luahost.after(0.2, function() c:write("late") end)
      end
    end
  end)
end)
luahost.every(0.1, function()
  local parts = {}
  for port, n in pairs(ends) do parts[#parts + 1] = port .. "=" .. n end
  luahost.log("info", "ends " .. table.concat(parts, " ") .. " calls=" .. fd_calls)
end)
]]

-- The latest counts the script logged: ends (peer port -> calls) and the integer-fd calls.
local function latest_counts(server)
  local last
  for line in server:stderr():gmatch("[^\n]*ends [^\n]*calls=%d+") do last = line end
  if not last then return nil end
  local ends = {}
  for port, n in last:match("ends (.*) calls="):gmatch("(%d+)=(%d+)") do
    ends[tonumber(port)] = tonumber(n)
  end
  return ends, tonumber(last:match("calls=(%d+)"))
end

-- Counts as logged after `seconds` more of the host's life, with the CPU it used meanwhile.
local function watch(server, seconds)
  local cpu0, t0 = server:cpu_seconds(), now()
  T.sleep(seconds)
  assert(server:alive(), "the server died while the peer was gone: " .. tostring(server))
  local used = server:cpu_seconds() - cpu0
  local mark = #server:stderr()
  T.wait_until(function()
    return server:stderr():find("calls=%d+\n", mark + 1) -- logged after the wait
  end, 2, "a fresh count line")
  local ends, calls = latest_counts(server)
  return ends, calls, used, now() - t0
end

-- The ignoring script on backend, a probe client that got its echo, and a victim client
-- (the kit closes both when the test ends).
local function start_ignoring(backend)
  local server = T.spawn(T.tempfile(IGNORING), {}, {selector = backend})
  local probe = T.client("127.0.0.1", server.port, {timeout = 5})
  local victim = T.client("127.0.0.1", server.port, {timeout = 5})
  probe:echo("hello")
  return server, probe, victim
end

-- Whether sock becomes readable within seconds, without reading from it.
local function readable(sock, seconds)
  local sel = luahost.new_selector()
  sel:register(sock, READ)
  local ready = false
  for _ in sel:select(seconds) do ready = true end
  sel:close()
  return ready
end

-- The peer ends its connection c (a kit client, echoed "hi" already read) as `how`.
local ENDINGS = {
  fin = function(c) c:close() end,
  -- Unread data in the receive queue makes close() send a reset instead of a FIN: the
  -- echo is waited for on the socket itself, which the kit's reads would empty.
  rst = function(c)
    assert(c.sock:send("unread"))
    assert(readable(c.sock, 3), "setup: the echo to leave unread never came")
    c:close()
  end,
  half = function(c) c:shutdown() end,
}

describe("reliability: peers that are gone, scripts that ignore it", function()
  for _, backend in ipairs({"epoll", "poll", "select"}) do
    describe("with --selector " .. backend, function()
      for _, how in ipairs({"fin", "rst", "half"}) do
        it("delivers the end once after a " .. how:upper() .. ", does not spin, and serves "
          .. "a probe", function()
          local server, probe, victim = start_ignoring(backend)
          victim:echo("hi")
          local port = victim:local_port()
          ENDINGS[how](victim)

          local ends, _, used, elapsed = watch(server, 1)
          assert(used < 0.2 * elapsed, ("the host used %.2f s of CPU in %.2f s after the "
            .. "peer's %s (spinning?); calls after the end: %s"):format(used, elapsed,
            how:upper(), tostring(ends and ends[port])))
          assert.equal(1, ends and ends[port], "callbacks after the end of the stream")
          if how == "half" then
            -- Only reading was withheld: the late write reaches the half-closed peer.
            assert.equal("late", victim:read(4, 3), "the write after the peer's half-close")
          end
          assert(probe:echo("still served") < 0.5)
          T.assert_graceful_stop(server)
        end)
      end

      it("an fd closed behind the host's back is reported at most once and neither spins "
        .. "nor stops the loop", function()
        local server, probe, victim = start_ignoring(backend)
        victim:send("drop-fd")
        server:wait_log("dropped fd %d+", 3)
        local _, calls, used, elapsed = watch(server, 1)
        -- epoll forgets a closed fd by itself (no event at all); poll says POLLNVAL once.
        assert(calls <= 1, calls .. " callbacks for an fd closed behind the host's back")
        assert(used < 0.2 * elapsed, ("the host used %.2f s of CPU in %.2f s with a "
          .. "registered fd closed (spinning?)"):format(used, elapsed))
        assert(probe:echo("still served") < 0.5)
        T.assert_graceful_stop(server)
      end)
    end)
  end
end)
