-- redis.lua: a redis-server of a spec's own, on a free loopback port, with nothing saved
-- to disk; stopped when the test ends (T.spawn_command). Never the system's Redis, never
-- port 6379. docs/testing.md describes it.
local T = require "luahost.test"

local M = {}

M.TIMEOUT = 5

-- Sends a command in RESP and returns the first line of the reply: a blocking client of
-- the kit's, for setting up and checking Redis from a spec.
function M.command(server, ...)
  local c = T.client(server.host, server.port)
  local words = {...}
  local out = {"*" .. #words .. "\r\n"}
  for _, w in ipairs(words) do out[#out + 1] = "$" .. #w .. "\r\n" .. w .. "\r\n" end
  c:send(table.concat(out))
  local line = c:line(M.TIMEOUT)
  c:close()
  return (line:gsub("\r$", ""))
end

-- Starts redis-server on port (default: a free one) and waits until it answers PING.
-- Returns {host, port, process}. DEBUG is allowed from loopback, for DEBUG SLEEP.
function M.start(port)
  port = port or T.free_port()
  local p = T.spawn_command({"redis-server", "--port", tostring(port), "--bind", "127.0.0.1",
    "--save", "", "--appendonly", "no", "--daemonize", "no", "--enable-debug-command", "local"})
  local server = {host = "127.0.0.1", port = port, process = p}
  T.wait_until(function()
    if not p:alive() then error("redis-server exited: " .. p:stdout() .. p:stderr()) end
    local ok, c = pcall(T.client, server.host, port, {timeout = 0.5})
    if ok then c:close() end
    return ok
  end, M.TIMEOUT, "redis-server to listen on port " .. port)
  return server
end

-- Kills it at once (SIGKILL: as a crash would).
function M.kill(server)
  server.process:stop("KILL")
end

-- Makes Redis sleep for seconds (DEBUG SLEEP), without waiting for it to wake.
function M.stall(server, seconds)
  local c = T.client(server.host, server.port)
  c:send(string.format("DEBUG SLEEP %g\r\n", seconds))
  return c -- read "+OK" from it to know the stall is over
end

return M
