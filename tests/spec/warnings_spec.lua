-- warnings_spec.lua: Lua's warnings are logged by the executable: warn() from a script
-- (its pieces as one line; "@off" silences and "@on" restores, as in Lua's own handler),
-- and an error in a __gc finalizer, which Lua 5.4 reports only as a warning and would
-- otherwise vanish. The server goes on serving after a finalizer raised.
local T = require "luahost.test"

-- Echo, with commands: "garbage" leaves an object whose finalizer raises and collects it;
-- "off", "on" and anything starting with "say " go through warn().
local SCRIPT = [[
warn("loading", ", ", "in pieces")
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function(listener)
  local conn = listener:accept()
  if not conn then return end
  luahost.selector:register(conn, luahost.EVENT_READ, function(c)
    local data = c:recv(4096)
    if data == "" then c:close() return end
    if not data then return end
    local command = data:match("^(.-)\n$")
    if command == "garbage" then
      setmetatable({}, {__gc = function() error("finalizer failed on purpose") end})
      collectgarbage()
    elseif command == "off" or command == "on" then
      warn("@" .. command)
    elseif command and command:match("^say ") then
      warn(command:sub(5))
    end
    c:write(data)
  end)
end)
]]

-- The line of SCRIPT on which needle is.
local function line_of(needle)
  local before = SCRIPT:sub(1, assert(SCRIPT:find(needle, 1, true)))
  return select(2, before:gsub("\n", "")) + 1
end

-- The warnings in the log, without their time stamps.
local function warnings(p)
  local found = {}
  for _, line in ipairs(p:log_lines(" warn  warning: ", true)) do
    found[#found + 1] = line:match(" warn  warning: (.*)$")
  end
  return found
end

describe("Lua warnings in the executable", function()
  it("are logged: warn() whole, a finalizer's error with its message; @off silences both "
    .. "until @on", function()
    local path = T.tempfile(SCRIPT)
    local server = T.spawn(path)
    local c = T.client("127.0.0.1", server.port, {timeout = 5})
    for _, command in ipairs({"say first", "garbage", "off", "say silenced", "garbage", "on",
      "say last"}) do
      c:echo(command .. "\n")
    end
    server:wait_log("warning: last$", 5)
    assert.same({
      "loading, in pieces",
      "first",
      "error in __gc (" .. path .. ":" .. line_of("finalizer failed")
        .. ": finalizer failed on purpose)",
      "last",
    }, warnings(server))
    local other = T.client("127.0.0.1", server.port, {timeout = 5})
    other:echo("still serving")
    T.assert_graceful_stop(server)
  end)
end)
