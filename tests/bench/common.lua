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
-- Echo over TLS (issue 13): the C reference beside luahost's echo.lua given a certificate.
-- {cert} and {key} are the files M.tls_files makes for the run (M.command fills them in).
M.TLS_ECHO_SERVERS = {
  { key = "c", name = "C OpenSSL epoll (limit)", tls = true,
    cmd = M.BIN .. "/c_tls_echo %d {cert} {key}" },
  { key = "luahost", name = "luahost echo.lua", tls = true,
    cmd = "build/luahost scripts/echo.lua 127.0.0.1:%d --tls-cert {cert} --tls-key {key}" },
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

-- mode: "echo", "chat", "tls" (echo over TLS) or "handshake" (TLS handshakes).
function M.server(mode, key)
  local lists = { echo = M.ECHO_SERVERS, chat = M.CHAT_SERVERS, tls = M.TLS_ECHO_SERVERS,
                  handshake = M.TLS_ECHO_SERVERS }
  for _, s in ipairs(lists[mode] or {}) do
    if s.key == key then return s end
  end
end

-- TLS ------------------------------------------------------------------------------------

local tls_dir -- made once a run, removed by M.cleanup

-- A self-signed ECDSA P-256 certificate for 127.0.0.1 and its key, made with the openssl
-- command for this run only (no key is kept in the tree): {cert=, key=}.
function M.tls_files()
  if not tls_dir then
    tls_dir = M.capture("mktemp -d")
    if not M.sh(string.format("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
                                .. " -nodes -days 1 -subj /CN=127.0.0.1 -addext"
                                .. " subjectAltName=IP:127.0.0.1 -keyout %s/key.pem -out"
                                .. " %s/cert.pem 2>/dev/null", tls_dir, tls_dir)) then
      M.die("the openssl command could not make a test certificate")
    end
  end
  return { cert = tls_dir .. "/cert.pem", key = tls_dir .. "/key.pem" }
end

function M.cleanup()
  if tls_dir then M.sh("rm -rf " .. tls_dir) end
  tls_dir = nil
end

-- The server's command line for port, with the run's certificate where it takes one.
function M.command(server, port)
  local cmd = string.format(server.cmd, port)
  if server.tls then
    local f = M.tls_files()
    cmd = cmd:gsub("{cert}", f.cert):gsub("{key}", f.key)
  end
  return cmd
end

-- Whether a TLS server of the list speaks TLS at all: nil if it does, else why not, as
-- the row's text. Asked once a run per server: it is started on its own, and must
-- listen and complete a handshake. A luahost without TLS either refuses --tls-cert
-- (and exits with its error) or, as a script that ignores arguments it does not know,
-- serves plain echo, which sends the ClientHello back: either way it is said, not hidden.
local tls_verdicts = {}
function M.tls_missing(server)
  if tls_verdicts[server.key] == nil then
    local port, log = M.free_port(), M.capture("mktemp")
    local pid = tonumber(M.capture(string.format("sh -c 'exec %s >%s 2>&1 </dev/null' & echo $!",
                                                 M.command(server, port), log)))
    local why = "did not listen within 10 s"
    for _ = 1, 50 do
      if not M.alive(pid) then
        why = "it exited: " .. M.capture("head -c 200 " .. log):gsub("\n.*", "")
        break
      end
      if M.sh(string.format("%s/loadgen --mode probe --port %d --cap 0 2>/dev/null", M.BIN,
                            port)) then
        local out = M.capture(string.format("%s/loadgen --mode probe --tls --port %d --cap 2 2>&1",
                                            M.BIN, port))
        -- "loadgen: no TLS on 127.0.0.1:PORT: error:0A0000F4:SSL routines::unexpected
        -- message" (what a plain echo's answer to a ClientHello gives) says it all.
        local reason = out:gsub("^loadgen: no TLS on %S+ ", ""):gsub("error:%x+:", "")
        why = M.alive(pid) and not out:find("TLS handshake done") and
          "it listens, but a TLS handshake with it failed: " .. reason
          or not M.alive(pid) and "it exited during a TLS handshake" or false
        break
      end
      M.sh("sleep 0.2")
    end
    M.stop(pid, 40)
    M.sh("rm -f " .. log)
    tls_verdicts[server.key] = why and string.format("%s has no TLS: skipped (%s)",
                                                     server.key == "c" and "the C server"
                                                       or server.key, why) or false
  end
  return tls_verdicts[server.key] or nil
end

return M
