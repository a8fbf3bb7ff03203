-- chat_redis_spec.lua: scripts/chat.lua --redis, two (or three) real chat servers on a
-- redis-server of the spec's own: one chat across them, every event exactly once and in
-- each sender's order, names unique across servers and listed by who; Redis killed and
-- restarted mid-chat (local chat goes on, the servers rejoin and settle a name clash);
-- Redis stalled by DEBUG SLEEP (local chat goes on meanwhile); a killed server's names
-- gone after the TTL (--name-ttl 1); the workers of a --workers 2 server chatting as
-- servers of their own.
local T = require "luahost.test"
local R = require "support.redis"
local chat = require "support.chat"

local TTL = "1"

-- A chat server on redis_server, once it (each of its `workers`, if given) says it is
-- connected to Redis.
local function start_chat(redis_server, workers)
  local p = T.spawn("scripts/chat.lua", {"127.0.0.1:0", "--redis",
    redis_server.host .. ":" .. redis_server.port, "--name-ttl", TTL},
    {env = {LUA_PATH_5_4 = package.path}, -- where it finds luahost.redis
     options = workers and {"--workers", tostring(workers)}})
  p:wait_log("redis %S+ connected", 5, workers)
  return p
end

-- Waits until a say on each server reaches the other (the subscriptions are made), with
-- two probe clients that leave before the test's own come.
local function linked(p1, p2)
  local x = chat.connect(p1.host, p1.port, "probe on server 1")
  local y = chat.connect(p2.host, p2.port, "probe on server 2")
  local x_name = chat.expect(x, {type = "welcome"}).name
  local y_name = chat.expect(y, {type = "welcome"}).name
  -- Their leaves may reach the test's own clients: a server can take a new client before
  -- it reads that x closed, and y's leave reaches server 1 when Redis brings it.
  chat.ignored_leaves[x_name], chat.ignored_leaves[y_name] = true, true
  local function through(from, to, text)
    T.wait_until(function()
      from:send(text .. "\n")
      local ok, line = pcall(to.line, to, 0.2)
      return ok and line:find(text, 1, true)
    end, 5, "a say from one server to reach the other")
  end
  through(x, y, "probe-1")
  through(y, x, "probe-2")
  y:close()
  chat.ignored_leaves[y_name] = nil -- x waits for this one
  chat.expect_eventually(x, {type = "leave", name = y_name})
  chat.ignored_leaves[y_name] = true
  x:close()
end

local function two_servers()
  local server = R.start()
  local p1, p2 = start_chat(server), start_chat(server)
  linked(p1, p2)
  return server, p1, p2
end

-- A client of the server at host:port, once it has its welcome (c.name, its name).
local function welcomed(host, port, label)
  local c = chat.connect(host, port, label)
  c.name = chat.expect(c, {type = "welcome"}).name
  return c
end

local function sorted(list)
  table.sort(list)
  return list
end

-- Reads c's messages until `count` says have come from each name in senders; returns
-- the texts each sent, in the order c got them. Fails on a say from a stranger.
local function says_from(c, senders, count)
  local got, left = {}, 0
  for _, name in ipairs(senders) do
    got[name] = {}
    left = left + count
  end
  while left > 0 do
    local msg = chat.next(c, "says from " .. table.concat(senders, ", "))
    if msg.type == "say" then
      assert(got[msg.from], c.label .. ": a say from " .. tostring(msg.from))
      table.insert(got[msg.from], msg.text)
      left = left - 1
    end
  end
  return got
end

