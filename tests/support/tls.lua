-- tls.lua: what the TLS specs share: a certificate made for the spec file (T.tls_cert)
-- and Python's ssl module as a client nobody here wrote (tests/e2e/tls_client.py).
local T = require "luahost.test"

local M = {}

M.SERVER = T.tls_cert()

-- Runs tests/e2e/tls_client.py MODE against the server process p, trusting M.SERVER.
function M.python(mode, p, ...)
  local argv = {"python3", "tests/e2e/tls_client.py", mode, "127.0.0.1", tostring(p.port),
    M.SERVER.cert}
  for _, a in ipairs({...}) do argv[#argv + 1] = tostring(a) end
  return T.run_command(argv, {env = {LD_PRELOAD = false}, timeout = 60})
end

-- Fails unless r exited 0, showing the server p's log.
function M.assert_exit0(r, p)
  if r.how ~= "exit" or r.code ~= 0 then
    error("expected exit 0: " .. tostring(r) .. "\nserver log:\n" .. p:stderr(), 2)
  end
end

return M
