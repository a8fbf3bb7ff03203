-- backpressure_spec.lua: a client that sends far more than it reads cannot make the host
-- buffer it: echo.lua's reads pause above the high-water mark so its memory stays
-- bounded while every byte still comes back in order, and a write past a connection's
-- output limit fails with nil, "buffer full", closes that connection and says why.
local luahost = require "luahost"
local T = require "luahost.test"
local tcp = require "support.tcp"
local helpers = require "support.helpers"

local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local now = luahost.now
local MiB = 1024 * 1024

-- The events sock is ready for within seconds (a mask), or nil.
local function wait_ready(sock, events, seconds)
  local sel = luahost.new_selector()
  sel:register(sock, events)
  local ready = 0
  for _, mask in sel:select(seconds) do ready = ready | mask end
  sel:close()
  return ready ~= 0 and ready or nil
end

-- A stream of `blocks` blocks of BLOCK bytes, each starting with its number, so that a
-- lost, repeated or reordered block shows. sub(offset, n) gives n bytes from offset.
local BLOCK = 65536
local function stream(blocks)
  math.randomseed(20240611)
  local base = T.random_bytes(BLOCK)
  local function block(k) return string.format("%015d|", k) .. base:sub(17) end
  local s = {size = blocks * BLOCK}
  function s.sub(offset, n)
    local parts, left = {}, n
    while left > 0 do
      local k, within = offset // BLOCK, offset % BLOCK
      local piece = block(k):sub(within + 1, within + left)
      parts[#parts + 1] = piece
      offset, left = offset + #piece, left - #piece
    end
    return table.concat(parts)
  end
  return s
end

describe("backpressure", function()
  it("keeps echo.lua's memory bounded under 50 MiB sent without reading, and echoes it all",
    function()
      local TOTAL, GROWTH_LIMIT = 50 * MiB, 16 * MiB
      local data = stream(TOTAL // BLOCK)
      local server = T.spawn("scripts/echo.lua")
      local conn = T.client("127.0.0.1", server.port, {timeout = 5})
      local sock = conn.sock -- the client below is the spec's own: it reads when it chooses
      -- one small round trip first, so that the baseline includes a served connection
      conn:echo("warm up")
      local base = server:rss()
      local peak = base
      local function sample()
        peak = math.max(peak, server:rss())
        assert(peak - base < GROWTH_LIMIT, string.format(
          "luahost grew by %.1f MiB (from %.1f to %.1f MiB) with the client not keeping up",
          (peak - base) / MiB, base / MiB, peak / MiB))
      end

      -- 1. Send without reading until the kernel takes no more for half a second.
      local sent = 0
      while sent < TOTAL do
        local n, err = sock:send(data.sub(sent, math.min(BLOCK, TOTAL - sent)))
        if n then
          sent = sent + n
        else
          assert.equal("wouldblock", err)
          sample()
          if not wait_ready(sock, WRITE, 0.5) then break end
        end
      end
      sample()
      assert(sent < TOTAL, "all 50 MiB were taken without the client reading a byte:"
        .. " nothing pushed back")
      -- the host stopped reading: what the client sent waits in the kernel, not in luahost
      local _, server_rx = tcp.queues(server.port, conn:local_port())
      assert(server_rx and server_rx > 0, string.format(
        "the server's receive queue is %s after the sends blocked at %d bytes: it kept reading",
        tostring(server_rx), sent))

      -- 2. Stream both ways: send what the kernel takes, read what is there, check order.
      local got, deadline, last_progress = 0, now() + 25, now()
      local last_sample = now()
      while got < TOTAL do
        local t = now()
        assert(t < deadline, string.format("not done in 25 s: sent %d, got %d of %d bytes",
          sent, got, TOTAL))
        assert(t - last_progress < 5, string.format(
          "no byte moved for 5 s: sent %d, got %d of %d bytes", sent, got, TOTAL))
        local ready = wait_ready(sock, READ | (sent < TOTAL and WRITE or 0), 0.5) or 0
        if ready & WRITE ~= 0 then
          local n, err = sock:send(data.sub(sent, math.min(4 * BLOCK, TOTAL - sent)))
          if n then
            sent, last_progress = sent + n, now()
          else
            assert.equal("wouldblock", err)
          end
        end
        if ready & READ ~= 0 then
          for _ = 1, 16 do
            local chunk, err = sock:recv(65536)
            if chunk == "" then
              error(string.format("EOF after %d of %d bytes echoed", got, TOTAL))
            elseif not chunk then
              assert(err == "wouldblock", "recv failed: " .. tostring(err))
              break
            end
            if chunk ~= data.sub(got, #chunk) then
              error(string.format("the echo differs from what was sent within bytes %d..%d",
                got, got + #chunk - 1))
            end
            got, last_progress = got + #chunk, now()
            assert(got <= sent, "received more bytes than were sent")
          end
        end
        if now() - last_sample > 0.02 then
          sample()
          last_sample = now()
        end
      end
      sample()
      assert.equal(TOTAL, sent)
      assert.equal(TOTAL, got)
      -- nothing more comes back, and the server closes when the client is done
      conn:shutdown()
      assert.equal("", conn:read_all(5)) -- fails on a reset or no end within 5 s
      conn:close()
      T.assert_graceful_stop(server)
    end)

  describe("a write past the output limit", function()
    -- Accepts one connection and, once the client has said it is connected (a write
    -- past the limit resets the connection, which the client must not see before it has
    -- looked at its connect), writes 16 KiB at a time, never flushing through the loop,
    -- until a write fails; logs what that write returned and the socket after it.
    local WRITER = [[
      local luahost = require "luahost"
      local limit = tonumber(arg[2])
      local server = assert(luahost.listen("127.0.0.1", tonumber(arg[1])))
      local function write_until_refused(conn)
        luahost.selector:unregister(conn)
        local chunk = string.rep("w", 16384)
        for i = 1, 4096 do -- 64 MiB at most
          local r = table.pack(conn:write(chunk))
          if r[1] == nil then
            local ok, err = pcall(conn.recv, conn, 1)
            luahost.log("info", string.format("write %d returned %d values: %s, %s;"
              .. " after it %s, recv %s: %s", i, r.n, tostring(r[1]), tostring(r[2]),
              tostring(conn), ok and "worked" or "raised", tostring(err)))
            return
          end
        end
        luahost.log("info", "no write failed")
      end
      luahost.selector:register(server, luahost.EVENT_READ, function(listener)
        local conn = listener:accept()
        if not conn then return end
        if limit then conn:setlimit(limit) end
        luahost.selector:register(conn, luahost.EVENT_READ, write_until_refused)
      end)
    ]]

    local function check(args, options, limit)
      local server = T.spawn(T.tempfile(WRITER), args, {options = options})
      local conn = T.client("127.0.0.1", server.port, {rcvbuf = 4096, timeout = 5})
      local port = conn:local_port()
      conn:send("go")
      local i, n, first, second, after, how, err = server:wait_log(
        "write (%d+) returned (%d+) values: (.-), (.-); after it (.-), recv (%a+): (.*)$", 5)
      assert.same({"2", "nil", "buffer full"}, {n, first, second})
      assert.equal("luahost.socket (closed)", after)
      assert.equal("raised", how)
      assert.matches("attempt to use a closed socket", err)
      -- the host logged why, with what was pending: a write that would pass the limit
      local pending, logged_limit = server:stderr():match("closing 127%.0%.0%.1:" .. port
        .. ": output buffer full %((%d+) bytes pending, limit (%d+)%)")
      assert(pending, "no 'output buffer full' line for the client:\n" .. server:stderr())
      assert.equal(limit, tonumber(logged_limit))
      assert(tonumber(pending) <= limit and tonumber(pending) + 16384 > limit, string.format(
        "%s bytes pending with a limit of %d: the failed write would not have passed it",
        pending, limit))
      -- the client's connection ends after whatever the kernel had taken
      assert(conn:closed(5), "the connection stayed open after the buffer-full close")
      local data = conn:received()
      assert(#data <= (tonumber(i) - 1) * 16384, string.format(
        "the client got %d bytes, more than the %d writes before the refused one", #data, i - 1))
      conn:close()
      assert.same({how = "exit", code = 0}, (server:stop("TERM")))
    end

    it("returns nil, 'buffer full' under --max-output, closes and logs why", function()
      check({"0"}, {"--max-output", "100000"}, 100000)
    end)

    it("returns nil, 'buffer full' under conn:setlimit, closes and logs why", function()
      check({"0", "70000"}, {}, 70000)
    end)

    it("does the same in process: nil, 'buffer full', the socket closed, the peer cut off",
      function()
        local level = luahost.log_level()
        luahost.log_level("error") -- the warning would only clutter busted's output
        local listener, port = helpers.listen()
        local peer = assert(luahost.socket("inet", "stream"))
        assert(peer:setsockopt("rcvbuf", 4096))
        assert(peer:setblocking(false))
        local rc = peer:connect_ex("127.0.0.1", port)
        assert(rc == 0 or rc == 115, "connect_ex: " .. tostring(rc))
        local conn = helpers.accept(listener)
        listener:close()
        assert(conn:setlimit(50000))
        local chunk = string.rep("p", 8192)
        local results, writes
        for n = 1, 8192 do -- 64 MiB at most
          results = table.pack(conn:write(chunk))
          writes = n
          if results[1] == nil then break end
          assert(results[1] <= 50000, "pending past the limit: " .. results[1])
        end
        luahost.log_level(level)
        assert.same({n = 2, nil, "buffer full"}, results)
        assert.equal("luahost.socket (closed)", tostring(conn))
        assert.error_matches(function() conn:recv(1) end, "attempt to use a closed socket")
        local got = 0
        helpers.poll_until(function()
          local data, err = peer:recv(65536)
          if data and data ~= "" then got = got + #data end
          return data == "" or (data == nil and err ~= "wouldblock")
        end, 5, "the peer to see the connection end")
        assert(got <= (writes - 1) * #chunk, string.format(
          "the peer got %d bytes, more than the %d writes before the refused one", got, writes - 1))
        peer:close()
      end)
  end)
end)
