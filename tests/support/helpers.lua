-- helpers.lua: what the in-process specs share: waits that drive the host loop and give
-- up after a deadline, small non-blocking clients, fd accounting, and a child lua5.4 for
-- the few checks that must read the host's log on stderr.
local luahost = require "luahost"

local helpers = {}

-- The longest any single wait in the specs may take, in seconds.
helpers.TIMEOUT = 5

local function describe_wait(what, timeout)
  return ("timed out after %g s waiting for %s"):format(timeout, what or "a condition")
end

-- Calls pred() until it returns a true value, which it returns, calling pause() between
-- tries; raises a clear error, pointing at the test's line, after timeout seconds.
local function wait_until(pred, timeout, what, pause)
  timeout = timeout or helpers.TIMEOUT
  local deadline = luahost.now() + timeout
  while true do
    local value = pred()
    if value then
      return value
    end
    if luahost.now() >= deadline then
      error(describe_wait(what, timeout), 2) -- level 2: the callers tail-call this
    end
    pause()
  end
end

-- Sleeps without running the host loop: a wait on a selector with nothing registered.
local idle_selector
function helpers.sleep(seconds)
  idle_selector = idle_selector or luahost.new_selector()
  for _ in idle_selector:select(seconds) do
    error("a selector with nothing registered reported readiness")
  end
end

-- Drives the host loop with luahost.step until pred() returns a true value.
function helpers.step_until(pred, timeout, what)
  return wait_until(pred, timeout, what, function() luahost.step(0.005) end)
end

-- Like step_until, but leaves the host loop alone: for tests of a selector of their own.
function helpers.poll_until(pred, timeout, what)
  return wait_until(pred, timeout, what, function() helpers.sleep(0.002) end)
end

-- Waits on a scratch selector until sock is ready for events; returns the mask.
function helpers.wait_ready(sock, events, timeout, what)
  timeout = timeout or helpers.TIMEOUT
  local sel = luahost.new_selector()
  sel:register(sock, events)
  local deadline = luahost.now() + timeout
  local got
  repeat
    for _, mask in sel:select(math.max(deadline - luahost.now(), 0)) do
      got = mask
    end
  until got or luahost.now() >= deadline
  sel:close()
  if not got then
    error(describe_wait(what or "the socket to become ready", timeout), 2)
  end
  return got
end

-- A listener on 127.0.0.1, port 0. Returns it and its port.
function helpers.listen(host)
  local server = assert(luahost.listen(host or "127.0.0.1", 0))
  local _, port = server:getsockname()
  return server, port
end

-- Accepts one connection from server, waiting for it (without running the host loop).
function helpers.accept(server, timeout)
  local conn, addr, port
  helpers.poll_until(function()
    conn, addr, port = server:accept()
    return conn
  end, timeout, "a connection to accept")
  return conn, addr, port
end

