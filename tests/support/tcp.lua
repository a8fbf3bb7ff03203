-- tcp.lua: the kernel's view of this machine's IPv4/IPv6 TCP sockets (/proc/net/tcp):
-- queue sizes and states, for the specs that reason about what sits in kernel buffers.
local M = {}

-- The send and receive queues (bytes) of the IPv4 TCP socket whose local port is
-- local_port and whose peer's port is remote_port; nil if there is none.
function M.queues(local_port, remote_port)
  local f = io.open("/proc/net/tcp", "r")
  if not f then return nil end
  local tx, rx
  for line in f:lines() do
    local lp, rp, t, r = line:match("^%s*%d+:%s+%x+:(%x+)%s+%x+:(%x+)%s+%x+%s+(%x+):(%x+)")
    if lp and tonumber(lp, 16) == local_port and tonumber(rp, 16) == remote_port then
      tx, rx = tonumber(t, 16), tonumber(r, 16)
      break
    end
  end
  f:close()
  return tx, rx
end

-- How many TCP sockets on local port `port` are in a given state (hex, as in
-- /proc/net/tcp: "08" is CLOSE_WAIT, "01" ESTABLISHED).
function M.state_count(port, state)
  local n = 0
  for _, name in ipairs({"/proc/net/tcp", "/proc/net/tcp6"}) do
    local f = io.open(name)
    if f then
      for line in f:lines() do
        local lp, st = line:match("^%s*%d+:%s+%x+:(%x+)%s+%x+:%x+%s+(%x+)")
        if lp and tonumber(lp, 16) == port and st == state then n = n + 1 end
      end
      f:close()
    end
  end
  return n
end

return M
