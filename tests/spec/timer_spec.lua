-- timer_spec.lua: proves luahost.after / luahost.every fire in deadline order, repeat,
-- cancel (even from their own callback), survive a callback error, shorten the loop's
-- wait without spinning on sub-millisecond deadlines, and that luahost.now is monotonic.
local luahost = require "luahost"
local helpers = require "support.helpers"

-- Cancels whatever a test left scheduled, so one failure does not leak into the next.
local scheduled = {}
local function track(timer)
  scheduled[#scheduled + 1] = timer
  return timer
end

local function after(seconds, fn)
  return track(luahost.after(seconds, fn))
end

local function every(seconds, fn)
  return track(luahost.every(seconds, fn))
end

after_each(function()
  for _, t in ipairs(scheduled) do
    t:cancel()
  end
  scheduled = {}
end)

describe("luahost.now", function()
  it("returns seconds as a number", function()
    assert.equals("number", type(luahost.now()))
  end)

  it("never goes backwards", function()
    local last = luahost.now()
    for _ = 1, 100000 do
      local t = luahost.now()
      assert(t >= last, "luahost.now went backwards")
      last = t
    end
  end)

  it("advances by the time waited", function()
    local t0 = luahost.now()
    helpers.sleep(0.05)
    local dt = luahost.now() - t0
    assert.is_true(dt >= 0.049 and dt < 1, ("slept 0.05 s, now advanced %.4f s"):format(dt))
  end)
end)

describe("luahost.after", function()
  it("runs its callback once, not before the delay, passing the timer", function()
    local t0 = luahost.now()
    local calls, fired_at, arg = 0, nil, nil
    local timer = after(0.03, function(t)
      calls = calls + 1
      fired_at = luahost.now()
      arg = t
    end)
    assert.is_true(timer:active())
    assert.matches("^luahost.timer %(due in", tostring(timer))
    helpers.step_until(function()
      return calls > 0
    end, 2, "the timer")
    assert.is_true(fired_at - t0 >= 0.03, ("fired after %.4f s"):format(fired_at - t0))
    assert.equals(timer, arg)
    assert.is_false(timer:active())
    assert.equals("luahost.timer (idle)", tostring(timer))
    local deadline = luahost.now() + 0.05
    while luahost.now() < deadline do
      luahost.step(0.01)
    end
    assert.equals(1, calls)
  end)

  it("fires timers in deadline order, whatever order they were made in", function()
    local order = {}
    for _, d in ipairs({0.03, 0.01, 0.05, 0.02, 0.04}) do
      after(d, function()
        order[#order + 1] = d
      end)
    end
    helpers.step_until(function()
      return #order == 5
    end, 2, "five timers")
    assert.same({0.01, 0.02, 0.03, 0.04, 0.05}, order)
  end)

  it("fires timers due at the same moment in the order they were made", function()
    local order = {}
    for i = 1, 10 do
      after(0, function()
        order[#order + 1] = i
      end)
    end
    helpers.step_until(function()
      return #order == 10
    end, 2, "ten timers")
    assert.same({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, order)
  end)

  it("runs a zero-delay timer on the next step", function()
    local ran = false
    after(0, function()
      ran = true
    end)
    luahost.step(0)
    assert.is_true(ran)
  end)

  it("keeps a timer nobody references alive until it fires", function()
    local ran = false
    luahost.after(0.01, function()
      ran = true
    end)
    collectgarbage()
    collectgarbage()
    helpers.step_until(function()
      return ran
    end, 2, "an unreferenced timer")
  end)

  it("a timer that reschedules itself with after(0) does not starve the loop", function()
    local runs = 0
    local function again()
      runs = runs + 1
      if runs < 1000 then
        after(0, again)
      end
    end
    after(0, again)
    local t0 = luahost.now()
    luahost.step(0)
    assert.is_true(luahost.now() - t0 < 1, "one step ran for a second")
    assert.is_true(runs < 1000, "one step ran every rescheduled timer")
    helpers.step_until(function()
      return runs == 1000
    end, 5, "the chain of timers")
  end)

  it("raises on a negative or NaN delay and on a callback that is not a function", function()
    assert.error_matches(function()
      luahost.after(-1, function() end)
    end, "delay must be 0 or more seconds", 1, true)
    assert.error_matches(function()
      luahost.after(0 / 0, function() end)
    end, "delay is NaN, not a number of seconds", 1, true)
    assert.error_matches(function()
      luahost.after(1, "not a function")
    end, "function expected")
    assert.has_error(function()
      luahost.after("soon", function() end)
    end)
  end)
end)

describe("luahost.every", function()
  it("repeats at its interval until cancelled", function()
    local times = {}
    local t0 = luahost.now()
    local timer = every(0.01, function()
      times[#times + 1] = luahost.now()
    end)
    helpers.step_until(function()
      return #times >= 5
    end, 2, "five ticks")
    -- tick k is due k intervals after scheduling, and never fires before it is due
    for k, t in ipairs(times) do
      assert.is_true(t - t0 >= k * 0.01, ("tick %d came after %.4f s"):format(k, t - t0))
    end
    assert.is_true(timer:active())
    timer:cancel()
    assert.is_false(timer:active())
    local n = #times
    local deadline = luahost.now() + 0.05
    while luahost.now() < deadline do
      luahost.step(0.01)
    end
    assert.equals(n, #times, "the timer ticked after cancel")
  end)

  it("stops for good when cancelled from inside its own callback", function()
    local calls = 0
    every(0.005, function(t)
      calls = calls + 1
      t:cancel()
    end)
    helpers.step_until(function()
      return calls > 0
    end, 2, "the first tick")
    local deadline = luahost.now() + 0.05
    while luahost.now() < deadline do
      luahost.step(0.01)
    end
    assert.equals(1, calls)
  end)

  it("raises on an interval that is not positive", function()
    for _, bad in ipairs({0, -1, -math.huge}) do
      assert.error_matches(function()
        luahost.every(bad, function() end)
      end, "interval must be positive", 1, true)
    end
    assert.error_matches(function()
      luahost.every(0 / 0, function() end)
    end, "interval is NaN, not a number of seconds", 1, true)
  end)

  -- Regression: after(1e308) said "must be 0 or more seconds", a bound it met.
  it("raises on a delay or interval too long to keep, naming the bound", function()
    for _, bad in ipairs({1e9, 1e308, math.huge}) do
      assert.error_matches(function()
        luahost.after(bad, function() end)
      end, "delay must be under 1000000000 seconds (about 31 years)", 1, true)
      assert.error_matches(function()
        luahost.every(bad, function() end)
      end, "interval must be under 1000000000 seconds (about 31 years)", 1, true)
    end
    local t = luahost.after(1e9 - 1, function() end) -- just below is kept
    assert.is_true(t:active())
    t:cancel()
  end)
end)

describe("a timer's cancel", function()
  it("keeps a timer from ever running, and may be called again", function()
    local ran = false
    local timer = after(0.01, function()
      ran = true
    end)
    timer:cancel()
    assert.is_false(timer:active())
    timer:cancel()
    local deadline = luahost.now() + 0.05
    while luahost.now() < deadline do
      luahost.step(0.01)
    end
    assert.is_false(ran)
  end)

  it("called on a timer due in the same round keeps it from running", function()
    local ran = {}
    local second
    after(0, function()
      ran[#ran + 1] = "first"
      second:cancel()
    end)
    second = after(0, function()
      ran[#ran + 1] = "second"
    end)
    luahost.step(0)
    luahost.step(0)
    assert.same({"first"}, ran)
  end)

  it("from inside an after callback is harmless", function()
    local calls = 0
    after(0, function(t)
      calls = calls + 1
      t:cancel()
    end)
    luahost.step(0)
    luahost.step(0)
    assert.equals(1, calls)
  end)
end)

describe("a timer callback that raises", function()
  it("does not stop other timers or the loop", function()
    local ran = {}
    after(0, function()
      error("timer failed on purpose")
    end)
    after(0, function()
      error({"a table"})
    end)
    after(0.01, function()
      ran[#ran + 1] = "after"
    end)
    assert.has_no.errors(function()
      luahost.step(0)
    end)
    helpers.step_until(function()
      return #ran == 1
    end, 2, "the timer after the failing ones")
  end)

  it("is logged with its message and a traceback", function()
    local out = helpers.run_lua([[
      local luahost = require "luahost"
      luahost.after(0, function() error("timer failed on purpose") end)
      luahost.step(0)
      print("still running")
    ]])
    assert.matches("error in timer: [^\n]*timer failed on purpose", out)
    assert.matches("stack traceback", out, 1, true)
    assert.matches("still running", out, 1, true)
  end)
end)

describe("timers and the loop's wait", function()
  it("a pending timer shortens luahost.step's wait", function()
    local ran = false
    after(0.05, function()
      ran = true
    end)
    local t0 = luahost.now()
    luahost.step(10)
    local waited = luahost.now() - t0
    assert.is_true(waited < 1, ("step(10) waited %.3f s with a timer due in 0.05 s"):format(waited))
    assert.is_true(ran)
  end)

  it("a sub-millisecond timer fires in a handful of steps, without busy-spinning", function()
    local fired = false
    after(0.0005, function()
      fired = true
    end)
    local steps, t0 = 0, luahost.now()
    while not fired do
      assert(luahost.now() - t0 < 1, "a 0.0005 s timer did not fire within 1 s")
      luahost.step(1)
      steps = steps + 1
    end
    assert.is_true(steps <= 5, steps .. " steps to fire a 0.0005 s timer")
  end)

  it("a 1 ms repeating timer does not make the loop spin between ticks", function()
    local ticks = 0
    every(0.001, function()
      ticks = ticks + 1
    end)
    local steps, t0 = 0, luahost.now()
    while luahost.now() - t0 < 0.05 do
      luahost.step(1)
      steps = steps + 1
    end
    assert.is_true(ticks >= 5, ticks .. " ticks in 50 ms")
    assert.is_true(steps <= 3 * ticks + 5, ("%d steps for %d ticks"):format(steps, ticks))
  end)

  it("luahost.run runs timers and returns \"idle\" once none is left", function()
    local ran = 0
    after(0.01, function()
      ran = ran + 1
      after(0.01, function()
        ran = ran + 1
      end)
    end)
    assert.equals("idle", luahost.run({timeout = 5}))
    assert.equals(2, ran)
  end)
end)

describe("when the timer specs are done", function()
  it("no timer is left and nothing is registered", function()
    assert.is_nil(next(luahost.selector:get_map()))
    assert.equals("idle", luahost.run({timeout = 0}))
  end)
end)
