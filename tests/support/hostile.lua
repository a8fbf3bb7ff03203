-- hostile.lua: runs tests/support/hostile.py, the hostile clients of the reliability
-- specs, bounded in time. The sanitizer runtime a sanitized build preloads is meant for
-- luahost, not python3, so it is left out.
local T = require "luahost.test"

return function(args, timeout)
  local argv = {"python3", "tests/support/hostile.py"}
  for _, a in ipairs(args) do argv[#argv + 1] = tostring(a) end
  return T.run_command(argv, {env = {LD_PRELOAD = false}, timeout = timeout})
end
