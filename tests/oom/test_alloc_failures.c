/* test_alloc_failures.c: fails the Nth Lua allocation of each binding operation, N = 1, 2, ...,
 * and checks after every failure that the host's state is consistent and no fd leaked. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_luahost(lua_State *L);

#define MAX_FAILURE_POINTS 5000

/* The allocator's switch. The failure is persistent: Lua retries a refused allocation
 * after an emergency collection, so refusing only one would never raise. */
static struct {
    int armed;
    long allowed; /* growing allocations still granted while armed */
    int refused;  /* one was refused since arming */
} fault;

static void *fault_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    /* For a new block (ptr NULL) osize is the object's type, not a size. */
    if (fault.armed && (ptr == NULL || nsize > osize)) {
        if (fault.allowed == 0) {
            fault.refused = 1;
            return NULL;
        }
        fault.allowed--;
    }
    return realloc(ptr, nsize);
}

static int open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    int n = -1; /* the directory's own fd */
    if (!dir) {
        perror("/proc/self/fd");
        exit(2);
    }
    for (struct dirent *e; (e = readdir(dir));)
        n += e->d_name[0] != '.';
    closedir(dir);
    return n;
}

/* Run once per state, unarmed: names the scenarios share. T holds what a scenario made;
 * its lists have slots filled ahead, so storing a result during the action allocates
 * nothing and cannot itself lose the object. */
static const char prelude[] =
    "luahost = require 'luahost'\n"
    "sel, READ, WRITE = luahost.selector, luahost.EVENT_READ, luahost.EVENT_WRITE\n"
    "luahost.log_level('error')\n"
    "T = {sockets = {false, false, false, false}, timers = {false, false, false},\n"
    "     result = false, drain_arg = false, on_reload_ran = false, got = false,\n"
    "     host = false, host_timer = false}\n"
    "function noop() end\n"
    "function sleep(seconds)\n"
    "  local s = luahost.new_selector()\n"
    "  for _ in s:select(seconds) do end\n"
    "  s:close()\n"
    "end\n"
    "function wait_ready(sock, events)\n"
    "  local s, ready = luahost.new_selector(), false\n"
    "  s:register(sock, events or READ)\n"
    "  for _ in s:select(5) do ready = true end\n"
    "  s:close()\n"
    "  assert(ready, 'timed out waiting for a socket')\n"
    "end\n"
    /* Small kernel buffers, so a write of a few hundred KiB must be buffered by the host. */
    "function pair()\n"
    "  local l = luahost.socket()\n"
    "  l:setsockopt('rcvbuf', 4096)\n"
    "  assert(l:bind('127.0.0.1', 0))\n"
    "  assert(l:listen())\n"
    "  local c = assert(luahost.connect('127.0.0.1', select(2, l:getsockname())))\n"
    "  c:setsockopt('sndbuf', 4096)\n"
    "  wait_ready(l)\n"
    "  local s = assert(l:accept())\n"
    "  l:close()\n"
    "  return c, s\n"
    "end\n"
    /* Reads from sock, stepping the loop, until want bytes came or until the end. */
    "function drain(sock, want)\n"
    "  local got, deadline = 0, luahost.now() + 5\n"
    "  while got < want do\n"
    "    assert(luahost.now() < deadline, 'timed out draining: ' .. got .. ' of ' .. want)\n"
    "    luahost.step(0.001)\n"
    "    local data = sock:recv()\n"
    "    if data == '' then break end\n"
    "    got = got + #(data or '')\n"
    "  end\n"
    "  return got\n"
    "end\n"
    "function check_selector(s, name)\n"
    "  local n = 0\n"
    "  for fileobj, key in pairs(s:get_map()) do\n"
    "    n = n + 1\n"
    "    assert(rawequal(key.fileobj, fileobj) and s:get_key(fileobj) == key,\n"
    "           name .. ': get_map() and get_key() disagree on fd ' .. key.fd)\n"
    "  end\n"
    "  for _, sock in pairs(T.sockets) do\n"
    "    if sock and sock:fileno() >= 0 then\n"
    "      local key = s:get_key(sock)\n"
    "      if key then\n"
    "        assert(rawequal(key.fileobj, sock), name .. ': the key of fd ' .. key.fd ..\n"
    "               ' holds another fileobj')\n"
    "      else\n"
    "        local ok, err = pcall(s.register, s, sock, READ, noop)\n"
    "        assert(ok, name .. ': socket on fd ' .. sock:fileno() ..\n"
    "               ' has no key but cannot be registered: ' .. tostring(err))\n"
    "        s:unregister(sock)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  return n\n"
    "end\n"
    "function check_common()\n"
    "  collectgarbage()\n"
    "  collectgarbage()\n" /* the first runs finalizers of what the action dropped */
    "  local stats = luahost.stats()\n"
    "  local n = check_selector(sel, 'luahost.selector')\n"
    "  assert(stats.registered == n, ('stats().registered is %d but get_map() has %d keys')\n"
    "         :format(stats.registered, n))\n"
    "  if T.sel2 then check_selector(T.sel2, 'second selector') end\n"
    /* The lowest free fds go first: a registration the core kept for a closed fd shows. */
    "  local fresh = {}\n"
    "  for i = 1, 4 do\n"
    "    fresh[i] = luahost.socket()\n"
    "    local ok, err = pcall(sel.register, sel, fresh[i], READ, noop)\n"
    "    assert(ok, 'a new socket on fd ' .. fresh[i]:fileno() ..\n"
    "           ' cannot be registered: ' .. tostring(err))\n"
    "  end\n"
    "  for _, s in ipairs(fresh) do s:close() end\n"
    "  local active, flushing = 0, 0\n"
    "  for _, t in pairs(T.timers) do\n"
    "    if t and t:active() then active = active + 1 end\n"
    "  end\n"
    "  assert(stats.timers == active, ('stats().timers is %d but the script sees %d active')\n"
    "         :format(stats.timers, active))\n"
    "  for _, s in pairs(T.sockets) do\n"
    "    if s and s:fileno() >= 0 and s:pending() > 0 then flushing = flushing + 1 end\n"
    "  end\n"
    /* flushing counts lingering closes too: both are host interest in the selector */
    "  assert(stats.flushing == flushing + stats.lingering,\n"
    "         ('stats().flushing is %d but %d sockets have output and %d linger')\n"
    "         :format(stats.flushing, flushing, stats.lingering))\n"
    "  for key, mask in sel:select(0) do\n"
    "    assert(mask & ~key.events == 0, ('fd %d: mask %d is outside its key\\'s events %d')\n"
    "           :format(key.fd, mask, key.events))\n"
    "  end\n"
    "  assert(luahost.step(0))\n" /* raises if a failure left the loop marked busy */
    "end\n";

