-- coroutine_spec.lua: under the executable, coroutine.resume and coroutine.wrap are the
-- host's guarded ones (a runaway loop inside a coroutine is caught by the instruction
-- budget), and they behave as Lua's own. Regression: a wrapped coroutine that raised
-- never ran its <close> variables, because the guard left out closing the dead thread.
local T = require "luahost.test"

local SCRIPT = [[
local closed = {}
local f = coroutine.wrap(function()
  local x <close> = setmetatable({}, {__close = function(_, e) closed[#closed + 1] = e end})
  error("boom", 0)
end)
print("wrap", pcall(f))
print("closed", #closed, closed[1])
local g = coroutine.wrap(function()
  local x <close> = setmetatable({}, {__close = function() error("in close", 0) end})
  error("first", 0)
end)
print("close error", pcall(g))
local h = coroutine.wrap(function() coroutine.yield(1) return 2 end)
print("yields", h(), h())
print("dead", pcall(h))
local co = coroutine.create(function() error("raised", 0) end)
print("resume", coroutine.resume(co))
]]

local EXPECTED = table.concat({
  "wrap\tfalse\tboom",
  "closed\t1\tboom",
  "close error\tfalse\tin close",
  "yields\t1\t2",
  "dead\tfalse\tcannot resume dead coroutine",
  "resume\tfalse\traised",
}, "\n") .. "\n"

describe("coroutines under the executable", function()
  it("close a wrapped coroutine's <close> variables when it raises, as Lua does", function()
    local path = T.tempfile(SCRIPT)
    local plain = T.run_command({"lua5.4", path})
    assert.equal(EXPECTED, plain.stdout, tostring(plain))
    local r = T.run({path})
    assert.equal(0, r.code, tostring(r))
    assert.equal(EXPECTED, r.stdout, "the host's coroutines differ from Lua's")
  end)

  it("are guarded only while the budget is on, and behave the same without it", function()
    local r = T.run({"--max-instructions", "0", T.tempfile(SCRIPT)})
    assert.equal(0, r.code, tostring(r))
    assert.equal(EXPECTED, r.stdout)
  end)
end)
