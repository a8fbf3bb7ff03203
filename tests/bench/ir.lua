-- ir.lua: instructions and allocator calls per message under callgrind, the steady
-- measure of a server's own cost (wall-clock and tick-based CPU drift 2x on these VMs;
-- instruction counts do not), taken the same way for every server.
--
-- The server runs under callgrind; the load generator (64-byte messages, one in flight
-- per connection) opens every connection and loads it for a warm-up, then pauses until
-- nothing is in flight and zeroes the counters (callgrind_control -z), loads it for
-- SECONDS, pauses again until every message has come back and dumps them (-d). The
-- server is idle at both edges, so what callgrind counted between them is the work of
-- exactly the messages the load generator counted (chat: deliveries): every server's
-- instructions are divided by the same count, taken outside it.
--
-- Usage, from the project root (tests/bench/ir.sh runs this):
--   lua5.4 tests/bench/ir.lua [echo|chat|tls|handshake] [CONNECTIONS] [SECONDS] [SERVER]
--   SERVER: luahost (default), c, python, luv, cqueues, copas (chat; tls, echo over TLS;
--   handshake, TLS handshakes: luahost, c).
--   IR_HOST=PATH measures another build of the luahost executable; IR_KEEP=FILE keeps
--   the dump for callgrind_annotate.

local common = dofile("tests/bench/common.lua")

local M = {}

M.WARMUP = 1 -- seconds of load before the counters are zeroed

