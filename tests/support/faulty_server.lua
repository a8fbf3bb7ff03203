-- faulty_server.lua: an echo server whose callbacks misbehave on request, for the
-- reliability specs. A client sends one command (a whole recv, no newline needed); any
-- other bytes are echoed. Usage: luahost [options] faulty_server.lua [[HOST:]PORT]
--
--   errors:   table, nil, tostring, number     error() with a value that is not a string
--   runaway:  spin                  while true do end
--             spin-pcall            the same, inside pcall, over and over
--             spin-coroutine        the same, in a coroutine made by the callback
--             spin-old-coroutine    the same, in a coroutine made when the script loaded
--             spin-resume           the same, in a coroutine run by coroutine.resume
--             spin-nested-coroutine the same, in a coroutine inside a coroutine
--             spin-after-coroutine  the same, in the callback, after a coroutine yielded
--   memory:   hog                   a table grown until memory runs out (garbage after)
--             bigstring             one string of 256 MiB
--             hoard SECONDS         memory held up to the limit for SECONDS, then freed
--   misuse:   register-twice, unregister-unknown, modify-bad, modify-unknown,
--             register-closed, use-closed, register-bad-fd, step-inside, close-selector
local luahost = require "luahost"

local sel, READ = luahost.selector, luahost.EVENT_READ
local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 0))

local function spin()
  local n = 0
  while true do n = n + 1 end
end

local old_coroutine = coroutine.wrap(spin) -- made while the script loads
local hoard -- memory held on purpose by "hoard"

local on_read

local commands = {
  table = function() error({}) end,
  ["nil"] = function() error(nil) end,
  tostring = function()
    error(setmetatable({}, {__tostring = function() return "a custom error object" end}))
  end,
  number = function() error(42) end,

  spin = spin,
  ["spin-pcall"] = function()
    while true do pcall(spin) end
  end,
  ["spin-coroutine"] = function() coroutine.wrap(spin)() end,
  ["spin-old-coroutine"] = function() old_coroutine() end,
  ["spin-resume"] = function() coroutine.resume(coroutine.create(spin)) end,
  ["spin-nested-coroutine"] = function()
    coroutine.wrap(function() coroutine.wrap(spin)() end)()
  end,
  ["spin-after-coroutine"] = function() -- the loop is back in the callback's own thread
    local co = coroutine.wrap(function() for _ = 1, 10 do coroutine.yield() end end)
    co()
    spin()
  end,

  hog = function()
    local t = {}
    for i = 1, math.huge do t[i] = {i} end
    return #t
  end,
  bigstring = function() return ("x"):rep(256 * 1024 * 1024) end,

  ["register-twice"] = function(conn) sel:register(conn, READ, on_read) end,
  ["unregister-unknown"] = function()
    local s <close> = luahost.socket("inet", "stream")
    sel:unregister(s)
  end,
  ["modify-bad"] = function(conn) sel:modify(conn, 4, on_read) end,
  ["modify-unknown"] = function()
    local s <close> = luahost.socket("inet", "stream")
    sel:modify(s, READ, on_read)
  end,
  ["register-closed"] = function()
    local s = luahost.socket("inet", "stream")
    s:close()
    sel:register(s, READ, on_read)
  end,
  ["use-closed"] = function()
    local s = luahost.socket("inet", "stream")
    s:close()
    s:send("x")
  end,
  ["register-bad-fd"] = function() sel:register(1000000, READ, on_read) end,
  ["step-inside"] = function() luahost.step(0) end,
  ["close-selector"] = function() sel:close() end,
}

on_read = function(conn)
  local data, err = conn:recv(65536)
  if data == nil then
    if err ~= "wouldblock" then conn:abort() end
    return
  end
  if data == "" then return conn:close() end
  local word, rest = data:match("^(%S+)%s*(.-)%s*$")
  if word == "hoard" then
    -- Hold memory up to the limit for a while: everything that needs memory meanwhile
    -- fails (accepting included), then it is freed and the host should serve again.
    luahost.after(tonumber(rest) or 0.5, function()
      if hoard then hoard = nil end
      collectgarbage()
    end)
    hoard = {}
    pcall(function()
      for i = 1, math.huge do hoard[i] = {i} end
    end)
    return
  end
  local command = commands[word]
  if command then
    command(conn)
    conn:write("survived " .. word)
  else
    conn:write(data)
  end
end

local server = assert(luahost.listen(host, port))
sel:register(server, READ, function(listener)
  local conn = listener:accept()
  if conn then sel:register(conn, READ, on_read) end
end)
