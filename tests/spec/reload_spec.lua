-- reload_spec.lua: swapping the script of a running luahost executable (issue 4), end to
-- end: echo clients mid-stream through reloads, ten chat clients through an edited
-- chat.lua and a broken edit, a script that raises while loading, 20 reloads under load
-- without leaking fds or Lua memory, --watch, luahost.reload() from a script, listeners
-- the new script no longer asks for. The scripts under test are copied into a temporary
-- directory and edited there with Lua io, as an operator would edit them.
--
-- The server is given a concrete port, found free by listening on port 0 here and closing
-- that probe: a reloaded script runs with the arguments of the first load, and port 0
-- would ask the kernel for a new port on every load.
local luahost = require "luahost"
local T = require "luahost.test"
local chat = require "support.chat"

local HOST = "127.0.0.1"

-- The say broadcast of chat.lua, and the edit an operator makes to it.
local SAY = 'broadcast({ type = "say", from = client.name, text = msg.text }, client)'
local function say_with(field)
  return 'broadcast({ type = "say", from = client.name, text = msg.text, ' .. field
    .. ' }, client)'
end

local servers -- every server a test started, for the log check in after_each

---------------------------------------------------------------------------------------
-- Files

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
end

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Copies a bundled script into a new temporary directory; returns the copy's path.
local function copy_script(name)
  local text = read_file("scripts/" .. name)
  assert(#text > 0, "cannot read scripts/" .. name)
  return T.tempfile(text, name)
end

-- Replaces the one occurrence of old in text (plain text, not a pattern).
local function replace_once(text, old, new)
  local first = text:find(old, 1, true)
  assert(first, "not found in the script: " .. old)
  assert(not text:find(old, first + 1, true), "found more than once in the script: " .. old)
  return text:sub(1, first - 1) .. new .. text:sub(first + #old)
end

-- Edits the file at path in place, as an editor that writes the file does.
local function edit(path, old, new)
  write_file(path, replace_once(read_file(path), old, new))
end

-- The line number at which needle starts in text.
local function line_of(text, needle)
  local at = assert(text:find(needle, 1, true), "not found: " .. needle)
  local _, newlines = text:sub(1, at - 1):gsub("\n", "")
  return newlines + 1
end

-- Escapes s for use as a literal in a Lua pattern.
local function literal(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

---------------------------------------------------------------------------------------
-- The server process

-- Starts luahost on script at a free port. opts.options: host options; opts.args: more
-- script arguments after the address.
local function start(script, opts)
  opts = opts or {}
  local port = T.free_port()
  local args = {HOST .. ":" .. port}
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local server = T.spawn(script, args, {options = opts.options})
  assert.equal(port, server.port, "the server listens on the port it was given")
  servers[#servers + 1] = server
  return server
end

-- How many lines of the server's log match pattern.
local function count_lines(server, pattern)
  local n = 0
  for line in server:stderr():gmatch("[^\n]+") do
    if line:match(pattern) then n = n + 1 end
  end
  return n
end

-- Waits for the log line of a successful reload to generation.
local function wait_reloaded(server, path, generation, timeout)
  server:wait_log("reloaded " .. literal(path) .. ": generation " .. generation .. "$",
    timeout or 5)
end

-- Waits for the count-th "reload rejected" line; returns that line.
local function wait_rejected(server, count, timeout)
  return server:wait_log("^(.*reload rejected.*)$", timeout or 5, count)
end

-- Sends SIGHUP and waits for the reload to generation to be logged.
local function reload(server, path, generation)
  server:signal("HUP")
  wait_reloaded(server, path, generation)
end

local function sorted(list)
  local copy = {}
  for i, v in ipairs(list) do copy[i] = v end
  table.sort(copy)
  return copy
end

---------------------------------------------------------------------------------------
-- Chat clients

local function connect_chat(server, n, prefix)
  local labels = {}
  for i = 1, n do labels[i] = (prefix or "c") .. i end
  return chat.connect_all(HOST, server.port, labels)
end

-- Each client in turn says a line; every other client gets it (with the fields of
-- extra, and none other than type/from/text plus those), the sender gets nothing.
local function say_round(clients, tag, extra)
  for i, sender in ipairs(clients) do
    local text = tag .. " from " .. sender.label
    sender:send(text .. "\n")
    for j, c in ipairs(clients) do
      if j ~= i then
        local want = {type = "say", from = sender.name, text = text}
        for k, v in pairs(extra or {}) do want[k] = v end
        local msg = chat.expect(c, want)
        for k in pairs(msg) do
          assert(want[k] ~= nil, string.format("%s: unexpected field %q in %s", c.label, k,
            chat.show(msg)))
        end
      end
    end
  end
end

-- Reads the n next messages of c (bounded), in whatever order they come.
local function next_n(c, n, what)
  local got = {}
  for i = 1, n do got[i] = chat.next(c, string.format("%s (%d of %d)", what, i, n)) end
  return got
end

-- Every client sends one line, "tag from LABEL", without waiting for anything.
local function say_all(clients, tag)
  for _, c in ipairs(clients) do c:send(tag .. " from " .. c.label .. "\n") end
end
-- Every client sent one line "tag from LABEL" at once (say_all); each must receive the lines of
-- all the others exactly once (in any order: the server reads the clients in any
-- order), each a say with the sender's name and the fields of extra.
local function expect_crossed_says(clients, tag, extra)
  for i, c in ipairs(clients) do
    local want = {}
    for j, sender in ipairs(clients) do
      if j ~= i then want[tag .. " from " .. sender.label] = sender.name end
    end
    for _, msg in ipairs(next_n(c, #clients - 1, tag .. " says")) do
      assert(msg.type == "say", c.label .. ": expected a say, got " .. chat.show(msg))
      assert(want[msg.text] == msg.from, string.format("%s: unexpected or repeated %s",
        c.label, chat.show(msg)))
      want[msg.text] = nil
      for k, v in pairs(extra or {}) do
        assert(msg[k] == v, string.format("%s: %s should have %s = %s", c.label,
          chat.show(msg), k, tostring(v)))
      end
    end
  end
end

-- Every client is still connected, got nothing it did not ask for, and the server
-- knows exactly the given names: a who round trip from each (the server handles one
-- client's lines in order, so anything sent to it earlier shows up as skipped).
local function assert_all_quiet(clients, names)
  for _, c in ipairs(clients) do
    local got, skipped = chat.who(c)
    assert(#skipped == 0, string.format("%s got unexpected messages: %s", c.label,
      chat.show(skipped)))
    assert.same(sorted(names), got, c.label .. ": who")
    assert.is_false(c:closed(0), c.label .. " was disconnected")
  end
end

local function names_of(clients)
  local names = {}
  for i, c in ipairs(clients) do names[i] = c.name end
  return names
end

---------------------------------------------------------------------------------------
-- Echo and line clients

-- A client of port, its waits bounded by 5 s.
local function connect_conn(port)
  return T.client(HOST, port, {timeout = 5})
end

-- Where two byte strings first differ, for messages that do not print the bytes.
local function mismatch(expected, actual)
  if expected == actual then return nil end
  for i = 1, math.min(#expected, #actual) do
    if expected:byte(i) ~= actual:byte(i) then
      return string.format("%d bytes expected, %d received, first difference at byte %d",
        #expected, #actual, i)
    end
  end
  return string.format("%d bytes expected, %d received", #expected, #actual)
end

---------------------------------------------------------------------------------------

describe("reloading the script of the luahost executable", function()
  local saved_level
  setup(function()
    saved_level = luahost.log_level()
    luahost.log_level("warn") -- free_port's probes need not be logged here
  end)

  teardown(function()
    luahost.log_level(saved_level)
  end)

  before_each(function()
    servers = {}
  end)

  after_each(function()
    -- (The kit has stopped the servers and closed the clients by now; the logs stay.)
    -- Rejected reloads are logged as errors on purpose; any other error line is a bug
    -- (a script error costs only one connection, so a test could pass without it).
    for _, server in ipairs(servers) do
      for line in server:stderr():gmatch("[^\n]+") do
        assert(not (line:match(" error ") and not line:match("reload rejected")),
          "unexpected error in the log:\n" .. server:stderr())
      end
    end
  end)

  describe("echo.lua", function()
    it("loses no byte of ten clients streaming through five SIGHUP reloads", function()
      local path = copy_script("echo.lua")
      local server = start(path)
      math.randomseed(4004)
      local conns = {}
      for i = 1, 10 do
        conns[i] = connect_conn(server.port)
        conns[i]:echo("hello " .. i) -- accepted by now
      end
      local fds = server:fd_count()
      for round = 1, 6 do
        -- Half a chunk goes before the signal, half right after it, and the echo is
        -- read only once the reload is done: bytes are in flight during every reload.
        local chunks = {}
        for i, c in ipairs(conns) do
          chunks[i] = T.random_bytes(8192 + math.random(0, 16384))
          c:send(chunks[i]:sub(1, #chunks[i] // 2))
        end
        if round <= 5 then server:signal("HUP") end
        for i, c in ipairs(conns) do c:send(chunks[i]:sub(#chunks[i] // 2 + 1)) end
        if round <= 5 then wait_reloaded(server, path, round + 1) end
        for i, c in ipairs(conns) do
          local got = c:read(#chunks[i])
          assert(got == chunks[i], string.format("client %d, round %d: %s", i, round,
            mismatch(chunks[i], got)))
        end
      end
      assert.equal(fds, server:fd_count(), "fds after five reloads")
      assert.equal(0, count_lines(server, "closing listener"), server:stderr())
      -- The old code still ends its own connections: EOF after everything was echoed.
      for i, c in ipairs(conns) do
        c:shutdown()
        -- (read_all fails on a reset, or with no end within 5 s)
        assert.equal("", c:read_all(), "client " .. i .. ": bytes after the last round")
      end
      -- And a new client is served on the same port.
      local fresh = connect_conn(server.port)
      fresh:echo("still here")
      T.assert_graceful_stop(server)
    end)

    it("lets connections the new script does not take over keep the old code until they "
      .. "close, and serves new ones with the new code", function()
      local path = copy_script("echo.lua")
      local server = start(path)
      local old = connect_conn(server.port)
      old:echo("before")
      edit(path, "    conn:write(data)\n", "    conn:write(data:upper())\n")
      reload(server, path, 2)
      local new = connect_conn(server.port)
      new:send("new code")
      assert.equal("NEW CODE", new:read(8))
      old:echo("old code")
      -- Through one more reload as well, and then it closes as the old code does.
      reload(server, path, 3)
      old:echo("still old")
      new:send("and new")
      assert.equal("AND NEW", new:read(7), "new code served generation 2's client")
      old:shutdown()
      assert.equal("", old:read_all()) -- fails on a reset, or with no end within 5 s
      T.assert_graceful_stop(server)
    end)
  end)

  describe("chat.lua", function()
    it("keeps ten chatting clients connected and named through an edited chat.lua, shows "
      .. "them the new behaviour, and refuses a broken edit without any client noticing",
      function()
      local path = copy_script("chat.lua")
      local server = start(path)
      local clients = connect_chat(server, 10)
      -- Half of them pick a name of their own; the others keep their guest names.
      for i = 2, 10, 2 do
        local c, name = clients[i], "user-" .. i
        c:send("/nick " .. name .. "\n")
        for _, x in ipairs(clients) do
          chat.expect(x, {type = "nick", from = c.name, name = name})
        end
        c.name = name
      end
      local names = names_of(clients)
      say_round(clients, "hello")

      -- The operator edits chat.lua while the clients go on chatting, then sends SIGHUP.
      edit(path, SAY, say_with("edited = true"))
      say_all(clients, "in flight")
      server:signal("HUP")
      wait_reloaded(server, path, 2)
      expect_crossed_says(clients, "in flight") -- old code or new: only delivery counts
      say_round(clients, "after the reload", {edited = true})
      assert_all_quiet(clients, names)

      -- A broken edit: refused, and nobody notices; chatting goes on with generation 2.
      local fds, ports = server:fd_count(), server:listening_ports()
      local text = read_file(path)
      local broken = replace_once(text, say_with("edited = true"),
        say_with("edited = true") .. "\n  local broken = = 'a typo'")
      write_file(path, broken)
      local line = line_of(broken, "local broken = =")
      say_all(clients, "during the broken reload")
      server:signal("HUP")
      local rejected = wait_rejected(server, 1)
      assert.matches("still running generation 2: " .. literal(path) .. ":" .. line .. ":",
        rejected)
      expect_crossed_says(clients, "during the broken reload", {edited = true})
      say_round(clients, "after the broken edit", {edited = true})
      assert_all_quiet(clients, names)
      for _, c in ipairs(clients) do chat.expect_nothing_queued(c) end
      assert.equal(fds, server:fd_count(), "fds after the rejected reload")
      assert.same(ports, server:listening_ports())
      assert.equal(0, count_lines(server, "closing listener"), server:stderr())
      assert.equal(0, count_lines(server, "generation 3"), "the rejected load took a generation")

      -- A newcomer is welcomed by generation 2 under a name nobody has.
      local newcomer = chat.connect(HOST, server.port, "newcomer")
      newcomer.name = chat.expect(newcomer, {type = "welcome"}).name
      for _, c in ipairs(clients) do chat.expect(c, {type = "join", name = newcomer.name}) end
      for _, name in ipairs(names) do assert.are_not.equal(name, newcomer.name) end
      clients[#clients + 1] = newcomer
      say_round(clients, "with the newcomer", {edited = true})

      -- The operator fixes the typo: the next SIGHUP loads it as generation 3.
      write_file(path, replace_once(text, say_with("edited = true"),
        say_with("edited = 3")))
      reload(server, path, 3)
      say_round(clients, "after the fix", {edited = 3})
      names[#names + 1] = newcomer.name
      assert_all_quiet(clients, names)
      T.assert_graceful_stop(server)
    end)

    it("refuses a chat.lua that raises while loading, logging file and line, and changes "
      .. "nothing", function()
      local path = copy_script("chat.lua")
      local server = start(path)
      local clients = connect_chat(server, 3)
      local names = names_of(clients)
      local fds, ports = server:fd_count(), server:listening_ports()
      -- The refused version says differently, and raises at its very end: after it has
      -- asked for the listener, registered it with its own on_accept, started its timer,
      -- added an on_reload callback and set luahost.adopt.
      local text = read_file(path)
      local raising = replace_once(text, SAY, say_with('edited = "refused"'))
        .. "\nerror(\"refusing to load on purpose\")\n"
      write_file(path, raising)
      local line = line_of(raising, "error(\"refusing")
      server:signal("HUP")
      local rejected = wait_rejected(server, 1)
      assert.matches("still running generation 1: " .. literal(path) .. ":" .. line
        .. ": refusing to load on purpose", rejected)
      assert.equal(0, count_lines(server, "reloaded "), "the refused load was taken")
      -- Existing clients and a newcomer are all served by generation 1.
      say_round(clients, "after the refused reload")
      local newcomer = chat.connect(HOST, server.port, "newcomer")
      newcomer.name = chat.expect(newcomer, {type = "welcome"}).name
      for _, c in ipairs(clients) do chat.expect(c, {type = "join", name = newcomer.name}) end
      clients[#clients + 1] = newcomer
      names[#names + 1] = newcomer.name
      say_round(clients, "with the newcomer")
      assert_all_quiet(clients, names)
      assert.equal(fds + 1, server:fd_count(), "fds: one more, the newcomer's")
      assert.same(ports, server:listening_ports())
      -- The refused load did not take a generation: the next good one is generation 2.
      write_file(path, text)
      reload(server, path, 2)
      say_round(clients, "after a good reload")
      assert_all_quiet(clients, names)
      T.assert_graceful_stop(server)
    end)

    it("goes through 20 reloads in a row under load without leaking fds or Lua memory",
      function()
      -- chat.lua, plus a timer each load starts: once the load has taken over, it logs the
      -- host's counts after a full collection.
      local path = copy_script("chat.lua")
      local f = assert(io.open(path, "ab"))
      f:write([[

luahost.after(0, function()
  collectgarbage("collect")
  collectgarbage("collect")
  local s = luahost.stats()
  luahost.log("info", string.format("stats generation=%d lua_bytes=%d timers=%d registered=%d",
    luahost.generation(), s.lua_bytes, s.timers, s.registered))
end)
]])
      f:close()
      local server = start(path)
      local clients = connect_chat(server, 10)
      local names = names_of(clients)
      local STATS = "stats generation=(%d+) lua_bytes=(%d+) timers=(%d+) registered=(%d+)"
      server:wait_log(STATS, 5)
      say_round(clients, "warming up")
      local fds = server:fd_count()
      for round = 1, 20 do
        -- Every client has a line in flight while the script is swapped.
        say_all(clients, "round " .. round)
        server:signal("HUP")
        wait_reloaded(server, path, round + 1)
        server:wait_log(STATS, 5, round + 1)
        expect_crossed_says(clients, "round " .. round)
      end
      say_round(clients, "after 20 reloads")
      assert_all_quiet(clients, names)
      assert.equal(fds, server:fd_count(), "open fds after 20 reloads")
      local stats = {}
      for line in server:stderr():gmatch("[^\n]+") do
        local gen, bytes, timers, registered = line:match(STATS)
        if gen then
          stats[tonumber(gen)] = {bytes = tonumber(bytes), timers = tonumber(timers),
            registered = tonumber(registered)}
        end
      end
      for gen = 1, 21 do
        assert(stats[gen], "no stats logged by generation " .. gen .. ":\n" .. server:stderr())
        assert.equal(stats[1].timers, stats[gen].timers, "timers at generation " .. gen)
        if gen > 1 then -- generation 1 logged before the clients came
          assert.equal(11, stats[gen].registered, "registered at generation " .. gen)
        end
      end
      local early = math.max(stats[2].bytes, stats[3].bytes, stats[4].bytes)
      local growth = stats[21].bytes - early
      assert(growth < 64 * 1024, string.format(
        "Lua memory grew by %d bytes from generations 2-4 (%d) to 21 (%d)", growth, early,
        stats[21].bytes))
      T.assert_graceful_stop(server)
    end)

    it("reloads by itself with --watch when chat.lua is edited, saved in place or "
      .. "replaced, and refuses a broken save", function()
      local path = copy_script("chat.lua")
      local server = start(path, {options = {"--watch"}})
      local clients = connect_chat(server, 3)
      local names = names_of(clients)
      say_round(clients, "before")
      local text = read_file(path)
      -- Saved in place.
      write_file(path, replace_once(text, SAY, say_with("edited = true")))
      wait_reloaded(server, path, 2)
      say_round(clients, "after saving in place", {edited = true})
      -- Saved the way many editors do: a new file renamed over the old one.
      local tmp = path .. ".swp"
      write_file(tmp, replace_once(text, SAY, say_with('edited = "renamed"')))
      assert(os.rename(tmp, path))
      wait_reloaded(server, path, 3)
      say_round(clients, "after a rename", {edited = "renamed"})
      -- A broken save is refused; the clients notice nothing.
      write_file(path, text .. "\nthis is not Lua\n")
      local rejected = wait_rejected(server, 1)
      assert.matches("still running generation 3: " .. literal(path) .. ":%d+:", rejected)
      say_round(clients, "after the broken save", {edited = "renamed"})
      assert_all_quiet(clients, names)
      assert.equal(0, count_lines(server, "generation 4"), server:stderr())
      T.assert_graceful_stop(server)
    end)
  end)

  -- A line server that says which load of the script serves a connection, and reloads
  -- itself with luahost.reload() when a client asks.
  local GENERATIONS = [[
local luahost = require "luahost"
local sel, READ = luahost.selector, luahost.EVENT_READ
local GEN = luahost.generation()
local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 0))

local function on_read(conn)
  local data, err = conn:recv(65536)
  if data == nil then
    if err ~= "wouldblock" then conn:abort() end
  elseif data == "" then
    conn:close()
  elseif data == "reload\n" then
    local ok, message = luahost.reload()
    conn:write(string.format("gen %d reload: %s %s\n", GEN, tostring(ok),
      tostring(message):match("[^\n]*")))
  else
    conn:write(string.format("gen %d: %s", GEN, data))
  end
end

local server = assert(luahost.listen(host, port))
sel:register(server, READ, function(listener)
  local conn = listener:accept()
  if conn then sel:register(conn, READ, on_read) end
end)
]]

  describe("luahost.reload() called by the script", function()
    it("loads the script file anew; luahost.generation() tells each load which it is, and "
      .. "a broken file is refused with file and line", function()
      local path = T.tempfile(GENERATIONS)
      local server = start(path)
      local a = connect_conn(server.port)
      a:send("hello\n")
      assert.equal("gen 1: hello", a:line())
      a:send("reload\n")
      assert.equal("gen 1 reload: true nil", a:line())
      wait_reloaded(server, path, 2)
      a:send("again\n")
      assert.equal("gen 1: again", a:line(), "the old connection keeps the old code")
      local b = connect_conn(server.port)
      b:send("hi\n")
      assert.equal("gen 2: hi", b:line())
      -- A broken file: refused, the reply carries file and line, nothing changes.
      write_file(path, GENERATIONS .. "local x = = 1\n")
      local line = line_of(read_file(path), "local x = = 1")
      b:send("reload\n")
      assert.matches("^gen 2 reload: nil " .. literal(path) .. ":" .. line .. ":", b:line())
      wait_rejected(server, 1)
      b:send("still\n")
      assert.equal("gen 2: still", b:line())
      a:send("still\n")
      assert.equal("gen 1: still", a:line())
      local c = connect_conn(server.port)
      c:send("new\n")
      assert.equal("gen 2: new", c:line())
      T.assert_graceful_stop(server)
    end)
  end)

  describe("listeners", function()
    it("closes a listener the new script no longer asks for, and keeps the connections it "
      .. "accepted", function()
      local second = T.free_port()
      local script = GENERATIONS .. string.format([[
local other = assert(luahost.listen("127.0.0.1", %d)) -- SECOND LISTENER
sel:register(other, READ, function(listener) -- SECOND LISTENER
  local conn = listener:accept() -- SECOND LISTENER
  if conn then sel:register(conn, READ, on_read) end -- SECOND LISTENER
end) -- SECOND LISTENER
]], second)
      local path = T.tempfile(script)
      local server = start(path)
      assert.same(sorted({server.port, second}), server:listening_ports())
      local via_second = connect_conn(second)
      via_second:send("one\n")
      assert.equal("gen 1: one", via_second:line())
      -- The new version drops the second listener.
      local lines = {}
      for l in (read_file(path) .. "\n"):gmatch("([^\n]*)\n") do
        if not l:find("SECOND LISTENER", 1, true) then lines[#lines + 1] = l end
      end
      write_file(path, table.concat(lines, "\n"))
      reload(server, path, 2)
      server:wait_log("closing listener 127%.0%.0%.1:" .. second, 5)
      assert.same({server.port}, server:listening_ports())
      local connected, why = pcall(T.client, HOST, second, {timeout = 2})
      assert.is_false(connected, "a connection to the closed listener succeeded")
      assert.matches("refused", why)
      via_second:send("two\n")
      assert.equal("gen 1: two", via_second:line(), "a connection it accepted survives")
      local main = connect_conn(server.port)
      main:send("three\n")
      assert.equal("gen 2: three", main:line())
      T.assert_graceful_stop(server)
    end)
  end)
end)