-- Allocation, counted two ways. Every server's calls into the C library's heap (what
-- all of them share; CPython serves objects of up to 512 bytes from its own pools, which
-- this does not see), and for the Lua servers their Lua allocator function (luahost's
-- blocks_alloc, or budget_alloc under --max-memory; lua5.4's l_alloc), which every
-- allocation and free of a Lua object goes through.
local HEAP = { malloc = true, calloc = true, realloc = true, free = true }
local LUA_ALLOC = { budget_alloc = true, blocks_alloc = true, l_alloc = true }

-- Reads a callgrind dump (Ir only): the total, and by function name its self and
-- inclusive instructions and the calls made to it, by caller. Names are compressed: "(ID) NAME" the
-- first time, "(ID)" after that.
function M.read_dump(path)
  local d = { self = {}, incl = {}, calls = {} }
  local names, fn, callee, call_cost = {}, "?", "?", false
  local function name_of(spec)
    local id, name = spec:match("^(%(%d+%))%s*(.*)$")
    if not id then return spec end
    if name ~= "" then names[id] = name end
    return names[id] or id
  end
  for line in io.lines(path) do
    local cost = line:match("^[%d%+%-%*]%S*%s+(%d+)")
    if cost then
      cost = tonumber(cost)
      d.incl[fn] = (d.incl[fn] or 0) + cost
      if not call_cost then d.self[fn] = (d.self[fn] or 0) + cost end
      call_cost = false -- the line after calls= is that call's inclusive cost
    elseif line:match("^fn=") then
      fn = name_of(line:sub(4))
    elseif line:match("^cfn=") then
      callee = name_of(line:sub(5))
    elseif line:match("^calls=") then
      local by = d.calls[callee] or {}
      d.calls[callee] = by
      by[fn] = (by[fn] or 0) + tonumber(line:match("^calls=(%d+)"))
      call_cost = true
    elseif line:match("^summary:") then
      d.total = tonumber(line:match("(%d+)"))
    end
  end
  return d
end

-- Calls into the functions of set from outside it (realloc(NULL, n) calling malloc is
-- one allocation).
local function count_calls(d, set)
  local n = 0
  for name, by in pairs(d.calls) do
    if set[name] then
      for caller, calls in pairs(by) do
        if not set[caller] then n = n + calls end
      end
    end
  end
  return n
end

-- The functions with the most inclusive instructions, as {name, incl, self}, leaving out
-- those that hold nearly the whole window (main, the loop, the batch: everything is under
-- them), callgrind's entries for deeper recursion levels (NAME'2) and those it knows only
-- by address (0x...: code without a symbol, such as PLT stubs; callers count it inclusively).
function M.top(d, n)
  local list = {}
  for name, incl in pairs(d.incl) do
    if not name:find("'%d+$") and not name:find("^0x") and incl < 0.95 * d.total then
      list[#list + 1] = { name = name, incl = incl, self = d.self[name] or 0 }
    end
  end
  table.sort(list, function(a, b) return a.incl > b.incl end)
  for i = #list, n + 1, -1 do list[i] = nil end
  return list
end

-- Whether the server pid (still alive: the port answering is its own) listens on port
-- within a minute (callgrind starts a Python slowly).
local function listening(pid, port)
  for _ = 1, 60 do
    if not common.alive(pid) then return false end
    if common.sh(string.format("%s/loadgen --mode probe --port %d --cap 1 2>/dev/null",
                               common.BIN, port)) then
      return common.alive(pid)
    end
  end
  return false
end

-- Measures server (an entry of common.ECHO_SERVERS or CHAT_SERVERS) under mode's load.
-- Returns msgs, instructions, per_msg, heap and lua_alloc (calls per message), top (for
-- M.top) and dump (the kept dump's path, when keep is given); or skipped = why.
function M.measure(server, mode, conns, secs, opts)
  opts = opts or {}
  if server.max_conns and conns > server.max_conns then
    return { skipped = string.format("cannot serve %d connections", conns) }
  end
  local no_tls = server.tls and common.tls_missing(server)
  if no_tls then return { skipped = no_tls } end
  local dir = common.capture("mktemp -d")
  local port = common.free_port()
  local cmd = common.command(server, port)
  if opts.host and server.key == "luahost" then
    cmd = opts.host .. cmd:sub(#"build/luahost" + 1)
  end
  -- An environment the command sets (env "VAR=..." server ...) goes before valgrind,
  -- which would otherwise measure env and not follow it into the server.
  local env, rest = cmd:match('^(env "[^"]*" )(.*)$')
  cmd = rest or cmd
  local pid = tonumber(common.capture(string.format(
    "sh -c 'exec %svalgrind --tool=callgrind --callgrind-out-file=%s/out %s >%s/log 2>&1"
      .. " </dev/null' & echo $!", env or "", dir, cmd, dir)))
  local r = { skipped = "did not start under callgrind" }
  if listening(pid, port) then
    local cap = M.WARMUP + secs + 60
    r = common.parse(common.capture(string.format(
      "timeout -k 5 %d %s/loadgen --mode %s --port %d -c %d -s 64 -d 1 --warmup %g"
        .. " --duration %g --cap %d --at-start 'callgrind_control -z %d >/dev/null'"
        .. " --at-end 'callgrind_control -d %d >/dev/null'%s 2>&1", cap + 10, common.BIN, mode,
      port, conns, M.WARMUP, secs, cap, pid, pid, server.tls and " --tls" or "")))
  end
  common.stop(pid, 100) -- callgrind may still be writing
  local dump = dir .. "/out.1"
  if not r.skipped and not io.open(dump) then
    r = { skipped = "no dump: the load generator said " .. (r.first_error or "nothing") }
  elseif not r.skipped and (r.errors or 1) > 0 then
    r = { skipped = "load errors: " .. tostring(r.first_error):gsub("_", " ") }
  end
  if not r.skipped then
    local d = M.read_dump(dump)
    r.instructions, r.dump_data = d.total, d
    r.per_msg = d.total / r.msgs
    r.heap = count_calls(d, HEAP) / r.msgs
    local lua_alloc = count_calls(d, LUA_ALLOC)
    r.lua_alloc = lua_alloc > 0 and lua_alloc / r.msgs or nil
    if opts.keep then common.sh(string.format("cp %s %s", dump, opts.keep)) end
  end
  common.sh("rm -rf " .. dir)
  return r
end

-- Command line ----------------------------------------------------------------------------

if arg and arg[0] and arg[0]:match("ir%.lua$") then
  local mode, conns = arg[1] or "echo", tonumber(arg[2]) or 100
  local secs, key = tonumber(arg[3]) or 3, arg[4] or "luahost"
  local server = common.server(mode, key)
  if not server then
    common.die("usage: ir.sh [echo|chat|tls|handshake] [CONNECTIONS] [SECONDS] [SERVER];"
                 .. " SERVER is one of c, luahost, python, luv, cqueues, copas (chat, tls,"
                 .. " handshake: c, luahost)")
  end
  common.build_tools()
  local r = M.measure(server, mode == "tls" and "echo" or mode, conns, secs,
                      { host = os.getenv("IR_HOST"), keep = os.getenv("IR_KEEP") })
  common.cleanup()
  if r.skipped then common.die("%s: %s", key, r.skipped) end
  print(string.format("server=%s mode=%s connections=%d msgs=%d instructions=%d"
                        .. " per_message=%.0f heap_calls_per_message=%.2f"
                        .. " lua_alloc_per_message=%s", key, mode, conns, r.msgs,
                      r.instructions, r.per_msg, r.heap,
                      r.lua_alloc and string.format("%.2f", r.lua_alloc) or "-"))
  if os.getenv("IR_TOP") then
    for _, f in ipairs(M.top(r.dump_data, tonumber(os.getenv("IR_TOP")) or 10)) do
      print(string.format("%9.0f %5.1f%%  self %7.0f  %s", f.incl / r.msgs,
                          100 * f.incl / r.instructions, f.self / r.msgs, f.name))
    end
  end
end

return M
