-- chat.lua: what specs say to scripts/chat.lua through the kit's clients, beyond lines:
-- each line a JSON object, matched by the fields a test cares about, skipped to, or
-- asked for with /who. Every wait is bounded (3 s unless told) and names the client.
local T = require "luahost.test"
local cjson = require "cjson"

local now = require("luahost").now

local M = {}

M.TIMEOUT = 3

-- error() at the first caller outside this file and the kit, naming the spec's line.
local SOURCE = debug.getinfo(1, "S").source
local function fail(message)
  T.fail_outside(SOURCE, message)
end

-- A short, printable form of a message (or of any value) for failure messages.
function M.show(value)
  if type(value) ~= "table" then return tostring(value) end
  local ok, text = pcall(cjson.encode, value)
  return ok and text or tostring(value)
end

-- True if every field of want is equal in msg (arrays compared element by element).
function M.matches(want, msg)
  for k, v in pairs(want) do
    if type(v) == "table" then
      if type(msg[k]) ~= "table" or #msg[k] ~= #v then return false end
      for i = 1, #v do
        if msg[k][i] ~= v[i] then return false end
      end
    elseif msg[k] ~= v then
      return false
    end
  end
  return true
end

-- A kit client of host:port, labelled for failure messages.
function M.connect(host, port, label)
  local c = T.client(host, port, {timeout = M.TIMEOUT})
  c.label = label
  return c
end

-- Names whose leave messages M.next passes over: clients a spec used only to set up, whose
-- leave may reach a client that came after them (a server can take a new client before
-- it sees the old one close, and a leave from another server comes when Redis brings it).
M.ignored_leaves = {}

-- The next message c got, which must be a JSON object; fails naming what was awaited.
function M.next(c, what, timeout)
  local msg
  repeat
    msg = M.next_any(c, what, timeout)
  until not (msg.type == "leave" and M.ignored_leaves[msg.name])
  return msg
end

function M.next_any(c, what, timeout)
  local ok, line = pcall(c.line, c, timeout)
  if not ok then
    fail(string.format("%s, waiting for %s: %s", c.label, what or "a message",
      (tostring(line):gsub("^[^:]*:%d+: ", ""))))
  end
  local decoded, msg = pcall(cjson.decode, line)
  if not decoded or type(msg) ~= "table" then
    fail(string.format("%s: the server sent a line that is not a JSON object: %q", c.label, line))
  end
  return msg
end

-- The next message must have the fields of want; returns it.
function M.expect(c, want, timeout)
  local msg = M.next(c, M.show(want), timeout)
  if not M.matches(want, msg) then
    fail(string.format("%s: expected %s, got %s", c.label, M.show(want), M.show(msg)))
  end
  return msg
end

-- Skips messages until one has the fields of want, within timeout seconds; returns it
-- and the ones skipped.
function M.expect_eventually(c, want, timeout)
  local deadline = now() + (timeout or M.TIMEOUT)
  local skipped = {}
  while true do
    local ok, msg = pcall(M.next, c, M.show(want), math.max(deadline - now(), 0.001))
    if not ok then
      fail(string.format("%s (skipped %d: %s)", (tostring(msg):gsub("^[^:]*:%d+: ", "")),
        #skipped, M.show(skipped)))
    end
    if M.matches(want, msg) then return msg, skipped end
    skipped[#skipped + 1] = msg
  end
end

-- Asks for who and returns the names. The server handles one client's lines in order, so
-- whatever it meant for c before the request comes first: those are returned too.
function M.who(c, timeout)
  c:send("/who\n")
  local msg, skipped = M.expect_eventually(c, {type = "who"}, timeout)
  return msg.names, skipped
end

-- Fails if a whole message has arrived that nobody read (once the caller synchronized).
function M.expect_nothing_queued(c)
  local line = c:received():match("^[^\n]*\n")
  if line then fail(string.format("%s: unexpected message %s", c.label, line)) end
end

-- Connects a client for each label, each reading its welcome (c.name) while the ones
-- before read its join. Returns the list.
function M.connect_all(host, port, labels)
  local clients = {}
  for i, label in ipairs(labels) do
    local c = M.connect(host, port, label)
    c.name = M.expect(c, {type = "welcome"}).name
    for j = 1, i - 1 do M.expect(clients[j], {type = "join", name = c.name}) end
    clients[i] = c
  end
  return clients
end

return M
