-- echo_many.lua: many echo clients of one server at once over one selector, each sending
-- its own payload in chunks of its own, for echo_e2e_spec (the kit's clients wait one at
-- a time, and T.echo_each sends a few bytes once).
local luahost = require "luahost"

local READ, WRITE = luahost.EVENT_READ, luahost.EVENT_WRITE
local now = luahost.now

local M = {}

-- Sizes between lo and hi (the last one smaller) that add up to total.
function M.random_chunks(total, lo, hi)
  local sizes, left = {}, total
  while left > 0 do
    local size = math.min(left, math.random(lo, hi))
    sizes[#sizes + 1] = size
    left = left - size
  end
  return sizes
end

-- Runs many echo clients at once over one selector. Each job: payload (the bytes to
-- send), chunks (send sizes; default all at once), shutdown (shut the write side after
-- sending, then read to EOF). opts: timeout (for everything), stall (give up when no
-- byte moved for this long, default 3 s), backend (the client's selector). Returns a
-- list of results, one per job: received (the bytes that came back), eof (EOF was seen),
-- error (a message, or nil), port (the client's own port).
function M.run(host, port, jobs, opts)
  opts = opts or {}
  local timeout, stall = opts.timeout or 20, opts.stall or 3
  local deadline = now() + timeout
  local last_progress = now()
  local sel = luahost.new_selector(opts.backend)
  local results, open = {}, 0

  local function finish(st, message)
    st.result.error = st.result.error or message
    st.result.received = table.concat(st.parts)
    if sel:get_key(st.sock) then sel:unregister(st.sock) end
    st.sock:close()
    st.done = true
    open = open - 1
  end

  for i, job in ipairs(jobs) do
    local result = {received = "", eof = false}
    results[i] = result
    local sock, err = luahost.connect(host, port)
    if not sock then
      result.error = "connect: " .. tostring(err)
    else
      local st = {sock = sock, job = job, result = result, sent = 0, chunk = 1, parts = {},
        got = 0, chunks = job.chunks or {#job.payload}}
      result.port = select(2, sock:getsockname())
      sel:register(sock, READ | WRITE, st)
      open = open + 1
    end
  end

  local function on_write(st)
    local job = st.job
    if st.sent < #job.payload then
      local size = st.chunks[st.chunk]
      local n, err = st.sock:send(job.payload:sub(st.sent + 1, st.sent + size))
      if n then
        st.sent = st.sent + n
        last_progress = now()
        if n < size then
          st.chunks[st.chunk] = size - n -- the rest of this chunk goes next time
        else
          st.chunk = st.chunk + 1
        end
      elseif err ~= "wouldblock" then
        return finish(st, string.format("send: %s after %d bytes", err, st.sent))
      end
    end
    if st.sent == #job.payload then
      if job.shutdown then
        local ok, err = st.sock:shutdown("w")
        if not ok then return finish(st, "shutdown: " .. tostring(err)) end
      end
      sel:modify(st.sock, READ, st)
    end
  end

  local function on_read(st)
    local data, err = st.sock:recv(65536)
    if data == "" then
      st.result.eof = true
      if st.got < #st.job.payload then
        return finish(st, string.format("EOF after %d of %d bytes", st.got, #st.job.payload))
      end
      return finish(st)
    elseif data then
      st.parts[#st.parts + 1] = data
      st.got = st.got + #data
      last_progress = now()
      if st.got > #st.job.payload then
        return finish(st, string.format("got %d bytes, more than the %d sent", st.got,
          #st.job.payload))
      end
      if st.got == #st.job.payload and not st.job.shutdown then return finish(st) end
    elseif err ~= "wouldblock" then
      return finish(st, string.format("recv: %s after %d bytes", err, st.got))
    end
  end

  local why = string.format("timeout after %g s", timeout)
  while open > 0 do
    local left = deadline - now()
    if left <= 0 then break end
    if now() - last_progress > stall then
      why = string.format("stalled: no byte moved for %g s", stall)
      break
    end
    for key, mask in sel:select(math.min(left, 0.5)) do
      local st = key.data
      if not st.done and mask & WRITE ~= 0 then on_write(st) end
      if not st.done and mask & READ ~= 0 then on_read(st) end
    end
  end
  for _, key in pairs(sel:get_map()) do
    local st = key.data
    finish(st, string.format("%s: sent %d, got %d of %d bytes%s", why, st.sent, st.got,
      #st.job.payload, st.job.shutdown and " (waiting for EOF)" or ""))
  end
  sel:close()
  return results
end

return M
