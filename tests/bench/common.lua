-- common.lua: what run.lua (the wall-clock bench) and ir.lua (callgrind) share: the
-- servers measured, shell helpers and free ports. Loaded with dofile from the project root.

local M = {}

M.BIN = "build/bench"

-- key: short name; cmd: the command, %d is the port; max_conns: most it can serve.
M.ECHO_SERVERS = {
  { key = "c", name = "C epoll (limit)", cmd = M.BIN .. "/c_echo %d" },
  { key = "luahost", name = "luahost echo.lua",
    cmd = "build/luahost scripts/echo.lua 127.0.0.1:%d" },
  -- The same echo with luahost.task (a coroutine per client), found through LUA_PATH.
  { key = "luahost_task", name = "luahost echo_task.lua",
    cmd = 'env "LUA_PATH_5_4=lua/?.lua;;" build/luahost examples/echo_task.lua 127.0.0.1:%d' },
  -- Debian's interpreter, which vendor/bench-packages.txt installs, whatever PATH finds.
  { key = "python", name = "Python selectors",
    cmd = "/usr/bin/python3 tests/bench/py_echo.py %d" },
  { key = "luv", name = "luv", cmd = "lua5.4 tests/bench/luv_echo.lua %d" },
  { key = "cqueues", name = "cqueues", cmd = "lua5.4 tests/bench/cqueues_echo.lua %d" },
  -- LuaSocket's select(2) cannot watch an fd past FD_SETSIZE (1024).
  { key = "copas", name = "copas", cmd = "lua5.4 tests/bench/copas_echo.lua %d",
    max_conns = 1000 },
}
M.CHAT_SERVERS = {
  { key = "c", name = "C epoll (limit)", cmd = M.BIN .. "/c_chat %d" },
  { key = "luahost", name = "luahost chat.lua",
    cmd = "build/luahost --log-level warn scripts/chat.lua 127.0.0.1:%d" },
  { key = "luv", name = "luv", cmd = "lua5.4 tests/bench/luv_chat.lua %d" },
}

function M.log(fmt, ...)
  io.stderr:write(string.format(fmt, ...), "\n")
end

function M.die(fmt, ...)
  M.log("bench: " .. fmt, ...)
  os.exit(1)
end

function M.sh(cmd)
  return os.execute(cmd) == true
end

function M.capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  return (out:gsub("%s+$", ""))
end

-- Whether name is in the comma-separated list (no list: everything is).
function M.selected(list, name)
  if not list then return true end
  for item in list:gmatch("[^,]+") do
    if item == name then return true end
  end
  return false
end

-- The key=value pairs of a line the load generator or ir.lua printed.
function M.parse(line)
  local r = {}
  for k, v in line:gmatch("(%S+)=(%S+)") do
    r[k] = tonumber(v) or v
  end
  return r
end

-- The programs built into build/bench/: their sources (in tests/bench/) and libraries.
local TOOLS = {
  { "loadgen", { "loadgen.c", "loadgen_tls.c", "loadgen_tls.h" }, "-lssl -lcrypto" },
  { "c_echo", { "c_echo.c" }, "" },
  { "c_chat", { "c_chat.c" }, "" },
  { "c_tls_echo", { "c_tls_echo.c" }, "-lssl -lcrypto" },
}

-- Builds the load generator and the C reference servers into build/bench/, each again
-- only when one of its sources is newer.
function M.build_tools()
  M.sh("mkdir -p " .. M.BIN)
  for _, tool in ipairs(TOOLS) do
    local out, fresh, c_files = M.BIN .. "/" .. tool[1], {}, {}
    for _, f in ipairs(tool[2]) do
      fresh[#fresh + 1] = string.format("[ %s -nt tests/bench/%s ]", out, f)
      if f:match("%.c$") then c_files[#c_files + 1] = "tests/bench/" .. f end
    end
    if not M.sh(string.format("%s || cc -O2 -Wall -Wextra -std=c11 -o %s %s %s",
                              table.concat(fresh, " && "), out, table.concat(c_files, " "),
                              tool[3])) then
      M.die("cannot build %s", tool[1])
    end
  end
  if not M.sh("test -x build/luahost") then M.die("build/luahost is missing: run make build") end
end

-- Ports below the ephemeral range, so no client port collides, skipping any that
-- something listens on; from a point that differs from run to run, so that two benches
-- on one machine rarely try the same ports.
local function own_pid()
  local f = io.open("/proc/self/stat")
  local pid = f and tonumber(f:read("a"):match("^(%d+)")) or 0
  if f then f:close() end
  return pid
end
math.randomseed(os.time(), own_pid())
local next_port = 20000 + math.random(0, 8000)
function M.free_port()
  repeat
    next_port = next_port + 1
  until not M.sh(string.format("%s/loadgen --mode probe --port %d --cap 0 2>/dev/null", M.BIN,
                               next_port))
  return next_port
end

function M.alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("a")
  f:close()
  return not stat:match("%) Z ") -- a zombie is gone for our purposes
end

-- SIGTERM, then SIGKILL if the process is still there after tries * 50 ms.
function M.stop(pid, tries)
  M.sh("kill -TERM " .. pid .. " 2>/dev/null")
  for _ = 1, tries do
    if not M.alive(pid) then return end
    M.sh("sleep 0.05")
  end
  M.sh("kill -KILL " .. pid .. " 2>/dev/null")
end

function M.server(mode, key)
  for _, s in ipairs(mode == "chat" and M.CHAT_SERVERS or M.ECHO_SERVERS) do
    if s.key == key then return s end
  end
end

return M
