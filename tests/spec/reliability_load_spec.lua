-- reliability_load_spec.lua: errors while a script loads, strings or not, are reported on
-- one line that says at least what `lua5.4 script.lua` says on its first line, and names
-- the script and the line that raised: at start (stderr, exit status 1) and on a reload
-- (the log; the running script goes on).
local T = require "luahost.test"

-- Error values raised on line 2, with the message each is reported with.
local CASES = {
  {"a table", "error({})", "(error object is a table value)"},
  {"nil", "error(nil)", "(error object is a nil value)"},
  {"a boolean", "error(true)", "(error object is a boolean value)"},
  {"a number", "error(42)", "42"},
  {"an object with __tostring",
    "error(setmetatable({}, {__tostring = function() return 'broken config' end}))",
    "broken config"},
  {"a string", "error('broken config')", "broken config"},
}

local function script_raising(chunk)
  return T.tempfile("local x = 1\n" .. chunk .. "\n")
end

local function first_line(text)
  return text:match("^[^\n]*")
end

describe("reliability: errors while the script loads", function()
  for _, case in ipairs(CASES) do
    local what, chunk, message = case[1], case[2], case[3]

    it("raised as " .. what .. ": the first line says at least what lua5.4 says", function()
      local path = script_raising(chunk)
      -- (the sanitizer runtime a sanitized build preloads is meant for luahost, not lua5.4)
      local lua = T.run_command({"lua5.4", path}, {env = {LD_PRELOAD = false}, timeout = 10})
      local host = T.run({path}, {timeout = 10})
      assert.same({"exit", 1}, {host.how, host.code}, tostring(host))
      local said = assert(first_line(lua.stderr):match("^lua5%.4: (.*)$"), lua.stderr)
      local line = first_line(host.stderr)
      assert(line:sub(1, #"luahost: ") == "luahost: " and line:sub(-#said) == said,
        ("lua5.4 says %q; luahost says %q"):format(said, line))
    end)

    it("raised as " .. what .. ": the traceback at --log-level debug names the script's "
      .. "line", function()
      local path = script_raising(chunk)
      local r = T.run({"--log-level", "debug", path}, {timeout = 10})
      assert.same({"exit", 1}, {r.how, r.code}, tostring(r))
      -- (An object with __tostring stands for itself in lua5.4 too: no traceback.)
      if what ~= "an object with __tostring" then
        assert(r.stderr:find(path .. ":2: in main chunk", 1, true), tostring(r))
      end
    end)

    it("raised as " .. what .. ": one line on stderr naming the script and the line, exit "
      .. "status 1", function()
      local path = script_raising(chunk)
      local r = T.run({path}, {timeout = 10})
      assert.same({"exit", 1}, {r.how, r.code}, tostring(r))
      assert.equal("luahost: " .. path .. ":2: " .. message .. "\n", r.stderr, tostring(r))
      assert.equal("", r.stdout)
    end)
  end

  it("raised as a table by a reloaded script: refused with the script's name and line, "
    .. "and the running script goes on", function()
    local echo = assert(io.open("scripts/echo.lua", "rb"))
    local path = T.tempfile(echo:read("a"))
    echo:close()
    local server = T.spawn(path)
    local c = T.client("127.0.0.1", server.port, {timeout = 5})
    c:echo("before")
    local f = assert(io.open(path, "wb"))
    f:write("local x = 1\nerror({})\n")
    f:close()
    server:signal("HUP")
    local line = server:wait_log("(reload rejected.*)$", 5)
    assert(line:find(path .. ":2: (error object is a table value)", 1, true),
      "the rejection does not name the script's line: " .. line)
    c:echo("after")
    T.assert_graceful_stop(server)
  end)
end)
