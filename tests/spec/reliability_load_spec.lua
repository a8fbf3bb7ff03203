-- reliability_load_spec.lua: errors while a script loads, strings or not, are reported on
-- one line that says at least what `lua5.4 script.lua` says on its first line, and names
-- the script and the line that raised: at start (stderr, exit status 1) and on a reload
-- (the log; the running script goes on).
local process = require "support.process"
local client = require "support.client"
local rel = require "support.reliability"


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
  return process.temp_file("local x = 1\n" .. chunk .. "\n", ".lua")
end

local function first_line(text)
  return text:match("^[^\n]*")
end

describe("reliability: errors while the script loads", function()
  after_each(rel.stop_processes)

  for _, case in ipairs(CASES) do
    local what, chunk, message = case[1], case[2], case[3]

    it("raised as " .. what .. ": the first line says at least what lua5.4 says", function()
      local path = script_raising(chunk)
      local lua = process.run({"env", "-u", "LD_PRELOAD", "lua5.4", path}, 10)
      local host = process.run_luahost({path}, 10)
      assert.same({"exit", 1}, {host.how, host.code}, rel.show_run(host))
      local said = assert(first_line(lua.stderr):match("^lua5%.4: (.*)$"), lua.stderr)
      local line = first_line(host.stderr)
      assert(line:sub(1, #"luahost: ") == "luahost: " and line:sub(-#said) == said,
        ("lua5.4 says %q; luahost says %q"):format(said, line))
    end)

    it("raised as " .. what .. ": the traceback at --log-level debug names the script's "
      .. "line", function()
      local path = script_raising(chunk)
      local r = process.run_luahost({"--log-level", "debug", path}, 10)
      assert.same({"exit", 1}, {r.how, r.code}, rel.show_run(r))
      -- (An object with __tostring stands for itself in lua5.4 too: no traceback.)
      if what ~= "an object with __tostring" then
        assert(r.stderr:find(path .. ":2: in main chunk", 1, true), rel.show_run(r))
      end
    end)

    it("raised as " .. what .. ": one line on stderr naming the script and the line, exit "
      .. "status 1", function()
      local path = script_raising(chunk)
      local r = process.run_luahost({path}, 10)
      assert.same({"exit", 1}, {r.how, r.code}, rel.show_run(r))
      assert.equal("luahost: " .. path .. ":2: " .. message .. "\n", r.stderr, rel.show_run(r))
      assert.equal("", r.stdout)
    end)
  end

  it("raised as a table by a reloaded script: refused with the script's name and line, "
    .. "and the running script goes on", function()
    local path = process.temp_file(process.read_file("scripts/echo.lua"), ".lua")
    local server = rel.start(path)
    local c = assert(client.connect("127.0.0.1", server.port))
    finally(function() c:close() end)
    rel.timed_echo(c, "before")
    process.write_file(path, "local x = 1\nerror({})\n")
    server:signal("HUP")
    local line = assert(server:wait_for_log("(reload rejected.*)$", 5))
    assert(line:find(path .. ":2: (error object is a table value)", 1, true),
      "the rejection does not name the script's line: " .. line)
    rel.timed_echo(c, "after")
    rel.assert_graceful_stop(server)
  end)
end)