-- Accepts from server until a connection lands on fd, which a socket just closed left
-- free: the kernel hands out the lowest free fd, so any lower holes are filled first
-- (by the returned fillers, which the caller closes). Needs enough clients waiting.
function helpers.accept_onto(server, fd, tries)
  local fillers = {}
  for _ = 1, tries or 8 do
    local conn = helpers.accept(server, 1)
    if conn:fileno() == fd then
      return conn, fillers
    end
    fillers[#fillers + 1] = conn
  end
  for _, s in ipairs(fillers) do
    s:close()
  end
  error(("no accepted connection reused fd %d"):format(fd), 2)
end

-- A connected pair over loopback: the client end and the server's end, both
-- non-blocking, neither registered anywhere.
function helpers.pair(server)
  local own = not server
  local port
  if own then
    server, port = helpers.listen()
  else
    port = select(2, server:getsockname())
  end
  local host = server:getsockname()
  local client = assert(luahost.connect(host, port))
  local conn = helpers.accept(server)
  helpers.wait_ready(client, luahost.EVENT_WRITE, nil, "the client to connect")
  if own then
    server:close()
  end
  return client, conn
end

-- A pair whose kernel buffers hold a few hundred KiB at most, so that a write of a few
-- MiB has to be buffered by the host. (Much smaller buffers make loopback TCP crawl.)
function helpers.tight_pair()
  local client, conn = helpers.pair()
  assert(conn:setsockopt("sndbuf", 65536))
  assert(client:setsockopt("rcvbuf", 65536))
  return client, conn
end

-- Deterministic bytes: n of them, in a pattern that shows reordering or loss.
function helpers.payload(n, seed)
  local chunk = {}
  for i = 0, 255 do
    chunk[#chunk + 1] = string.char((i * 7 + (seed or 0)) % 256)
  end
  local block = table.concat(chunk)
  return (block:rep(n // #block + 1)):sub(1, n)
end

-- Reads from sock until want bytes arrived (or the stream ended), stepping the host loop
-- in between so the other end can make progress. Returns what was read and whether the
-- stream ended. Raises on a receive error and on timeout.
function helpers.read_n(sock, want, timeout, what)
  local parts, got, eof = {}, 0, false
  helpers.step_until(function()
    while got < want do
      local data, err, errno = sock:recv(65536)
      if data == "" then
        eof = true
        return true
      elseif data == nil then
        if err == "wouldblock" then
          return false
        end
        error(("recv failed after %d bytes: %s (%s)"):format(got, err, tostring(errno)))
      end
      parts[#parts + 1] = data
      got = got + #data
    end
    return true
  end, timeout, (what or "bytes") .. (" (wanted %d)"):format(want))
  return table.concat(parts), eof
end

-- Reads until the end of stream; returns everything read.
function helpers.read_to_eof(sock, timeout, what)
  local parts = {}
  helpers.step_until(function()
    while true do
      local data, err, errno = sock:recv(65536)
      if data == "" then
        return true
      elseif data == nil then
        if err == "wouldblock" then
          return false
        end
        error(("recv failed: %s (%s)"):format(err, tostring(errno)))
      end
      parts[#parts + 1] = data
    end
  end, timeout, what or "the end of the stream")
  return table.concat(parts)
end

-- Waits (stepping the host loop) until the peer of sock has gone: recv returns "" or
-- fails with something other than "wouldblock". Returns "eof", or the error's errno
-- (a reset when the peer closed with input unread). Data that arrives is discarded.
function helpers.wait_peer_gone(sock, timeout)
  local how
  helpers.step_until(function()
    while true do
      local data, err, errno = sock:recv(65536)
      if data == "" then
        how = "eof"
        return true
      elseif data == nil then
        if err ~= "wouldblock" then
          how = errno
          return true
        end
        return false
      end
    end
  end, timeout, "the peer to go away")
  return how
end

-- Sends all of data with s:send, stepping the host loop while the kernel is full.
function helpers.send_all(sock, data, timeout)
  local sent = 0
  helpers.step_until(function()
    while sent < #data do
      local n, err = sock:send(data:sub(sent + 1, sent + 262144))
      if not n then
        if err == "wouldblock" then
          return false
        end
        error("send failed: " .. tostring(err))
      end
      sent = sent + n
    end
    return true
  end, timeout, ("%d bytes to be sent"):format(#data))
end

local lfs_ok, lfs = pcall(require, "lfs")

-- The number of fds this process has open (the directory listing itself included).
function helpers.fd_count()
  assert(lfs_ok, "lfs is needed to count fds")
  local n = 0
  for name in lfs.dir("/proc/self/fd") do
    if name ~= "." and name ~= ".." then
      n = n + 1
    end
  end
  return n
end

-- True when fd is open in this process.
function helpers.fd_open(fd)
  assert(lfs_ok, "lfs is needed to look at fds")
  return lfs.symlinkattributes("/proc/self/fd/" .. fd) ~= nil
end

-- Raises this process's soft fd limit to its hard one with prlimit(1), if installed (a
-- soft limit of 1024, a common default, would leave a spec of thousands of clients
-- pending), and returns the soft and hard limits then, math.huge for "unlimited".
function helpers.raise_own_nofile()
  if require("luahost.test").has_prlimit() then
    local sh = io.popen("echo $PPID") -- the shell's parent is this process
    local pid = tonumber(sh:read("l"))
    sh:close()
    if pid then
      os.execute(("prlimit --pid %d --nofile=$(ulimit -Hn):$(ulimit -Hn) 2>/dev/null")
        :format(pid))
    end
  end
  local sh = io.popen("ulimit -Sn; ulimit -Hn")
  local soft, hard = sh:read("l", "l")
  sh:close()
  return tonumber(soft) or math.huge, tonumber(hard) or math.huge
end

-- Whether fd has O_NONBLOCK set, from /proc/self/fdinfo (flags are octal).
function helpers.fd_nonblocking(fd)
  local f = assert(io.open("/proc/self/fdinfo/" .. fd))
  local text = f:read("a")
  f:close()
  local flags = assert(text:match("flags:%s*(%d+)"), "no flags in fdinfo")
  return (tonumber(flags, 8) & 0x800) ~= 0 -- O_NONBLOCK is 04000
end

-- The backends this build offers, from the message new_selector gives for an unknown one.
function helpers.backends()
  local ok, err = pcall(luahost.new_selector, "no-such-backend")
  assert(not ok, "new_selector accepted an unknown backend")
  local list = assert(tostring(err):match("available: ([%w, ]+)"), "no list in: " .. tostring(err))
  local names = {}
  for name in list:gmatch("%w+") do
    names[name] = true
  end
  return names
end

function helpers.ipv6_available()
  local s = luahost.listen("::1", 0)
  if s then
    s:close()
    return true
  end
  return false
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Runs code in a child lua5.4 that finds luahost.so where this process did. Returns the
-- child's stdout and stderr together, and whether it exited with status 0. The child is
-- killed after `timeout` seconds (30 by default): a way to bound a call that can block.
function helpers.run_lua(code, timeout)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  local cmd = ("LUA_CPATH_5_4=%s LUA_PATH_5_4=%s timeout -s KILL %g lua5.4 %s 2>&1"):format(
    shell_quote(package.cpath), shell_quote(package.path), timeout or 30, shell_quote(file))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok = p:close()
  os.remove(file)
  return out, ok == true
end

-- The fileobjs still registered on sel (the host's selector by default), as a list of
-- strings, for error messages.
function helpers.registered(sel)
  local left = {}
  for fileobj in pairs((sel or luahost.selector):get_map()) do
    left[#left + 1] = tostring(fileobj)
  end
  return left
end

-- Lets lingering closes finish, then reports whether the host has nothing left:
-- nothing registered, no listener, no timer, no output waiting.
function helpers.host_is_idle(timeout)
  local deadline = luahost.now() + (timeout or helpers.TIMEOUT)
  repeat
    if next(luahost.selector:get_map()) == nil and luahost.run({timeout = 0}) == "idle" then
      return true
    end
    luahost.step(0.01)
  until luahost.now() >= deadline
  return false
end

return helpers