/* What the reload scenario loads: it changes a key, adds one, drops one, cancels a
 * timer, and makes a listener, a timer, an on_reload callback and an adopt function
 * (which takes over T.peer's key), all of which a refusal undoes. */
static const char reload_script[] =
    "local luahost = require 'luahost'\n"
    "local sel, T = luahost.selector, T\n"
    "sel:register(T.sockets[1], luahost.EVENT_READ | luahost.EVENT_WRITE, function() end)\n"
    "sel:register(T.sockets[2], luahost.EVENT_READ, function() end)\n"
    "sel:unregister(T.sockets[4])\n"
    "T.timers[1]:cancel()\n"
    "T.sockets[3] = assert(luahost.listen('127.0.0.1', 0))\n"
    "T.timers[2] = luahost.every(60, function() end)\n"
    "luahost.on_reload(function() end)\n"
    "luahost.adopt = function(key) sel:modify(key.fileobj, key.events, function() end) end\n";

struct scenario {
    const char *name;
    const char *setup;  /* unarmed; leaves what it made in T */
    const char *action; /* armed */
    const char *check;  /* unarmed, after check_common(); ACTION_OK says how the action went */
};

static const struct scenario scenarios[] = {
    {"register", "T.sockets[1], T.sockets[2] = pair()",
     "sel:register(T.sockets[1], READ, function() end)",
     "assert(not ACTION_OK or sel:get_key(T.sockets[1]), 'register returned but no key')"},
    {"modify", "T.sockets[1], T.sockets[2] = pair(); sel:register(T.sockets[1], READ, noop)",
     "sel:modify(T.sockets[1], READ | WRITE, function() end)",
     "local key = assert(sel:get_key(T.sockets[1]), 'the key is gone')\n"
     "assert(key.events == (ACTION_OK and 3 or 1), 'events ' .. key.events)\n"
     "assert((key.data == noop) == not ACTION_OK, 'data does not match events')"},
    {"unregister", "T.sockets[1], T.sockets[2] = pair(); sel:register(T.sockets[1], READ, noop)",
     "sel:unregister(T.sockets[1])",
     "assert(not ACTION_OK or not sel:get_key(T.sockets[1]), 'unregistered but has a key')"},
    {"listen", "", "T.sockets[1] = assert(luahost.listen('127.0.0.1', 0))",
     "local n = 0\n"
     "for _, l in ipairs(luahost.listeners()) do\n"
     "  assert(l:fileno() >= 0, 'a closed socket in listeners()')\n"
     "  assert(rawequal(l, T.sockets[1]), 'a listener the script never got')\n"
     "  n = n + 1\n"
     "end\n"
     "assert(n == (ACTION_OK and 1 or 0), n .. ' listeners')"},
    {"socket:listen", "T.sockets[1] = luahost.socket(); assert(T.sockets[1]:bind('127.0.0.1', 0))",
     "T.sockets[1]:listen()",
     /* Whether the kernel has it listening, against whether the host lists it. */
     "local probe = luahost.socket()\n"
     "local listening = probe:connect_ex('127.0.0.1', select(2, T.sockets[1]:getsockname())) == 0\n"
     "probe:close()\n"
     "local listed = rawequal(luahost.listeners()[1], T.sockets[1])\n"
     "assert(listening == listed, 'listening: ' .. tostring(listening) .. ', in listeners(): ' ..\n"
     "       tostring(listed))"},
    {"connect", "T.sockets[2] = assert(luahost.listen('127.0.0.1', 0))",
     "T.sockets[1] = assert(luahost.connect('127.0.0.1', select(2, T.sockets[2]:getsockname())))",
     ""},
    {"accept and register",
     "T.sockets[1] = assert(luahost.listen('127.0.0.1', 0))\n"
     "T.sockets[2] = assert(luahost.connect('127.0.0.1', select(2, T.sockets[1]:getsockname())))\n"
     "wait_ready(T.sockets[1])",
     "T.sockets[3] = assert(T.sockets[1]:accept())\n"
     "sel:register(T.sockets[3], READ, function(s) s:recv() end)",
     "collectgarbage()\n"
     "local open = T.sockets[3] and T.sockets[3]:fileno() >= 0 and 1 or 0\n"
     "assert(luahost.stats().connections == open,\n"
     "       luahost.stats().connections .. ' connections counted, ' .. open .. ' open')"},
    {"write and on_drain", "T.sockets[1], T.sockets[2] = pair(); T.data = ('x'):rep(256 * 1024)",
     "local c = T.sockets[1]\n"
     "c:on_drain(function(s) T.drain_arg = s == nil and 'nil' or s end)\n"
     "assert(c:write(T.data) > 0, 'the write was not buffered')",
     /* A drain after any failure shows what on_drain was left with. */
     "local c = T.sockets[1]\n"
     "if c:pending() == 0 then assert(c:write(T.data) > 0) end\n"
     "drain(T.sockets[2], #T.data)\n"
     "assert(c:pending() == 0, 'output left after draining')\n"
     "assert(T.drain_arg == false or rawequal(T.drain_arg, c),\n"
     "       'on_drain got ' .. tostring(T.drain_arg) .. ' instead of its socket')"},
    {"write_all with a connection over its limit",
     "T.sockets[1], T.sockets[2] = pair(); T.sockets[3], T.sockets[4] = pair()\n"
     "T.sockets[3]:setlimit(1)\n"
     "T.data = ('x'):rep(64 * 1024)",
     "T.result = luahost.write_all({[T.sockets[1]] = true, [T.sockets[3]] = true}, T.data)",
     "assert(not ACTION_OK or T.result == 1 and T.sockets[3]:fileno() == -1, 'wrote to ' ..\n"
     "       tostring(T.result) .. ', the one over its limit on fd ' .. T.sockets[3]:fileno())"},
    {"close with pending output",
     "T.sockets[1], T.sockets[2] = pair(); T.data = ('x'):rep(256 * 1024)\n"
     "sel:register(T.sockets[1], READ, noop)\n"
     "assert(T.sockets[1]:write(T.data) > 0, 'the write was not buffered')",
     "T.sockets[1]:close()",
     "if ACTION_OK then\n"
     "  local got = drain(T.sockets[2], math.huge)\n"
     "  assert(got == #T.data, 'the lingering close sent ' .. got .. ' of ' .. #T.data)\n"
     "end"},
    {"timers", "T.timers[1] = luahost.every(60, noop)",
     "T.timers[2] = luahost.after(60, function() end)\n"
     "T.timers[3] = luahost.every(60, function() end)\n"
     "T.timers[1]:cancel()",
     ""},
    {"step running due timers",
     "T.timers[1] = luahost.after(0, function() T.got = ('x'):rep(100) .. '!' end)\n"
     "T.timers[2] = luahost.every(0.001, function() T.got = ('y'):rep(100) .. '!' end)\n"
     "sleep(0.002)",
     "luahost.step(0)", "assert(T.timers[2]:active(), 'the repeating timer stopped')"},
    {"step dispatching to a callback that allocates",
     "T.sockets[1], T.sockets[2] = pair()\n"
     "sel:register(T.sockets[2], READ, function(s) T.got = s:recv() .. '!' end)\n"
     "assert(T.sockets[1]:send('hello') == 5)\n"
     "wait_ready(T.sockets[2])",
     "luahost.step(0)", "assert(not ACTION_OK or T.got == 'hello!' or T.got == false)"},
    {"second selector", "T.sockets[1], T.sockets[2] = pair()",
     "T.sel2 = luahost.new_selector()\n"
     "T.sel2:register(T.sockets[1], READ, function() end)\n"
     "T.sockets[1]:close()",
     "assert(not ACTION_OK or not next(T.sel2:get_map()), 'a closed socket kept its key')"},
    {"open and shut down another host", "",
     "T.host = luahost.open{}\n"
     "T.sockets[1] = assert(T.host.listen('127.0.0.1', 0))\n"
     "T.host_timer = T.host.every(60, function() end)\n"
     "T.host.shutdown(0)",
     /* A shutdown cut short can be finished, and a closed host's timers table is usable. */
     "if T.host then\n"
     "  T.host.shutdown(0)\n"
     "  assert(not T.sockets[1] or T.sockets[1]:fileno() == -1, 'its listener is still open')\n"
     "  assert(not T.host_timer or not T.host_timer:active(), 'its timer is still active')\n"
     "  assert(T.host.stats().registered == 0 and T.host.stats().timers == 0,\n"
     "         'it still has registrations or timers')\n"
     "  pcall(T.host.after, 60, noop)\n"
     "end"},
    {"reload",
     "T.sockets[1], T.sockets[2] = pair()\n"
     "T.sockets[4], T.peer = pair()\n"
     "sel:register(T.sockets[1], READ, noop)\n"
     "sel:register(T.sockets[4], WRITE, noop)\n"
     "sel:register(T.peer, READ, noop)\n"
     "T.listener = assert(luahost.listen('127.0.0.1', 0))\n"
     "T.timers[1] = luahost.every(60, noop)\n"
     "T.adopt = function() end\n"
     "luahost.adopt = T.adopt\n"
     "luahost.on_reload(function() T.on_reload_ran = true end)\n",
     "T.result = luahost.reload(SCRIPT)",
     "if luahost.generation() == 1 then\n"
     "  local key = assert(sel:get_key(T.sockets[1]), 'refused reload: the old key is gone')\n"
     "  assert(key.events == READ and key.data == noop, 'refused reload: the old key changed')\n"
     "  assert(not sel:get_key(T.sockets[2]), 'refused reload: a new key stayed')\n"
     "  key = assert(sel:get_key(T.sockets[4]), 'refused reload: the key it dropped is not back')\n"
     "  assert(key.events == WRITE and key.data == noop, 'refused reload: a dropped key changed')\n"
     "  assert(sel:get_key(T.peer).data == noop, 'refused reload: a key was adopted')\n"
     "  assert(#luahost.listeners() == 1 and T.listener:fileno() >= 0,\n"
     "         'refused reload: listeners changed')\n"
     "  assert(luahost.adopt == T.adopt, 'refused reload: luahost.adopt not restored')\n"
     "  assert(T.timers[1]:active() and luahost.stats().timers == 1,\n"
     "         'refused reload: timers changed')\n"
     "  assert(luahost.reload(SCRIPT) and T.on_reload_ran,\n"
     "         'refused reload: the old on_reload callbacks are lost')\n"
     "else\n"
     "  assert(T.result == true, 'generation 2 but reload did not return true')\n"
     /* port 0 again during a reload gives back the listener the first load got */
     "  local listeners = luahost.listeners()\n"
     "  assert(#listeners == 1 and rawequal(listeners[1], T.listener) and\n"
     "         rawequal(T.sockets[3], T.listener), 'reloaded, but listeners are not the one')\n"
     "  assert(T.on_reload_ran, 'reloaded, but the old on_reload did not run')\n"
     "  assert(not sel:get_key(T.sockets[4]) and not T.timers[1]:active(),\n"
     "         'reloaded, but what it dropped is still there')\n"
     "end"},
};

