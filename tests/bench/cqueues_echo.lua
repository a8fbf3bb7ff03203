-- cqueues_echo.lua: an echo server in cqueues' own style (its examples' echo.srv): one
-- coroutine per client, reading lines ("*L" keeps the newline) and writing them back.
-- The bench's echo messages end in a newline, so line servers echo every byte; binary
-- mode keeps cqueues from turning "\n" into "\r\n", line buffering flushes each line.
-- Usage: lua5.4 cqueues_echo.lua PORT
local cqueues = require "cqueues"
local socket = require "cqueues.socket"

local srv = socket.listen("127.0.0.1", tonumber(arg[1]))
local loop = cqueues.new()

loop:wrap(function()
  for con in srv:clients() do
    loop:wrap(function()
      con:setmode("b", "bl")
      for ln in con:lines("*L") do
        con:write(ln)
      end
      con:shutdown("w")
    end)
  end
end)

while not loop:empty() do
  local ok, err = loop:step()
  if not ok then error("loop.step: " .. err) end
end
