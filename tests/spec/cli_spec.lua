-- cli_spec.lua: the luahost command line as an operator meets it: one clear line and a
-- non-zero status for every mistake, --check/--help/--version, `arg` as lua sets it,
-- exit when nothing is left, graceful stop on SIGTERM/SIGINT, no death by SIGPIPE.
local T = require "luahost.test"
local tcp = require "support.tcp"

local now = require("luahost").now

local ECHO = "scripts/echo.lua"
local USAGE, SCRIPT_ERROR = 2, 1

local function lines(text)
  local list = {}
  for line in text:gmatch("[^\n]+") do list[#list + 1] = line end
  return list
end

-- The run ended by itself with exit status code and wrote exactly one line on stderr,
-- "luahost: ...", holding every string in wanted; nothing on stdout.
local function assert_one_line_error(r, code, ...)
  assert.is_false(r.timed_out, "luahost did not exit by itself\n" .. tostring(r))
  assert.same({how = "exit", code = code}, {how = r.how, code = r.code}, tostring(r))
  local err = lines(r.stderr)
  assert.equal(1, #err, "expected one line on stderr\n" .. tostring(r))
  assert.matches("^luahost: ", err[1])
  for _, wanted in ipairs({...}) do
    assert.matches(wanted, err[1], 1, true)
  end
  assert.equal("", r.stdout, tostring(r))
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
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
  describe("reports an operator's mistake in one line with a non-zero status", function()
    it("for a script file that does not exist", function()
      local missing = os.tmpname()
      os.remove(missing)
      local r = T.run({missing .. ".lua"})
      assert_one_line_error(r, SCRIPT_ERROR, missing .. ".lua", "No such file or directory")
    end)

    it("for a script with a syntax error, naming the file and line", function()
      local path = T.tempfile("local ok = 1\nlocal broken = = 2\n")
      local r = T.run({path})
      assert_one_line_error(r, SCRIPT_ERROR, path .. ":2:")
    end)

    it("when no script is given", function()
      assert_one_line_error(T.run({}), USAGE, "no SCRIPT given")
      assert_one_line_error(T.run({"--selector", "poll"}), USAGE,
        "no SCRIPT given")
    end)

    it("for an unknown option", function()
      assert_one_line_error(T.run({"--frobnicate", ECHO}), USAGE,
        "unknown option '--frobnicate'")
    end)

    it("for an option that lacks its value", function()
      assert_one_line_error(T.run({"--selector"}), USAGE, "--selector")
    end)

    it("for an unknown selector backend", function()
      local r = T.run({"--selector", "bogus", ECHO, "127.0.0.1:0"})
      assert_one_line_error(r, USAGE, "bogus")
      assert.matches("selector", r.stderr)
    end)

    it("for an unknown backend in $LUAHOST_SELECTOR, naming the variable", function()
      local r = T.run({ECHO, "127.0.0.1:0"}, {env = {LUAHOST_SELECTOR = "bogus"}})
      assert_one_line_error(r, USAGE, "bogus")
      assert.matches("$LUAHOST_SELECTOR", r.stderr, 1, true)
    end)

    it("for --selector sim, which is for tests only", function()
      local r = T.run({"--selector", "sim", ECHO, "127.0.0.1:0"})
      assert_one_line_error(r, USAGE, "sim")
      assert.matches("tests only", r.stderr, 1, true)
    end)

    it("for a bad --log-level", function()
      local r = T.run({"--log-level", "loud", ECHO, "127.0.0.1:0"})
      assert_one_line_error(r, USAGE, "loud", "log level")
    end)

    it("for an address already in use", function()
      local first = T.spawn(ECHO)
      local address = "127.0.0.1:" .. first.port
      local r = T.run({ECHO, address}, {timeout = 5})
      assert_one_line_error(r, SCRIPT_ERROR, "Address already in use", address)
      assert.is_true(first:alive(), "the first server died:\n" .. first:stderr())
    end)

    it("for a script path that is a directory", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. dir))
      local r = T.run({dir})
      os.remove(dir)
      assert_one_line_error(r, SCRIPT_ERROR, dir)
    end)

    it("for a bad --max-output", function()
      assert_one_line_error(T.run({"--max-output", "0", ECHO}), USAGE, "'0'")
      assert_one_line_error(T.run({"--max-output=lots", ECHO}), USAGE, "'lots'")
    end)

    it("for a malformed address given to echo.lua", function()
      local r = T.run({ECHO, "127.0.0.1:notaport"})
      assert_one_line_error(r, SCRIPT_ERROR, "127.0.0.1:notaport")
      r = T.run({ECHO, "127.0.0.1:70000"})
      assert_one_line_error(r, SCRIPT_ERROR, "127.0.0.1:70000")
    end)

    it("for a script that raises in its main chunk", function()
      local path = T.tempfile("local x = 1\nerror('the configuration is broken')\n")
      local r = T.run({path})
      assert_one_line_error(r, SCRIPT_ERROR, path .. ":2:", "the configuration is broken")
    end)

    -- Regression: the line ended at the message's first newline, so a missing module
    -- said "module 'x' not found:" and not where it was looked for.
    it("for a message of several lines: all of it, its newlines escaped", function()
      local path = T.tempfile('require "luahost_no_such_module"\n')
      local r = T.run({path})
      assert_one_line_error(r, SCRIPT_ERROR, "module 'luahost_no_such_module' not found:\\n",
        "no file '")
      assert.not_matches("stack traceback", r.stderr, 1, true)
    end)

    it("for a main chunk's error with a NUL and control bytes: escaped, not cut", function()
      local path = T.tempfile('error("before\\0after\\27[2J the end")\n')
      local r = T.run({path})
      assert_one_line_error(r, SCRIPT_ERROR, path .. ":1:", "before\\x00after\\x1b[2J the end")
    end)
  end)

  describe("--check", function()
    it("says syntax OK and exits 0 for a good script, without running it", function()
      local path = T.tempfile("print('the script ran')\n")
      local r = T.run({"--check", path})
      assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
      assert.matches("syntax OK", r.stdout)
      assert.not_matches("the script ran", r.stdout)
      local echo = T.run({"--check", ECHO})
      assert.same({"exit", 0}, {echo.how, echo.code}, tostring(echo))
      assert.equal(ECHO .. ": syntax OK\n", echo.stdout)
    end)

    it("exits 1 with the error for a bad script", function()
      local path = T.tempfile("if then\n")
      assert_one_line_error(T.run({"--check", path}), SCRIPT_ERROR, path .. ":1:")
    end)
  end)

  it("--help and -h print the usage and exit 0", function()
    for _, flag in ipairs({"--help", "-h"}) do
      local r = T.run({flag})
      assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
      assert.matches("^Usage: luahost %[options%] SCRIPT", r.stdout)
      for _, word in ipairs({"--selector", "epoll, poll, select", "--log-level", "--check",
        "--version"}) do
        assert.matches(word, r.stdout, 1, true)
      end
      assert.equal("", r.stderr)
    end
  end)

  it("README's command-line block is --help's list of options, word for word", function()
    local r = T.run({"--help"})
    local options = assert(r.stdout:match("\nOptions:\n(.*)$"), r.stdout)
    local readme = read_file("README.md")
    local block = assert(readme:match("\n```\nluahost %[options%] SCRIPT %[ARGS%.%.%.%]\n(.-)```"),
      "no command-line block in README.md")
    assert.equal(options, block)
  end)

  it("--version prints the version and exits 0", function()
    local r = T.run({"--version"})
    assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
    assert.matches("^luahost %d+%.%d+%.%d+ %(Lua 5%.4%.%d+%)\n$", r.stdout)
    assert.equal("", r.stderr)
  end)

  it("sets arg as lua does: the script at 0, its arguments from 1, the host before",
    function()
    local path = T.tempfile([[
for i = -3, #arg do print(i, arg[i]) end
print("n", #arg)
print("...", table.concat({...}, "|"))
]])
    local r = T.run({"--log-level", "warn", path, "one", "two words", "--check"})
    assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
    assert.same({
      "-3\t" .. T.executable(), "-2\t--log-level", "-1\twarn", "0\t" .. path,
      "1\tone", "2\ttwo words", "3\t--check", "n\t3", "...\tone|two words|--check",
    }, lines(r.stdout))
  end)

  it("uses the backend that --selector names, in both option forms", function()
    local path = T.tempfile("print(luahost.selector.backend)\n")
    for _, backend in ipairs({"epoll", "poll", "select"}) do
      for _, options in ipairs({{"--selector", backend}, {"--selector=" .. backend}}) do
        local args = {table.unpack(options)}
        args[#args + 1] = path
        local r = T.run(args)
        assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
        assert.equal(backend .. "\n", r.stdout, table.concat(options, " "))
      end
    end
  end)

  it("exits 0 promptly when the script runs its own loop and registers nothing", function()
    local server = T.spawn(ECHO)
    local path = T.tempfile([[
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
    local r = T.run({path, tostring(server.port)}, {timeout = 10})
    assert.same({"exit", 0}, {r.how, r.code}, tostring(r))
    assert.equal("ping\n", r.stdout)
    assert.is_true(r.elapsed < 3, string.format("took %.2f s to exit", r.elapsed))
  end)

  for _, signal in ipairs({"TERM", "INT"}) do
    it("stops gracefully on SIG" .. signal .. ": exit status 0, a log line, clients closed",
      function()
      local server = T.spawn(ECHO)
      local c = T.client("127.0.0.1", server.port, {timeout = 5})
      c:echo("hello")
      T.assert_graceful_stop(server, signal)
      assert.matches("SIG" .. signal .. " received", server:stderr())
      local closed, how = c:closed(2)
      c:close()
      assert.equal("eof", how, "the client's connection: " .. tostring(closed))
    end)
  end

  it("sends what it still has buffered for a slow reader before stopping on SIGTERM",
    function()
    local server = T.spawn(ECHO)
    local c = T.client("127.0.0.1", server.port, {timeout = 5, rcvbuf = 4096})
    local port = c:local_port()
    -- Bytes the host holds in its own buffer, once it has read all the client sent: what
    -- it read, less what the kernel holds (the server's send queue, the client's receive
    -- queue). Send 128 KiB at a time, under the 256 KiB at which the host stops reading,
    -- until the kernel is full and the host has to keep some.
    local step, sent, held = 128 * 1024, 0, 0
    while held <= 0 do -- (bytes in flight may count twice: held is a lower bound)
      assert(sent < 32 * 1024 * 1024, "the host never had to buffer output")
      -- (fill never reads: the echo stays in the kernel and the host)
      assert.equal(step, c:fill(step, 5), "the host stopped taking the client's bytes")
      sent = sent + step
      local server_tx
      T.wait_until(function()
        local client_tx = tcp.queues(port, server.port)
        local server_rx
        server_tx, server_rx = tcp.queues(server.port, port)
        return client_tx == 0 and server_rx == 0
      end, 5, "the server to read all " .. sent .. " bytes")
      local _, client_rx = tcp.queues(port, server.port)
      held = sent - server_tx - client_rx
    end
    server:signal("TERM")
    local data = c:read_all(5) -- fails on a reset or no end within 5 s
    c:close()
    assert.equal(sent, #data, string.format("bytes echoed before the server closed (%d of "
      .. "them were in the host's buffer at SIGTERM)", held))
    assert.same({how = "exit", code = 0}, server:wait(5), server:stderr())
  end)

  it("stops within its grace period on SIGTERM even if a client never reads", function()
    local server = T.spawn(ECHO)
    local c = T.client("127.0.0.1", server.port, {timeout = 5, rcvbuf = 4096})
    c:fill(4 * 1024 * 1024, 0.2)
    local signalled = now()
    local status, killed = server:stop("TERM", 6)
    c:close()
    assert.is_false(killed, "the server did not stop:\n" .. server:stderr())
    assert.same({how = "exit", code = 0}, status, server:stderr())
    local took = now() - signalled
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
      local p = T.spawn(T.tempfile(LOOPING), {}, {listen = false})
      finally(function() p:stop("KILL") end)
      p:wait_log("^looping$", 5)
      p:signal(signal)
      local status = p:wait(2)
      assert(status, "still running 2 s after SIG" .. signal
        .. " (the script loops for 10 s if the signal is not acted on)")
      assert.not_matches("finished the whole loop", p:stdout())
    end)
  end

  it("survives clients that reset the connection in the middle of a reply (no SIGPIPE)",
    function()
    local server = T.spawn(ECHO)
    -- The baseline once the loop runs: until then the host is still opening its signal
    -- pipe, and a baseline taken before that (a loaded machine) made this fail.
    local first = T.client("127.0.0.1", server.port, {timeout = 5})
    first:echo("ready")
    first:close()
    local baseline = server:settled_fd_count()
    for round = 1, 5 do
      local c = T.client("127.0.0.1", server.port, {timeout = 5, rcvbuf = 4096})
      local sent = c:fill(4 * 1024 * 1024, 0.2)
      assert(sent > 0, "round " .. round .. ": nothing could be sent")
      c:read(1, 5) -- the reply has begun
      -- Closing with unread data makes the kernel send RST: the server's next send fails.
      c:close()
      T.sleep(0.05)
      assert(server:alive(), string.format("round %d: the server died: %s", round,
        tostring(server)))
    end
    local c = T.client("127.0.0.1", server.port, {timeout = 5})
    c:echo("still here")
    c:close()
    -- Every reset connection is closed by the server, none leaks.
    T.wait_until(function() return server:fd_count() <= baseline end, 5, function()
      return "the reset connections' fds to be closed (baseline " .. baseline .. "):\n"
        .. fd_detail(server)
    end)
    T.assert_graceful_stop(server)
  end)

  it("hides the listening line under --log-level warn, and still serves", function()
    local server = T.spawn(ECHO, {"127.0.0.1:0"}, {log_level = "warn", listen = false})
    local ports
    T.wait_until(function()
      assert(server:alive(), "the server exited:\n" .. server:stderr())
      ports = server:listening_ports()
      return #ports > 0
    end, 5, "the server to listen")
    local c = T.client("127.0.0.1", ports[1], {timeout = 5})
    c:echo("quiet")
    c:close()
    assert.same({how = "exit", code = 0}, (server:stop("TERM")))
    assert.not_matches("listening on", server:stderr())
    assert.not_matches(" info ", server:stderr())
  end)
end)
