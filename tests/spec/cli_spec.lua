-- cli_spec.lua: the luahost command line as an operator meets it: one clear line and a
-- non-zero status for every mistake, --check/--help/--version, `arg` as lua sets it,
-- exit when nothing is left, graceful stop on SIGTERM/SIGINT, no death by SIGPIPE.
local process = require "support.process"
local client = require "support.client"
local rel = require "support.reliability"

local ECHO = "scripts/echo.lua"
local USAGE, SCRIPT_ERROR = 2, 1

local function lines(text)
  local list = {}
  for line in text:gmatch("[^\n]+") do list[#list + 1] = line end
  return list
end

local function show(r)
  return string.format("status %s %s%s\nstdout:\n%s\nstderr:\n%s", r.how, r.code,
    r.timed_out and " (timed out, killed)" or "", r.stdout, r.stderr)
end

-- The run ended by itself with exit status code and wrote exactly one line on stderr,
-- "luahost: ...", holding every string in wanted; nothing on stdout.
local function assert_one_line_error(r, code, ...)
  assert.is_false(r.timed_out, "luahost did not exit by itself\n" .. show(r))
  assert.same({how = "exit", code = code}, {how = r.how, code = r.code}, show(r))
  local err = lines(r.stderr)
  assert.equal(1, #err, "expected one line on stderr\n" .. show(r))
  assert.matches("^luahost: ", err[1])
  for _, wanted in ipairs({...}) do
    assert.matches(wanted, err[1], 1, true)
  end
  assert.equal("", r.stdout, show(r))
end

local function script(text)
  return process.temp_file(text, ".lua")
end

-- Counts the open file descriptors of pid.
local function fd_count(pid)
  local ls = io.popen("ls /proc/" .. pid .. "/fd 2>/dev/null")
  local n = #lines(ls:read("a"))
  ls:close()
  return n
end

-- detail, if given, adds what to look at to the failure.
local function wait_until(what, timeout, check, detail)
  local deadline = process.now() + timeout
  while not check() do
    if process.now() >= deadline then
      error("timed out after " .. timeout .. " s waiting for " .. what
        .. (detail and ":\n" .. detail() or ""), 2)
    end
    process.sleep(0.02)
  end
end

-- What a server's fds are, and what it logged: for a failure about its fds.
local function fd_detail(server)
  local ls = io.popen("ls -l /proc/" .. server.pid .. "/fd 2>&1; ss -tan 2>&1 | grep -c ."
    .. " | sed 's/^/tcp sockets on the machine: /'")
  local fds = ls:read("a")
  ls:close()
  return fds .. "\nits stderr:\n" .. server:stderr()
end

describe("the luahost command line", function()
  after_each(function()
    process.stop_all()
    assert.equal(0, process.live_count(), "a luahost process was left running")
  end)

  describe("reports an operator's mistake in one line with a non-zero status", function()
    it("for a script file that does not exist", function()
      local missing = os.tmpname()
      os.remove(missing)
      local r = process.run_luahost({missing .. ".lua"})
      assert_one_line_error(r, SCRIPT_ERROR, missing .. ".lua", "No such file or directory")
    end)

    it("for a script with a syntax error, naming the file and line", function()
      local path = script("local ok = 1\nlocal broken = = 2\n")
      local r = process.run_luahost({path})
      assert_one_line_error(r, SCRIPT_ERROR, path .. ":2:")
    end)

    it("when no script is given", function()
      assert_one_line_error(process.run_luahost({}), USAGE, "no SCRIPT given")
      assert_one_line_error(process.run_luahost({"--selector", "poll"}), USAGE,
        "no SCRIPT given")
    end)

    it("for an unknown option", function()
      assert_one_line_error(process.run_luahost({"--frobnicate", ECHO}), USAGE,
        "unknown option '--frobnicate'")
    end)

    it("for an option that lacks its value", function()
      assert_one_line_error(process.run_luahost({"--selector"}), USAGE, "--selector")
    end)

    it("for an unknown selector backend", function()
      local r = process.run_luahost({"--selector", "bogus", ECHO, "127.0.0.1:0"})
      assert_one_line_error(r, USAGE, "bogus")
      assert.matches("selector", r.stderr)
    end)

    it("for an unknown backend in $LUAHOST_SELECTOR, naming the variable", function()
      local r = process.run({"env", "LUAHOST_SELECTOR=bogus", process.bin, ECHO, "127.0.0.1:0"})
      assert_one_line_error(r, USAGE, "bogus")
      assert.matches("$LUAHOST_SELECTOR", r.stderr, 1, true)
    end)

    it("for --selector sim, which is for tests only", function()
      local r = process.run_luahost({"--selector", "sim", ECHO, "127.0.0.1:0"})
      assert_one_line_error(r, USAGE, "sim")
      assert.matches("tests only", r.stderr, 1, true)
    end)

    it("for a bad --log-level", function()
      local r = process.run_luahost({"--log-level", "loud", ECHO, "127.0.0.1:0"})
      assert_one_line_error(r, USAGE, "loud", "log level")
    end)

    it("for an address already in use", function()
      local first = process.start(ECHO)
      local address = "127.0.0.1:" .. first.port
      local r = process.run_luahost({ECHO, address}, 5)
      assert_one_line_error(r, SCRIPT_ERROR, "Address already in use", address)
      assert.is_true(first:alive(), "the first server died:\n" .. first:stderr())
    end)

    it("for a script path that is a directory", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. dir))
      local r = process.run_luahost({dir})
      os.remove(dir)
      assert_one_line_error(r, SCRIPT_ERROR, dir)
    end)

    it("for a bad --max-output", function()
      assert_one_line_error(process.run_luahost({"--max-output", "0", ECHO}), USAGE, "'0'")
      assert_one_line_error(process.run_luahost({"--max-output=lots", ECHO}), USAGE, "'lots'")
    end)

    it("for a malformed address given to echo.lua", function()
      local r = process.run_luahost({ECHO, "127.0.0.1:notaport"})
      assert_one_line_error(r, SCRIPT_ERROR, "127.0.0.1:notaport")
      r = process.run_luahost({ECHO, "127.0.0.1:70000"})
      assert_one_line_error(r, SCRIPT_ERROR, "127.0.0.1:70000")
    end)

    it("for a script that raises in its main chunk", function()
      local path = script("local x = 1\nerror('the configuration is broken')\n")
      local r = process.run_luahost({path})
      assert_one_line_error(r, SCRIPT_ERROR, path .. ":2:", "the configuration is broken")
    end)
  end)

  describe("--check", function()
    it("says syntax OK and exits 0 for a good script, without running it", function()
      local path = script("print('the script ran')\n")
      local r = process.run_luahost({"--check", path})
      assert.same({"exit", 0}, {r.how, r.code}, show(r))
      assert.matches("syntax OK", r.stdout)
      assert.not_matches("the script ran", r.stdout)
      local echo = process.run_luahost({"--check", ECHO})
      assert.same({"exit", 0}, {echo.how, echo.code}, show(echo))
      assert.equal(ECHO .. ": syntax OK\n", echo.stdout)
    end)

    it("exits 1 with the error for a bad script", function()
      local path = script("if then\n")
      assert_one_line_error(process.run_luahost({"--check", path}), SCRIPT_ERROR, path .. ":1:")
    end)
  end)

  it("--help and -h print the usage and exit 0", function()
    for _, flag in ipairs({"--help", "-h"}) do
      local r = process.run_luahost({flag})
      assert.same({"exit", 0}, {r.how, r.code}, show(r))
      assert.matches("^Usage: luahost %[options%] SCRIPT", r.stdout)
      for _, word in ipairs({"--selector", "epoll, poll, select", "--log-level", "--check",
        "--version"}) do
        assert.matches(word, r.stdout, 1, true)
      end
      assert.equal("", r.stderr)
    end
  end)

  it("README's command-line block is --help's list of options, word for word", function()
    local r = process.run_luahost({"--help"})
    local options = assert(r.stdout:match("\nOptions:\n(.*)$"), r.stdout)
    local readme = process.read_file("README.md")
    local block = assert(readme:match("\n```\nluahost %[options%] SCRIPT %[ARGS%.%.%.%]\n(.-)```"),
      "no command-line block in README.md")
    assert.equal(options, block)
  end)

  it("--version prints the version and exits 0", function()
    local r = process.run_luahost({"--version"})
    assert.same({"exit", 0}, {r.how, r.code}, show(r))
    assert.matches("^luahost %d+%.%d+%.%d+ %(Lua 5%.4%.%d+%)\n$", r.stdout)
    assert.equal("", r.stderr)
  end)

  it("sets arg as lua does: the script at 0, its arguments from 1, the host before",
    function()
    local path = script([[
for i = -3, #arg do print(i, arg[i]) end
print("n", #arg)
print("...", table.concat({...}, "|"))
]])
    local r = process.run_luahost({"--log-level", "warn", path, "one", "two words", "--check"})
    assert.same({"exit", 0}, {r.how, r.code}, show(r))
    assert.same({
      "-3\t" .. process.bin, "-2\t--log-level", "-1\twarn", "0\t" .. path,
      "1\tone", "2\ttwo words", "3\t--check", "n\t3", "...\tone|two words|--check",
    }, lines(r.stdout))
  end)

  it("uses the backend that --selector names, in both option forms", function()
    local path = script("print(luahost.selector.backend)\n")
    for _, backend in ipairs({"epoll", "poll", "select"}) do
      for _, options in ipairs({{"--selector", backend}, {"--selector=" .. backend}}) do
        local args = {table.unpack(options)}
        args[#args + 1] = path
        local r = process.run_luahost(args)
        assert.same({"exit", 0}, {r.how, r.code}, show(r))
        assert.equal(backend .. "\n", r.stdout, table.concat(options, " "))
      end
    end
  end)

  it("exits 0 promptly when the script runs its own loop and registers nothing", function()
    local server = process.start(ECHO)
    local path = script([[
local luahost = require "luahost"
local port = assert(tonumber(arg[1]))
local sock = assert(luahost.connect("127.0.0.1", port))
local sel = luahost.new_selector()
sel:register(sock, luahost.EVENT_WRITE)
local reply, sent, deadline = "", false, luahost.now() + 5
while #reply < 4 and luahost.now() < deadline do
  for key, mask in sel:select(0.1) do
    if mask & luahost.EVENT_WRITE ~= 0 and not sent then
      assert(key.fileobj:send("ping") == 4)
      sent = true
      sel:modify(sock, luahost.EVENT_READ)
    elseif mask & luahost.EVENT_READ ~= 0 then
      reply = reply .. assert(key.fileobj:recv(100))
    end
  end
end
sel:unregister(sock)
sock:close()
print(reply)
]])
    local r = process.run_luahost({path, tostring(server.port)}, 10)
    assert.same({"exit", 0}, {r.how, r.code}, show(r))
    assert.equal("ping\n", r.stdout)
    assert.is_true(r.elapsed < 3, string.format("took %.2f s to exit", r.elapsed))
  end)

  for _, signal in ipairs({"TERM", "INT"}) do
    it("stops gracefully on SIG" .. signal .. ": exit status 0, a log line, clients closed",
      function()
      local server = process.start(ECHO)
      local c = assert(client.connect("127.0.0.1", server.port))
      assert.equal("hello", assert(c:echo("hello")))
      local status, killed = server:stop(signal)
      assert.is_false(killed, "SIG" .. signal .. " did not stop the server:\n" .. server:stderr())
      assert.same({how = "exit", code = 0}, status, server:stderr())
      assert.matches("SIG" .. signal .. " received", server:stderr())
      local closed, why = c:wait_closed(2)
      c:close()
      assert.equal("eof", closed, "the client's connection: " .. tostring(why))
    end)
  end

  it("sends what it still has buffered for a slow reader before stopping on SIGTERM",
    function()
    local server = process.start(ECHO)
    local c = assert(client.connect("127.0.0.1", server.port, 5, {rcvbuf = 4096}))
    local port = c:local_port()
    -- Bytes the host holds in its own buffer, once it has read all the client sent: what
    -- it read, less what the kernel holds (the server's send queue, the client's receive
    -- queue). Send 128 KiB at a time, under the 256 KiB at which the host stops reading,
    -- until the kernel is full and the host has to keep some.
    local step, sent, held = 128 * 1024, 0, 0
    while held <= 0 do -- (bytes in flight may count twice: held is a lower bound)
      assert(sent < 32 * 1024 * 1024, "the host never had to buffer output")
      assert(c:send_all(string.rep("s", step)))
      sent = sent + step
      local server_tx
      wait_until("the server to read all " .. sent .. " bytes", 5, function()
        local client_tx = process.tcp_queues(port, server.port)
        local server_rx
        server_tx, server_rx = process.tcp_queues(server.port, port)
        return client_tx == 0 and server_rx == 0
      end)
      local _, client_rx = process.tcp_queues(port, server.port)
      held = sent - server_tx - client_rx
    end
    server:signal("TERM")
    local data, why = c:recv_all(5)
    c:close()
    assert(data, why)
    assert.equal(sent, #data, string.format("bytes echoed before the server closed (%d of "
      .. "them were in the host's buffer at SIGTERM)", held))
    assert.same({how = "exit", code = 0}, server:wait(5), server:stderr())
  end)

  it("stops within its grace period on SIGTERM even if a client never reads", function()
    local server = process.start(ECHO)
    local c = assert(client.connect("127.0.0.1", server.port, 5, {rcvbuf = 4096}))
    assert(c:send_until_blocked(4 * 1024 * 1024, 0.2))
    local signalled = process.now()
    local status, killed = server:stop("TERM", 6)
    c:close()
    assert.is_false(killed, "the server did not stop:\n" .. server:stderr())
    assert.same({how = "exit", code = 0}, status, server:stderr())
    local took = process.now() - signalled
    assert(took < 4.5, string.format("took %.1f s to stop (grace is 3 s)", took))
  end)

  -- Regression: the host routed SIGINT/SIGTERM into its loop before running the main
  -- chunk, so a script busy in its own loop ignored them until it returned (a client
  -- that loops forever could only be SIGKILLed). lua(1) stops on Ctrl-C wherever it is.
  local LOOPING = [[
local luahost = require "luahost"
local sel = luahost.new_selector()
io.stderr:write("looping\n")
for _ = 1, 100 do -- 10 s, unless interrupted
  for _ in sel:select(0.1) do end
end
print("finished the whole loop")
]]
  for _, signal in ipairs({"INT", "TERM"}) do
    it("SIG" .. signal .. " stops a script that is still running its own loop in the main "
      .. "chunk", function()
      local p = process.spawn({process.bin, script(LOOPING)})
      finally(function() p:stop("KILL") end)
      assert(p:wait_for_log("^looping$", 5))
      p:signal(signal)
      local status = p:wait(2)
      assert(status, "still running 2 s after SIG" .. signal
        .. " (the script loops for 10 s if the signal is not acted on)")
      assert.not_matches("finished the whole loop", p:stdout())
    end)
  end

  it("survives clients that reset the connection in the middle of a reply (no SIGPIPE)",
    function()
    local server = process.start(ECHO)
    -- The baseline once the loop runs: until then the host is still opening its signal
    -- pipe, and a baseline taken before that (a loaded machine) made this fail.
    local first = assert(client.connect("127.0.0.1", server.port))
    assert.equal("ready", assert(first:echo("ready")))
    first:close()
    local baseline = rel.settled_fd_count(server.pid)
    for round = 1, 5 do
      local c = assert(client.connect("127.0.0.1", server.port, 5, {rcvbuf = 4096}))
      local sent = assert(c:send_until_blocked(4 * 1024 * 1024, 0.2))
      assert(sent > 0, "round " .. round .. ": nothing could be sent")
      assert(c:recv_exact(1, 5)) -- the reply has begun
      -- Closing with unread data makes the kernel send RST: the server's next send fails.
      c:close()
      process.sleep(0.05)
      if not server:alive() then
        local status = server:wait(1)
        error(string.format("round %d: the server died (%s %s):\n%s", round, status.how,
          status.code, server:stderr()))
      end
    end
    local c = assert(client.connect("127.0.0.1", server.port))
    assert.equal("still here", assert(c:echo("still here")))
    c:close()
    -- Every reset connection is closed by the server, none leaks.
    wait_until("the reset connections' fds to be closed (baseline " .. baseline .. ")", 5,
      function() return fd_count(server.pid) <= baseline end,
      function() return fd_detail(server) end)
    assert.same({how = "exit", code = 0}, (server:stop("TERM")), server:stderr())
  end)

  it("hides the listening line under --log-level warn, and still serves", function()
    local server = process.spawn({process.bin, "--log-level", "warn", ECHO, "127.0.0.1:0"})
    local ports
    wait_until("the server to listen", 5, function()
      assert(server:alive(), "the server exited:\n" .. server:stderr())
      ports = process.listening_ports(server.pid)
      return #ports > 0
    end)
    local c = assert(client.connect("127.0.0.1", ports[1]))
    assert.equal("quiet", assert(c:echo("quiet")))
    c:close()
    assert.same({how = "exit", code = 0}, (server:stop("TERM")))
    assert.not_matches("listening on", server:stderr())
    assert.not_matches(" info ", server:stderr())
  end)
end)
