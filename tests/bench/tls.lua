-- tls.lua: the TLS part of `make bench` (issue 13): its scenarios, its tables and its
-- targets, for run.lua, which passes its table helpers in. Loaded with dofile.

local common = dofile("tests/bench/common.lua")

local M = {}

local SERVERS = common.TLS_ECHO_SERVERS

M.SCENARIOS = {
  { id = "tls-echo-100", mode = "echo", tls = true, c = 100, s = 64, d = 1, servers = SERVERS,
    title = "echo over TLS 1.3, 100 connections, 64 B, 1 in flight" },
  -- 16 at a time keep the server busy while the load generator, whose side of a handshake
  -- costs more than the server's, still has CPU to spare for it.
  -- Four rounds, not two: the same server's CPU per handshake spread 297-441 µs from one
  -- round to the next in one run here, where its instructions vary under 1%.
  { id = "tls-handshake", mode = "handshake", tls = true, c = 16, s = 64, d = 1, rounds = 4,
    servers = SERVERS, title = "TLS handshakes: 16 at a time, each a new connection, a full"
      .. " handshake, one 64 B round trip and a close" },
}

-- Under callgrind too: echo at run.lua's 100 connections, and handshakes, whose rate on
-- the clock the load generator bounds, at the same 16 at a time.
M.IR_MODES = {
  { id = "ir-tls", key = "tls", mode = "echo", servers = SERVERS },
  { id = "ir-tls-handshake", key = "tls_handshake", mode = "handshake", conns = 16,
    servers = SERVERS },
}
M.IR_TITLES = {
  tls = "Instructions per echoed message over TLS (callgrind, 100 connections, 64 B, 1 in"
    .. " flight)",
  tls_handshake = "Instructions per TLS handshake (callgrind, 16 at a time; each a new"
    .. " connection, a full handshake, one 64 B round trip and a close)",
}

-- What the handshakes negotiated, as the load generator saw it (protocol, cipher, key
-- exchange group, the certificate's key), for the line under a table.
function M.note(res)
  for _, s in ipairs(res.servers) do
    local p = res.by_key[s.key]
    if p and not p.skipped and p.tls and p.tls ~= "-" then
      return "\n\nNegotiated (protocol/cipher/group/certificate key): " .. p.tls .. "."
    end
  end
  return ""
end

-- The server's handshakes per second on a whole core of its own: what the rate would be
-- if the load generator, not the server, were not the bound (1 / CPU per handshake).
local function capacity(p)
  return p.cpu_us and p.cpu_us > 0 and 1e6 / p.cpu_us or nil
end

function M.handshake_table(res, h)
  local ref = res.by_key.c or {}
  local rows = {}
  for _, s in ipairs(res.servers) do
    local p = res.by_key[s.key]
    if p.skipped then
      rows[#rows + 1] = { s.name, "n/a", "", "", "", "", "", "", "", p.skipped }
    else
      rows[#rows + 1] = {
        s.name, h.fmt(p.rate), h.ratio(p.rate, ref.rate), h.fmt(p.p50 / 1000, "%.1f"),
        h.fmt(p.p99 / 1000, "%.1f"), h.fmt(p.cpu_us), h.ratio(p.cpu_us, ref.cpu_us),
        h.fmt(capacity(p)), string.format("%.0f%% / %.0f%%", p.srv_util * 100, p.lg * 100),
        h.flags(p),
      }
    end
  end
  return h.md_table({ "server", "handshakes/s", "vs C", "p50 ms", "p99 ms",
                      "CPU µs/handshake", "CPU vs C", "handshakes/s per server core",
                      "CPU server / load", "notes" }, rows) .. M.note(res)
end

-- A measured value against a lower limit.
local function at_least(value, limit)
  local by = (value / limit - 1) * 100
  if value >= limit then return string.format("met, %.0f%% over", by) end
  return string.format("**missed** by %.0f%%", -by)
end

-- The issue's two targets, each as a row through add(scenario, target, measured, verdict).
-- While luahost has no TLS the rows say so instead of a verdict.
function M.targets(results, h, add)
  local echo, hs = results["tls-echo-100"], results["tls-handshake"]
  for _, item in ipairs({ { echo, "total CPU/msg ≤ 1.15x the C TLS server's" },
                          { hs, "handshakes/s ≥ 0.9x the C TLS server's" } }) do
    local res, target = item[1], item[2]
    local lh, c = res and res.by_key.luahost, res and res.by_key.c
    if lh and c and (lh.skipped or c.skipped) then
      add(res.scenario.id, target, lh.skipped or c.skipped, "n/a")
    elseif lh and c and res == echo then
      local r = lh.cpu_us / c.cpu_us
      add(res.scenario.id, target, string.format("%.2f vs %.2f µs (%.2fx)", lh.cpu_us,
                                                 c.cpu_us, r), h.against(r, 1.15))
    elseif lh and c then
      -- A load generator at its limit, or other load, sets both rates: then the servers'
      -- handshakes per core (their CPU per handshake) decide, as run.lua's `ahead` does.
      local bound = (lh.saturated or c.saturated) and "load-bound"
        or (lh.other > h.DISTURBED or c.other > h.DISTURBED) and "other load"
      local a, b = lh.rate, c.rate
      if bound then a, b = capacity(lh), capacity(c) end
      add(res.scenario.id, target, string.format("%s%.0f vs %.0f (%.2fx)",
                                                 bound and bound .. ", so per server core: "
                                                   or "", a, b, a / b), at_least(a / b, 0.9))
    end
  end
end

-- "luahost N (C M)" from a callgrind table, or nil.
local function ir_pair(res, thousands)
  local lh, c = res and res.by_key.luahost, res and res.by_key.c
  if not (lh and c) or lh.skipped or c.skipped then return nil end
  return string.format("%s (C %s)", thousands(lh.per_msg), thousands(c.per_msg))
end

-- The headline's TLS line, or nil when no TLS scenario ran.
function M.headline(results, irres, thousands)
  local echo, hs = results["tls-echo-100"], results["tls-handshake"]
  local any = echo or hs or irres.tls or irres.tls_handshake
  local lh = any and any.by_key.luahost
  if not lh then return nil end
  if lh.skipped then return "- TLS: " .. lh.skipped .. "." end
  local parts = {}
  local ie, ih = ir_pair(irres.tls, thousands), ir_pair(irres.tls_handshake, thousands)
  if ie then parts[#parts + 1] = "instructions per echoed message " .. ie end
  if ih then parts[#parts + 1] = "per full handshake " .. ih end
  local e_lh, e_c = echo and echo.by_key.luahost, echo and echo.by_key.c
  if e_lh and e_c and not e_lh.skipped and not e_c.skipped then
    parts[#parts + 1] = string.format("echo %.2f CPU-µs per message, %.2fx the C OpenSSL"
                                        .. " server's", e_lh.cpu_us, e_lh.cpu_us / e_c.cpu_us)
  end
  local h_lh, h_c = hs and hs.by_key.luahost, hs and hs.by_key.c
  if h_lh and h_c and not h_c.skipped and not h_lh.skipped then
    parts[#parts + 1] = string.format("%.0f CPU-µs per full handshake (C %.0f)", h_lh.cpu_us,
                                      h_c.cpu_us)
  end
  return #parts > 0 and "- TLS: " .. table.concat(parts, "; ") .. "." or nil
end

return M
