-- group_spec.lua: proves luahost.group: a set of sockets that one write reaches, in
-- which adding, removing, closing and failing members never loses or repeats one, and
-- which checks what it is given.
local luahost = require "luahost"
local helpers = require "support.helpers"

local MiB = 1024 * 1024

-- n connected pairs: the clients' ends and the server's ends.
local function pairs_of(n)
  local clients, conns = {}, {}
  for i = 1, n do clients[i], conns[i] = helpers.tight_pair() end
  return clients, conns
end

local function close_all(list)
  for _, s in ipairs(list) do s:close() end
end

-- Whether each client received exactly `data` (true) or nothing (false), per `expect`.
local function assert_received(clients, expect, data)
  for i, client in ipairs(clients) do
    if expect[i] then
      assert.equal(data, helpers.read_n(client, #data), "client " .. i)
    end
    assert.same({nil, "wouldblock"}, {client:recv()}, "client " .. i .. " got more")
  end
end

describe("luahost.group", function()
  it("writes to every member but the one excepted, once each", function()
    local clients, conns = pairs_of(4)
    local group = luahost.group()
    for _, conn in ipairs(conns) do assert.is_true(group:add(conn)) end
    assert.is_false(group:add(conns[2]), "added twice")
    assert.equal(4, #group)
    local written, failed = group:write("hello\n", conns[3])
    assert.equal(3, written)
    assert.is_nil(failed)
    assert_received(clients, {true, true, false, true}, "hello\n")
    close_all(clients)
    close_all(conns)
  end)

  it("keeps every other member through removals from every position", function()
    local clients, conns = pairs_of(6)
    local group = luahost.group()
    for _, conn in ipairs(conns) do group:add(conn) end
    local present = {true, true, true, true, true, true}
    for _, i in ipairs({1, 6, 3}) do
      assert.is_true(group:remove(conns[i]))
      assert.is_false(group:remove(conns[i]), "removed twice")
      present[i] = false
      assert.equal(#group, select(1, group:write("x")))
      assert_received(clients, present, "x")
    end
    local members = {}
    for _, s in ipairs(group:sockets()) do members[s] = true end
    assert.same({[conns[2]] = true, [conns[4]] = true, [conns[5]] = true}, members)
    close_all(clients)
    close_all(conns)
  end)

  it("drops members that closed at its next write, and reports those past their limit",
    function()
      local clients, conns = pairs_of(4)
      local group = luahost.group()
      for _, conn in ipairs(conns) do group:add(conn) end
      conns[2]:close()
      assert(conns[4]:setlimit(1000))
      local big = ("y"):rep(MiB)
      local written, failed = group:write(big)
      assert.equal(2, written)
      assert.same({[conns[4]] = "buffer full"}, failed)
      assert.equal(-1, conns[4]:fileno(), "a socket past its limit is closed, as by write")
      assert.equal(3, #group, "the closed one left at this write, the full one at the next")
      group:write("z")
      assert.equal(2, #group)
      close_all(clients)
      close_all(conns)
    end)

  it("holds its members: a member only the group refers to is not collected", function()
    local client, conn = helpers.tight_pair()
    local group = luahost.group()
    group:add(conn)
    local weak = setmetatable({conn}, {__mode = "v"})
    conn = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.is_not_nil(weak[1])
    assert.equal(1, (group:write("still here")))
    assert.equal("still here", helpers.read_n(client, 10))
    weak[1]:close()
    client:close()
  end)

  it("raises on what is not a socket, or a closed one, and on a method called on "
    .. "something else", function()
      local group = luahost.group()
      local client, conn = helpers.tight_pair()
      local timer = luahost.after(60, function() end)
      for _, other in ipairs({timer, luahost.selector, {}, "socket", 42}) do
        assert.error_matches(function() group:add(other) end, "luahost.socket expected")
        assert.error_matches(function() group:remove(other) end, "luahost.socket expected")
      end
      timer:cancel()
      conn:close()
      assert.error_matches(function() group:add(conn) end, "socket is closed")
      for _, other in ipairs({conn, {}, io.stdout}) do
        assert.error_matches(function() group.write(other, "x") end, "luahost.group expected")
      end
      assert.error_matches(function() group:write({}) end, "string expected")
      client:close()
    end)
end)