static const char *script_path;

static int run(lua_State *L, const char *code, const char *name)
{
    if (luaL_loadbuffer(L, code, strlen(code), name) != LUA_OK)
        return LUA_ERRSYNTAX;
    return lua_pcall(L, 0, 0, 0);
}

/* A state with the module open and the scenario's setup run, or NULL after a message. */
static lua_State *new_state(const struct scenario *sc)
{
    lua_State *L = lua_newstate(fault_alloc, NULL);
    luaL_openlibs(L);
    luaL_requiref(L, "luahost", luaopen_luahost, 0);
    lua_pop(L, 1);
    lua_pushstring(L, script_path);
    lua_setglobal(L, "SCRIPT");
    if (run(L, prelude, "=prelude") != LUA_OK || run(L, sc->setup, "=setup") != LUA_OK) {
        printf("# %s: setup failed: %s\n", sc->name, lua_tostring(L, -1));
        lua_close(L);
        return NULL;
    }
    lua_gc(L, LUA_GCCOLLECT); /* no finalizer left to run while armed */
    return L;
}

/* Runs the action with the Nth allocation failing, then the checks. Returns 1 when the
 * action completed without a refusal (the sweep is over), 0 to go on, -1 on a failure. */
static int try_failing_at(const struct scenario *sc, long n)
{
    int fds = open_fds();
    lua_State *L = new_state(sc);
    if (!L)
        return -1;
    if (luaL_loadbuffer(L, sc->action, strlen(sc->action), "=action") != LUA_OK) {
        printf("# %s: %s\n", sc->name, lua_tostring(L, -1));
        lua_close(L);
        return -1;
    }
    fault.armed = 1;
    fault.allowed = n - 1;
    fault.refused = 0;
    int status = lua_pcall(L, 0, 0, 0);
    fault.armed = 0;
    int verdict = 0;
    if (status != LUA_OK && !fault.refused) {
        printf("# %s, allocation %ld failing: the action failed before any refusal: %s\n", sc->name,
               n, lua_tostring(L, -1));
        verdict = -1;
    }
    lua_settop(L, 0);
    lua_pushboolean(L, status == LUA_OK);
    lua_setglobal(L, "ACTION_OK");
    if (verdict == 0 && (run(L, "check_common()", "=check_common") != LUA_OK ||
                         run(L, sc->check, "=check") != LUA_OK)) {
        printf("# %s, allocation %ld failing (action %s): %s\n", sc->name, n,
               status == LUA_OK ? "completed" : "raised", lua_tostring(L, -1));
        verdict = -1;
    }
    lua_close(L);
    if (verdict == 0 && open_fds() != fds) {
        printf("# %s, allocation %ld failing: %d fds open after lua_close, %d before\n", sc->name,
               n, open_fds(), fds);
        verdict = -1;
    }
    return verdict == 0 && !fault.refused ? 1 : verdict;
}

int main(void)
{
    char path[] = "/tmp/luahost-oom-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, reload_script, strlen(reload_script)) < 0 || close(fd) < 0) {
        perror("reload script");
        return 2;
    }
    script_path = path;
    setvbuf(stdout, NULL, _IOLBF, 0); /* a sanitizer's abort must not swallow what led to it */
    int nscenarios = (int)(sizeof scenarios / sizeof scenarios[0]), failed = 0;
    printf("1..%d\n", nscenarios);
    for (int i = 0; i < nscenarios; i++) {
        const struct scenario *sc = &scenarios[i];
        long n = 1;
        int verdict;
        while ((verdict = try_failing_at(sc, n)) == 0 && n < MAX_FAILURE_POINTS)
            n++;
        if (verdict == 0)
            printf("# %s: still failing at allocation %d\n", sc->name, MAX_FAILURE_POINTS);
        if (verdict == 1)
            printf("ok %d - %s (%ld failure points)\n", i + 1, sc->name, n - 1);
        else
            printf("not ok %d - %s (allocation %ld failing)\n", i + 1, sc->name, n);
        failed += verdict != 1;
    }
    unlink(path);
    return failed ? 1 : 0;
}