describe("chat.lua --redis", function()
  it("joins two servers into one chat: every event once, in each sender's order", function()
    local _, p1, p2 = two_servers()
    local a = welcomed(p1.host, p1.port, "a on server 1")
    local b = welcomed(p2.host, p2.port, "b on server 2")
    chat.expect(a, {type = "join", name = b.name})
    local c = welcomed(p1.host, p1.port, "c on server 1")
    chat.expect(a, {type = "join", name = c.name})
    -- b may hear a's join first: it was on its way from server 1 when b connected.
    chat.expect_eventually(b, {type = "join", name = c.name})
    assert.is_true(a.name ~= b.name and a.name ~= c.name and b.name ~= c.name)

    -- Names are unique across servers: Redis decides.
    -- A line after a nick waits for Redis's answer with it: it comes from the new name.
    a:send("/nick ann\nas ann\n")
    for _, x in ipairs({a, b, c}) do
      chat.expect(x, {type = "nick", from = a.name, name = "ann"})
    end
    for _, x in ipairs({b, c}) do chat.expect(x, {type = "say", from = "ann", text = "as ann"}) end
    a.name = "ann"
    b:send("/nick ann\n")
    chat.expect(b, {type = "error", reason = "name ann is taken"})
    assert.same(sorted({"ann", b.name, c.name}), chat.who(b))
    assert.same(sorted({"ann", b.name, c.name}), chat.who(c))

    -- Two senders on two servers, interleaved: each receiver gets each sender's says
    -- exactly once and in order.
    local N = 40
    for i = 1, N do
      a:send("a" .. i .. "\n")
      b:send("b" .. i .. "\n")
    end
    local want_a, want_b = {}, {}
    for i = 1, N do
      want_a[i], want_b[i] = "a" .. i, "b" .. i
    end
    local at_c = says_from(c, {"ann", b.name}, N)
    assert.same(want_a, at_c.ann)
    assert.same(want_b, at_c[b.name])
    assert.same(want_b, says_from(a, {b.name}, N)[b.name])
    assert.same(want_a, says_from(b, {"ann"}, N).ann)
    b:send("/who\n") -- b's own says never come back to it, nor a second copy of a's
    chat.expect(b, {type = "who"})

    c:close()
    chat.expect(a, {type = "leave", name = c.name, reason = "quit"})
    chat.expect(b, {type = "leave", name = c.name, reason = "quit"})
    assert.same(sorted({"ann", b.name}), chat.who(b))
    for _, p in ipairs({p1, p2}) do assert.same({}, p:log_lines("^%S+ error "), p:stderr()) end
  end)

  -- Regression: a publish's reply (the count of servers it reached) answered the next
  -- name claim on the connection, so a say and a nick in one write took a name another
  -- server's client had.
  it("refuses a name taken on another server right after a say", function()
    local _, p1, p2 = two_servers()
    local a = chat.connect(p1.host, p1.port, "a on server 1")
    chat.expect(a, {type = "welcome"})
    a:send("/nick ann\n")
    chat.expect(a, {type = "nick", name = "ann"})
    local b = welcomed(p2.host, p2.port, "b on server 2")
    b:send("hello\n/nick ann\n")
    chat.expect_eventually(b, {type = "error", reason = "name ann is taken"})
    assert.same(sorted({"ann", b.name}), chat.who(b))
  end)

  it("chats locally while Redis is gone, logs it once, and rejoins when it is back", function()
    local server, p1, p2 = two_servers()
    local a = welcomed(p1.host, p1.port, "a on server 1")
    local b = welcomed(p2.host, p2.port, "b on server 2")
    chat.expect(a, {type = "join", name = b.name})

    R.kill(server)
    p1:wait_log("redis %S+ unreachable")
    p2:wait_log("redis %S+ unreachable")
    -- Each server goes on alone: a client joins, says and takes a name locally; both
    -- take the name zed.
    local c = welcomed(p1.host, p1.port, "c on server 1")
    chat.expect(a, {type = "join", name = c.name})
    c:send("/nick zed\n")
    chat.expect(a, {type = "nick", from = c.name, name = "zed"})
    chat.expect(c, {type = "nick", from = c.name, name = "zed"})
    b:send("/nick zed\n")
    chat.expect_eventually(b, {type = "nick", name = "zed"}) -- after a's join, maybe
    a:send("still here\n")
    chat.expect(c, {type = "say", from = a.name, text = "still here"})
    assert.same(sorted({a.name, "zed"}), chat.who(a))
    T.sleep(1) -- the servers retry meanwhile (backoff up to 2 s)...
    for _, p in ipairs({p1, p2}) do -- ...and said so once
      assert.equal(1, #p:log_lines("unreachable", true), p:stderr())
    end

    R.start(server.port)
    p1:wait_log("redis %S+ connected", 5, 2)
    p2:wait_log("redis %S+ connected", 5, 2)
    -- Both re-registered their names: one of the two zeds was renamed and told so.
    local renamed
    T.wait_until(function()
      for _, x in ipairs({c, b}) do
        local line = x:received():match('[^\n]*"reason":"name zed is taken[^\n]*')
        if line then renamed = x end
      end
      return renamed
    end, 5, "one of the zeds to be renamed")
    local msg = chat.expect_eventually(renamed, {type = "nick", from = "zed"})
    renamed.name = msg.name
    local kept = renamed == c and b or c
    kept.name = "zed"
    -- One chat again: a's says reach b on the other server.
    T.wait_until(function()
      a:send("back\n")
      local ok, line = pcall(b.line, b, 0.2)
      return ok and line:find('"back"', 1, true)
    end, 5, "a say to cross servers again")
    T.wait_until(function()
      local names = chat.who(a)
      return #names == 3, table.concat(names, " ")
    end, 5, "who to list the clients of both servers")
    assert.same(sorted({a.name, b.name, c.name}), chat.who(a))
    assert.is_true(b.name ~= c.name)
  end)

  it("keeps local chat going while Redis sleeps, and relays the rest after", function()
    local server, p1, p2 = two_servers()
    local a = welcomed(p1.host, p1.port, "a on server 1")
    local b = welcomed(p2.host, p2.port, "b on server 2")
    chat.expect(a, {type = "join", name = b.name})
    local c = welcomed(p1.host, p1.port, "c on server 1")
    chat.expect_eventually(a, {type = "join", name = c.name})
    chat.expect_eventually(b, {type = "join", name = c.name})

    local stall = R.stall(server, 3)
    T.sleep(0.1) -- Redis is asleep now
    a:send("during the stall\n")
    chat.expect(c, {type = "say", from = a.name, text = "during the stall"})
    local d = welcomed(p1.host, p1.port, "d on server 1") -- joins are local too
    chat.expect(a, {type = "join", name = d.name})
    -- A nick waits for Redis 1 s at most, then the server decides alone.
    c:send("/nick cat\n")
    chat.expect(a, {type = "nick", from = c.name, name = "cat"})
    assert.equal("", stall:received(), "Redis answered before the local chat was done")
    -- Once Redis wakes, the other server gets what was said, in order.
    chat.expect(b, {type = "say", from = a.name, text = "during the stall"}, 5)
    chat.expect(b, {type = "join", name = d.name})
    chat.expect(b, {type = "nick", from = c.name, name = "cat"})
    assert.same(sorted({a.name, b.name, "cat", d.name}), chat.who(b)) -- registered since
  end)

  it("chats across servers again after a reload, with the same names", function()
    local _, p1, p2 = two_servers()
    local a = welcomed(p1.host, p1.port, "a on server 1")
    local b = welcomed(p2.host, p2.port, "b on server 2")
    p1:signal("HUP")
    p1:wait_log("reloaded scripts/chat.lua")
    for _, pair in ipairs({{a, b}, {b, a}}) do
      local from, to = pair[1], pair[2]
      T.wait_until(function()
        from:send("after the reload\n")
        local ok, line = pcall(to.line, to, 0.2)
        return ok and line:find("after the reload", 1, true)
      end, 5, "a say to cross servers after the reload")
    end
    -- Once: the new load took the old one's subscription over, and made none of its own.
    assert.equal(1, #p1:log_lines("redis %S+ connected"), p1:stderr())
    b:send("once\n")
    chat.expect_eventually(a, {type = "say", text = "once"})
    local _, skipped = chat.who(a)
    for _, msg in ipairs(skipped) do assert.is_true(msg.text ~= "once", "a second copy") end
    T.wait_until(function()
      local names = chat.who(b)
      return #names == 2, table.concat(names, " ")
    end, 3, "who to list both clients")
    assert.same(sorted({a.name, b.name}), chat.who(b))
    assert.same({}, p1:log_lines("^%S+ error "), p1:stderr())
  end)

  -- Regression: a reload closed the subscription and made a new one, so what the other
  -- servers published until the new one was made never reached this server's clients.
  -- Redis asleep makes that window last: the say waits in Redis, which runs it before it
  -- reads the new connection's SUBSCRIBE.
  it("relays what another server says while this one reloads", function()
    local server, p1, p2 = two_servers()
    local a = welcomed(p1.host, p1.port, "a on server 1")
    local b = welcomed(p2.host, p2.port, "b on server 2")
    chat.expect(a, {type = "join", name = b.name})
    local stall = R.stall(server, 1)
    T.sleep(0.1) -- Redis is asleep now
    b:send("during the reload\n")
    T.sleep(0.1) -- server 2 has published it
    p1:signal("HUP")
    p1:wait_log("reloaded scripts/chat.lua")
    chat.expect(a, {type = "say", from = b.name, text = "during the reload"}, 5)
    assert.equal("+OK", (stall:line(3):gsub("\r$", "")))
    b:send("after\n")
    chat.expect(a, {type = "say", from = b.name, text = "after"})
    local _, skipped = chat.who(a) -- once: no second subscription
    for _, msg in ipairs(skipped) do assert.is_true(msg.type ~= "say", msg.text) end
    assert.same({}, p1:log_lines("^%S+ error "), p1:stderr())
  end)

  it("makes the workers of a --workers 2 server and another server one chat", function()
    local server = R.start()
    local pw, p2 = start_chat(server, 2), start_chat(server)
    -- Each worker is a chat server of its own on Redis, so a guest's name carries its
    -- worker's tag: connect until one client is on each (the kernel spreads connections
    -- over the workers' sockets by address; 40 all on one worker: about 1e-12).
    local on_worker, count = {}, 0
    for i = 1, 40 do
      local c = welcomed(pw.host, pw.port, "client " .. i .. " of the workers")
      local tag = assert(c.name:match("^guest%-(%x+)%-%d+$"), c.name)
      if on_worker[tag] then
        c:close()
      else
        on_worker[tag], count = c, count + 1
        if count == 2 then break end
      end
    end
    assert.equal(2, count, "no client reached the second worker")
    local tag1 = next(on_worker)
    local tag2 = next(on_worker, tag1)
    local a, b = on_worker[tag1], on_worker[tag2]
    local c = welcomed(p2.host, p2.port, "c on the other server")
    local all = {a, b, c}
    -- Until each client's say reaches the two others (every subscription is made); then
    -- a marker from each, after which nothing of the probes is left queued.
    for _, from in ipairs(all) do
      for _, to in ipairs(all) do
        if to ~= from then
          T.wait_until(function()
            from:send("probe\n")
            local ok, line = pcall(to.line, to, 0.2)
            return ok and line:find('"probe"', 1, true)
          end, 5, "a say from " .. from.label .. " to reach " .. to.label)
        end
      end
    end
    for _, from in ipairs(all) do
      from:send("marker\n")
      for _, to in ipairs(all) do
        if to ~= from then
          chat.expect_eventually(to, {type = "say", from = from.name, text = "marker"})
        end
      end
    end

    local N = 30
    for i = 1, N do
      for _, from in ipairs(all) do from:send(from.name .. " " .. i .. "\n") end
    end
    for _, to in ipairs(all) do
      local senders, want = {}, {}
      for _, from in ipairs(all) do
        if from ~= to then
          senders[#senders + 1] = from.name
          want[from.name] = {}
          for i = 1, N do want[from.name][i] = from.name .. " " .. i end
        end
      end
      assert.same(want, says_from(to, senders, N))
      local _, skipped = chat.who(to) -- nothing more: no second copy, not its own
      for _, msg in ipairs(skipped) do assert.is_true(msg.type ~= "say", msg.text) end
    end
    T.wait_until(function()
      return #chat.who(c) == 3
    end, 5, "who to list the three clients (the spare ones have left)")
    assert.same(sorted({a.name, b.name, c.name}), chat.who(c))
    for _, p in ipairs({pw, p2}) do assert.same({}, p:log_lines(" error "), p:stderr()) end
  end)

  it("forgets the names of a server that was killed once their TTL runs out", function()
    local server = R.start()
    local p1, p2, p3 = start_chat(server), start_chat(server), start_chat(server)
    linked(p1, p2)
    linked(p1, p3)
    local a = chat.connect(p1.host, p1.port, "a on server 1")
    chat.expect(a, {type = "welcome"})
    a:send("/nick ghost\n")
    chat.expect(a, {type = "nick", name = "ghost"})
    local b = welcomed(p2.host, p2.port, "b on server 2")
    T.wait_until(function()
      local names = chat.who(b)
      return names[1] == "ghost" or names[2] == "ghost", table.concat(names, " ")
    end, 3, "who on server 2 to list ghost")
    p1:stop("KILL")
    -- No leave comes from a killed server; its name lasts one TTL (1 s) at most.
    T.wait_until(function()
      local names = chat.who(b)
      return #names == 1, table.concat(names, " ")
    end, 4, "ghost to go")
    assert.same({b.name}, chat.who(b))
    -- ... and is free again for a client of another server.
    local c = chat.connect(p3.host, p3.port, "c on server 3")
    chat.expect(c, {type = "welcome"})
    c:send("/nick ghost\n")
    chat.expect(c, {type = "nick", name = "ghost"})
  end)
end)
