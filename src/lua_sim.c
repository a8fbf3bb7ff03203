/* lua_sim.c: luahost.sim, the controls of a host on the "sim" backend (luahost.open
 * {selector = "sim"}): in-memory clients, shaped sends, resets, failed accepts, and the
 * virtual clock, which moves only when the test advances it. */
#include "lua_sim.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "backend.h"
#include "sim.h"

/* Past this many rounds in one advance, a script is re-arming timers for "now" forever. */
#define SIM_MAX_ROUNDS 1000000
/* The time a sim host's clock starts at: far from 0, which some fields read as "none". */
#define SIM_EPOCH 1000.0

/* The sim state of the host's selector, or NULL on another backend. */
static sim_state *sim_of(const lh_host *host)
{
    return (sim_state *)sel_backend_state(host->sel, &sel_backend_sim);
}

static sim_state *check_sim(lua_State *L, lh_host *host)
{
    sim_state *st = host->closed ? NULL : sim_of(host);
    if (!st)
        luaL_error(L, "the host is closed");
    return st;
}

static lh_socket *check_open_socket(lua_State *L, int index)
{
    lh_socket *s = (lh_socket *)luaL_checkudata(L, index, LH_SOCKET);
    luaL_argcheck(L, s->conn.fd >= 0, index, "attempt to use a closed socket");
    return s;
}

/* sim.connect(listener): a client socket connected in memory to listener; the host
 * accepts the other end as it would a real client. */
static int sim_connect_l(lua_State *L)
{
    lh_host *host = (lh_host *)LH_CTX(L);
    sim_state *st = check_sim(L, host);
    lh_socket *listener = check_open_socket(L, 1);
    luaL_argcheck(L, listener->flags & LH_LISTENING, 1, "not a listening socket");
    lh_socket *client = lhsock_push(L, &host->sockets, -1, AF_UNIX);
    int fd = sim_connect(st, listener->conn.fd);
    if (fd < 0)
        return lh_push_error(L, fd, "sim connect");
    client->conn.fd = fd;
    return 1;
}

/* sim.shape(socket, {max_write = n, would_block = k}): the host's sends on that
 * connection (either end may be given) send at most n bytes, and the next k fail with
 * EAGAIN. */
static int sim_shape_l(lua_State *L)
{
    sim_state *st = check_sim(L, (lh_host *)LH_CTX(L));
    lh_socket *s = check_open_socket(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "max_write");
    lua_getfield(L, 2, "would_block");
    lua_Integer max_write = luaL_optinteger(L, -2, 0), would_block = luaL_optinteger(L, -1, 0);
    luaL_argcheck(L, max_write >= 0 && would_block >= 0 && would_block <= INT32_MAX, 2,
                  "max_write and would_block must be counts");
    int rc = sim_shape_sends(st, s->conn.fd, (size_t)max_write, (int)would_block);
    if (rc < 0)
        return luaL_argerror(L, 1, "not a sim connection");
    lua_pushboolean(L, 1);
    return 1;
}

/* sim.reset(client): the connection is reset: the client socket is closed and the
 * host's end fails every recv and send with ECONNRESET. */
static int sim_reset_l(lua_State *L)
{
    sim_state *st = check_sim(L, (lh_host *)LH_CTX(L));
    lh_socket *s = check_open_socket(L, 1);
    if (sim_reset(st, s->conn.fd) < 0)
        return luaL_argerror(L, 1, "not a sim connection");
    lhsock_close(L, s, 0);
    lua_pushboolean(L, 1);
    return 1;
}

static int errno_named(lua_State *L, int index)
{
    static const char *const names[] = {"EMFILE", "ENFILE", "ECONNABORTED", "ENOBUFS", NULL};
    static const int values[] = {EMFILE, ENFILE, ECONNABORTED, ENOBUFS};
    return values[luaL_checkoption(L, index, "EMFILE", names)];
}

/* sim.fail_accept(listener, [err = "EMFILE"], [count = 1]). */
static int sim_fail_accept_l(lua_State *L)
{
    sim_state *st = check_sim(L, (lh_host *)LH_CTX(L));
    lh_socket *listener = check_open_socket(L, 1);
    int err = errno_named(L, 2);
    lua_Integer count = luaL_optinteger(L, 3, 1);
    luaL_argcheck(L, count >= 0 && count <= INT32_MAX, 3, "count out of range");
    int rc = sim_fail_accepts(st, listener->conn.fd, err, (int)count);
    if (rc < 0)
        return lh_push_error(L, rc, "sim fail_accept");
    lua_pushboolean(L, 1);
    return 1;
}

/* sim.waiting(listener): clients connected and not yet accepted. */
static int sim_waiting_l(lua_State *L)
{
    sim_state *st = check_sim(L, (lh_host *)LH_CTX(L));
    lua_pushinteger(L, sim_waiting(st, check_open_socket(L, 1)->conn.fd));
    return 1;
}

/* The next moment something is due (a timer, or the end of an accept pause), but no
 * later than target. */
static double next_due(const lh_host *host, double target)
{
    timer *t = theap_peek(&host->timers.heap);
    double next = t && t->deadline < target ? t->deadline : target;
    if (host->adm.resume_at > 0 && host->adm.resume_at < next)
        next = host->adm.resume_at;
    return next;
}

static int due_by(const lh_host *host, double when)
{
    timer *t = theap_peek(&host->timers.heap);
    return (t && t->deadline <= when) || (host->adm.resume_at > 0 && host->adm.resume_at <= when);
}

/* sim.advance(seconds): moves the clock forward, stopping at every moment something is
 * due on the way, so timers fire in order and each sees its own time. Returns the
 * callbacks run. */
static int sim_advance_l(lua_State *L)
{
    lh_host *host = (lh_host *)LH_CTX(L);
    check_sim(L, host);
    lua_Number seconds = luaL_checknumber(L, 1);
    luaL_argcheck(L, seconds >= 0, 1, "time only moves forward");
    timer_clock *clock = &host->clock;
    double target = clock->virtual_now + seconds;
    lua_Integer calls = 0;
    for (long round = 0;; round++) {
        if (round == SIM_MAX_ROUNDS)
            return luaL_error(L, "sim.advance: timers keep coming due at the same moment");
        double next = next_due(host, target);
        if (next > clock->virtual_now)
            clock->virtual_now = next;
        int rc = loop_step(L, &host->loop, 0);
        if (rc < 0)
            return lh_push_error(L, rc, "select");
        calls += rc;
        if (clock->virtual_now >= target && !due_by(host, clock->virtual_now))
            break;
    }
    lua_pushinteger(L, calls);
    return 1;
}

static const luaL_Reg sim_functions[] = {
    {"connect", sim_connect_l},
    {"shape", sim_shape_l},
    {"reset", sim_reset_l},
    {"fail_accept", sim_fail_accept_l},
    {"waiting", sim_waiting_l},
    {"advance", sim_advance_l},
    {NULL, NULL},
};

void lhsim_attach(lua_State *L, int module, int host_index, lh_host *host)
{
    if (!sim_of(host))
        return;
    host->clock.is_virtual = 1;
    host->clock.virtual_now = SIM_EPOCH;
    lua_newtable(L);
    lh_setfuncs(L, sim_functions, -1, host_index, host);
    lua_setfield(L, module, "sim");
}
