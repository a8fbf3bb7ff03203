-- log_spec.lua: one log event is one line. Bytes a client sent, passed by a script to
-- error() or luahost.log, can neither start a forged line (a newline is written as \n)
-- nor hide what follows a NUL (written as \x00); a traceback's own lines are escaped the
-- same way, so an error with its traceback is one line too.
local T = require "luahost.test"

local BACKENDS = {"epoll", "poll", "select", "sim"}
local FORGERY = "hi\n2099-01-01T00:00:00.000Z error FORGED\0after"
local ESCAPED = "hi\\n2099-01-01T00:00:00.000Z error FORGED\\x00after"

-- Raises with what a client sent, and logs it first.
local RAISER = [[
local luahost = require "luahost"
local server = assert(luahost.listen("127.0.0.1", 0))
luahost.selector:register(server, luahost.EVENT_READ, function()
  local conn = server:accept()
  if not conn then return end
  luahost.selector:register(conn, luahost.EVENT_READ, function(c)
    local data = c:recv(100)
    if not data or data == "" then return c:close() end
    luahost.log("warn", "got", data)
    error(data)
  end)
end)
]]

local function lines(text)
  local t = {}
  for line in text:gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

-- The lines of log that hold s (plain).
local function holding(log_lines, s)
  local t = {}
  for _, line in ipairs(log_lines) do
    if line:find(s, 1, true) then t[#t + 1] = line end
  end
  return t
end

describe("the log", function()
  for _, backend in ipairs(BACKENDS) do
    it("on " .. backend .. " keeps a client's newline and NUL inside one line", function()
      local srv = T.start(T.tempfile(RAISER), nil, {selector = backend})
      local c = T.client(srv)
      c:send(FORGERY)
      srv:run_until(function() return srv:log():find("error in callback", 1, true) end, 5,
        "the callback to fail")
      local all = lines(srv:log())
      for _, line in ipairs(all) do
        assert.matches("^%a+ ", line) -- every line is an event: level, message
        assert.not_matches("^%a+ 2099", line)
      end
      local forged = holding(all, "FORGED")
      assert.equal(2, #forged, "the forgery is in the warning and the error, nowhere else")
      assert.equal("warn got " .. ESCAPED, forged[1])
      local err = forged[2]
      assert.matches("^error error in callback for 127%.0%.0%.1:%d+: [^ ]+:%d+: ", err)
      assert.truthy(err:find(ESCAPED .. "\\nstack traceback:\\n\\t", 1, true), err)
      assert.truthy(err:find("in function 'error'", 1, true), err)
    end)
  end

  it("keeps a NUL and what follows it in luahost.log, and doubles a backslash", function()
    local srv = T.start(T.tempfile([[
      local luahost = require "luahost"
      luahost.log("info", "a\0b\nc\\n", 42)
    ]]), nil, {selector = "sim"})
    assert.equal("info a\\x00b\\nc\\\\n 42\n", srv:log())
  end)

  it("keeps a NUL and what follows it in a refused reload's reason", function()
    local srv = T.start(T.tempfile([[
      local luahost = require "luahost"
      luahost.after(60, function() end)
    ]]), nil, {selector = "sim"})
    local broken = T.tempfile('error("bad\\0hidden\\nline", 0)')
    local ok, err = srv:reload(broken)
    assert.is_nil(ok)
    assert.equal(1, (err:find("bad\0hidden\nline", 1, true)))
    local line = holding(lines(srv:log()), "reload rejected")
    assert.equal(1, #line)
    assert.matches("still running generation %d+: bad\\x00hidden\\nline", line[1])
  end)

  it("of the executable has a stamp on every line, the forged one kept inside its event",
    function()
      local server = T.spawn(T.tempfile(RAISER))
      local c = T.client("127.0.0.1", server.port, {timeout = 5})
      c:send(FORGERY)
      server:wait_log("error in callback", 5)
      assert.same({how = "exit", code = 0}, (server:stop("TERM")))
      local all = lines(server:stderr())
      assert(#all >= 4, server:stderr())
      for _, line in ipairs(all) do
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ %a+ +[^ ]", line)
      end
      local forged = holding(all, "FORGED")
      assert.equal(2, #forged, server:stderr())
      assert.matches("^%S+ warn  got " .. ESCAPED:gsub("%p", "%%%0") .. "$", forged[1])
      assert.matches("^%S+ error error in callback for 127%.0%.0%.1:%d+: .*"
        .. ESCAPED:gsub("%p", "%%%0") .. "\\nstack traceback:", forged[2])
    end)
end)
