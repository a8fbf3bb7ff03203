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

-- Regression: the budget's counting hook, set on a coroutine by a watchdog tick while a
-- callback resumed it, stayed on the coroutine after the callback, so every later resume
-- of it (a long-lived task) ran with a hook: every instruction through the VM's hook path.
local RESUMER = [[
local luahost = require "luahost"
local co = coroutine.create(function()
  while true do
    -- 300 ms of CPU, nearly all in user space (which is what the watchdog's ticks
    -- count), so that they arm the count
    local t = os.clock()
    repeat for _ = 1, 1e6 do end until os.clock() - t > 0.3
    coroutine.yield()
  end
end)
luahost.after(0.01, function()
  coroutine.resume(co)
  print("after", debug.gethook(co))
end)
luahost.after(0.3, function()
  print("later", debug.gethook(co))
  luahost.stop()
end)
]]

describe("a coroutine resumed by a callback that ran long", function()
  it("keeps no counting hook once the resume returns", function()
    -- (a budget it cannot reach in 300 ms, so that it arms but never trips)
    local r = T.run({"--max-instructions", "2147483647", T.tempfile(RESUMER)})
    assert.equal(0, r.code, tostring(r))
    assert.equal("after\tnil\nlater\tnil\n", r.stdout)
  end)
end)
