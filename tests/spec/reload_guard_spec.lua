-- reload_guard_spec.lua: a reload or a start that could hang or empty the server (the
-- "Hardening II" issue): a main chunk that never ends, or only allocates, is aborted
-- under the instruction budget and --max-memory, refused and rolled back, on SIGHUP as
-- at start (where the host exits with an error); the server goes on serving and a
-- SIGTERM is honoured. Under --watch a file still being written is not loaded until its
-- writer closes it, and a load that would leave nothing registered and no timer is
-- refused unless it calls luahost.stop(). On every backend.
local T = require "luahost.test"

local BACKENDS = {"epoll", "poll", "select"}
local HOST = "127.0.0.1"

-- A line server that tags its replies with TAG, on the address given as arg[1].
local SERVER = [[
local host, port = assert(luahost.parse_address(arg[1], "127.0.0.1", 0))
local server = assert(luahost.listen(host, port))
local TAG = "v1"
luahost.selector:register(server, luahost.EVENT_READ, function(listener)
  local conn = listener:accept()
  if not conn then return end
  luahost.selector:register(conn, luahost.EVENT_READ, function(c)
    local data = c:recv(4096)
    if data == "" then c:close() elseif data then c:write(TAG .. ":" .. data) end
  end)
end)
]]

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Escapes s for use as a literal in a Lua pattern.
local function literal(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- Starts SERVER (a file the test may edit) at a free port, on backend; a reload runs with
-- the arguments of the first load, so port 0 would not do. Returns the process and path.
local function start(backend, options)
  local path = T.tempfile(SERVER)
  local port = T.free_port()
  local server = T.spawn(path, {HOST .. ":" .. port}, {selector = backend, options = options})
  assert.equal(port, server.port)
  return server, path
end

-- Sends line on c and returns the reply.
local function ask(c, line)
  c:send(line .. "\n")
  return c:line()
end

-- Whether something accepts connections on port.
local function accepting(port)
  local ok, c = pcall(T.client, HOST, port, {timeout = 1})
  if ok then c:close() end
  return ok
end

-- A new script that changes what a reload journals (the listener on port gets a new
-- callback, a second listener on extra_port and a timer are made), then runs `tail`.
local function changing_then(port, extra_port, tail)
  return string.format([[
local server = assert(luahost.listen("127.0.0.1", %d))
assert(luahost.listen("127.0.0.1", %d))
luahost.selector:register(server, luahost.EVENT_READ, function(listener)
  local conn = listener:accept()
  if conn then conn:write("NEW CODE\n") conn:close() end
end)
luahost.every(0.01, function() luahost.log("info", "timer of the refused load") end)
%s
]], port, extra_port, tail)
end

describe("reloads and starts that never end", function()
  for _, backend in ipairs(BACKENDS) do
    describe("(--selector " .. backend .. ")", function()
      it("a storm of SIGHUPs on a main chunk that never ends: each refused for its budget "
        .. "and rolled back, the server serving throughout, the original loaded again, "
        .. "SIGTERM honoured", function()
        local server, path = start(backend)
        local original = io.open(path):read("a")
        local c = T.client(HOST, server.port, {timeout = 5})
        assert.equal("v1:before", ask(c, "before"))
        local extra = T.free_port()
        write_file(path, changing_then(server.port, extra, "while true do end\n"))
        for i = 1, 3 do
          server:signal("HUP")
          local line = server:wait_log("(reload rejected.*)$", 15, i)
          assert(line:find("still running generation 1: main chunk ran past its budget", 1,
            true), line)
          assert.equal("v1:during " .. i, ask(c, "during " .. i))
        end
        for _ = 1, 3 do server:signal("HUP") end -- a burst: one or more reloads, all refused
        server:wait_log("(reload rejected.*)$", 15, 4)
        assert.equal("v1:after the storm", ask(c, "after the storm"))
        local fresh = T.client(HOST, server.port, {timeout = 5})
        assert.equal("v1:new client", ask(fresh, "new client"),
          "a refused load's listener callback was kept")
        assert.is_false(accepting(extra), "a refused load's listener is still open")
        T.sleep(0.1)
        assert.same({}, server:log_lines("timer of the refused load", true),
          "a refused load's timer still runs")
        -- Restoring the file helps: the next reload is taken.
        write_file(path, original:gsub('local TAG = "v1"', 'local TAG = "v2"'))
        server:signal("HUP")
        server:wait_log("reloaded " .. literal(path) .. ": generation 2$", 15)
        local after = T.client(HOST, server.port, {timeout = 5})
        assert.equal("v2:restored", ask(after, "restored"))
        -- A SIGTERM that comes while such a reload runs is honoured once it is refused.
        write_file(path, changing_then(server.port, extra,
          'luahost.log("info", "endless chunk running")\nwhile true do end\n'))
        server:signal("HUP")
        server:wait_log("endless chunk running", 15)
        server:signal("TERM")
        local status = server:wait(15)
        assert(status, "a SIGTERM during an endless reload was not honoured: " .. tostring(server))
        assert.same({"exit", 0}, {status.how, status.code}, tostring(server))
        assert(server:stderr():find("SIGTERM received, stopping", 1, true), tostring(server))
      end)

      it("a main chunk that only allocates, under --max-memory 64 MiB with no instruction "
        .. "budget: refused for memory, rolled back, memory back, still serving", function()
        local server, path = start(backend, {"--max-memory", tostring(64 * 1024 * 1024),
          "--max-instructions", "0"})
        local c = T.client(HOST, server.port, {timeout = 5})
        assert.equal("v1:before", ask(c, "before"))
        local extra = T.free_port()
        write_file(path, changing_then(server.port, extra,
          "local hoard = {}\nwhile true do hoard[#hoard + 1] = {#hoard} end\n"))
        server:signal("HUP")
        local line = server:wait_log("(reload rejected.*)$", 20)
        assert(line:find("still running generation 1: not enough memory", 1, true), line)
        assert.equal("v1:after", ask(c, "after"))
        assert.is_false(accepting(extra), "a refused load's listener is still open")
        -- The hoard is garbage now: the host can allocate again.
        local others = {}
        for i = 1, 5 do
          others[i] = T.client(HOST, server.port, {timeout = 5})
          assert.equal("v1:client " .. i, ask(others[i], "client " .. i))
        end
        T.assert_graceful_stop(server)
      end)
    end)
  end

  describe("at start", function()
    it("a main chunk that never ends exits with status 1 and one line naming the budget, "
      .. "under the default budget and a small one", function()
      local path = T.tempfile("local n = 0\nwhile true do n = n + 1 end\n")
      for _, options in ipairs({{}, {"--max-instructions", "1000000"}}) do
        local args = {table.unpack(options)}
        args[#args + 1] = path
        local r = T.run(args, {timeout = 20})
        assert.same({"exit", 1}, {r.how, r.code}, tostring(r))
        assert.matches("^luahost: main chunk ran past its budget of %d+ instructions "
          .. "%(%-%-max%-instructions%), at " .. path:gsub("%p", "%%%0") .. ":2\n$", r.stderr)
      end
    end)

    it("a main chunk that only allocates, under --max-memory with no instruction budget, "
      .. "exits with status 1 and 'not enough memory'", function()
      local path = T.tempfile("local t = {}\nwhile true do t[#t + 1] = {} end\n")
      local r = T.run({"--max-memory", tostring(32 * 1024 * 1024), "--max-instructions", "0",
        path}, {timeout = 20})
      assert.same({"exit", 1}, {r.how, r.code}, tostring(r))
      assert.matches("not enough memory", r.stderr)
    end)

    it("a client's main chunk that waits in select between bursts is counted per burst, "
      .. "not in all: it runs to its end", function()
      -- 40 bursts of ~500k instructions, each after a wait: 20M in all, far past the
      -- budget of 2M, but no burst comes near it.
      local path = T.tempfile([[
local sel = luahost.new_selector()
local n = 0
for _ = 1, 40 do
  for _ = 1, 100000 do n = n + 1 end
  for _ in sel:select(0.005) do end
end
print("done", n)
]])
      local r = T.run({"--max-instructions", "2000000", path}, {timeout = 30})
      assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
      assert.equal("done\t4000000\n", r.stdout)
    end)
  end)
end)

describe("reloads that would leave the server empty", function()
  for _, backend in ipairs(BACKENDS) do
    describe("(--selector " .. backend .. ")", function()
      it("--watch does not load a script made anew until its writer closes it", function()
        local server, path = start(backend, {"--watch"})
        local original = io.open(path):read("a")
        local c = T.client(HOST, server.port, {timeout = 5})
        assert.equal("v1:before", ask(c, "before"))
        -- Deleted and written anew, slowly: half of it, a pause, then the rest.
        assert(os.remove(path))
        local f = assert(io.open(path, "wb"))
        f:write("-- being written\n")
        f:flush()
        T.sleep(0.6) -- several times the settling delay (0.1 s)
        assert.same({}, server:log_lines("reload", true),
          "a file still being written was loaded")
        assert.equal("v1:while writing", ask(c, "while writing"))
        assert(accepting(server.port), "the listener closed while the file was written")
        f:write((original:gsub('local TAG = "v1"', 'local TAG = "v2"')))
        f:close()
        server:wait_log("reloaded " .. literal(path) .. ": generation 2$", 10)
        local after = T.client(HOST, server.port, {timeout = 5})
        assert.equal("v2:complete", ask(after, "complete"))
        T.assert_graceful_stop(server)
      end)

      it("an empty file under --watch, and a SIGHUP on a script that registers nothing, "
        .. "are refused; a script that calls luahost.stop() is taken", function()
        local server, path = start(backend, {"--watch"})
        local c = T.client(HOST, server.port, {timeout = 5})
        write_file(path, "")
        local line = server:wait_log("(reload rejected.*)$", 10)
        assert(line:find("still running generation 1: the new script registered nothing, "
          .. "made no timer and asked for no listener", 1, true), line)
        assert.equal("v1:after the empty save", ask(c, "after the empty save"))
        assert(accepting(server.port), "the listener closed after an empty save")
        write_file(path, "answer = 42\n")
        line = server:wait_log("(reload rejected.*)$", 10, 2)
        assert(line:find("registered nothing", 1, true), line)
        server:signal("HUP")
        server:wait_log("(reload rejected.*)$", 10, 3)
        assert.equal("v1:still", ask(c, "still"))
        -- Stopping on purpose is a load like any other.
        write_file(path, 'luahost.log("info", "stopping on purpose")\nluahost.stop()\n')
        server:wait_log("reloaded " .. literal(path) .. ": generation 2$", 10)
        local status = server:wait(10)
        assert(status, "the server did not stop after a load that called luahost.stop()")
        assert.same({"exit", 0}, {status.how, status.code}, tostring(server))
      end)
    end)
  end
end)
