/* loop.c: the host loop: select, call each ready key's callback in protected mode, flush
 * buffered output, run due timers, finish lingering closes, stop on signals. */
#include "loop.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

/* Handles readiness the host asked for itself: output to flush, a signal, the watched
 * file. The selector bindings call it (the hook they were given) before the script's
 * part of an event. */
static void host_ready(void *ud, lua_State *L, conn *c)
{
    lh_loop *loop = (lh_loop *)ud;
    switch (c->kind) {
    case CONN_SOCKET:
        lhsock_flush(L, loop->sockets, (lh_socket *)c);
        break;
    case CONN_LINGER:
        linger_flush(loop->linger, (linger_rec *)c);
        break;
    case CONN_SIGNAL: {
        int got = signals_read(&loop->sig);
        if (got & SIGNALS_SIGHUP) {
            lh_log(loop->log, LH_INFO, "SIGHUP received, reloading the script");
            loop->reload->requested = 1;
        }
        if (got & (SIGNALS_SIGINT | SIGNALS_SIGTERM)) {
            lh_log(loop->log, LH_INFO, "%s received, stopping",
                   (got & SIGNALS_SIGINT) ? "SIGINT" : "SIGTERM");
            loop->stop = 2;
        }
        break;
    }
    case CONN_WATCH:
        watch_read(&loop->watch);
        break;
    case CONN_MASTER:
        if (worker_read(&loop->master, loop->sockets->sel) < 0 && !loop->stop) {
            lh_log(loop->log, LH_WARN, "the master is gone; stopping");
            loop->stop = 2;
        }
        break;
    }
}

/* Stops accepting for a moment: a listener's callback raised, which is no client's
 * fault, and a failing accept must not spin. */
static void pause_accepting(lua_State *L, lh_loop *loop)
{
    adm_pause(loop->adm);
    lhsock_pause_listeners(L, loop->sockets, 1);
}

/* After the callback of fd's registration (generation gen) raised: log it with the
 * peer's address, then abort its socket (which unregisters it everywhere; what it had
 * buffered is dropped: a connection whose script failed is in no known state), or for
 * a listener pause accepting, or for another kind of fileobj unregister the key if it is
 * still the registration that raised. The key and the error message are on the stack;
 * both are popped. */
static void callback_failed(lua_State *L, lh_loop *loop, lh_selector *s, int fd, uint32_t gen)
{
    char where[NET_ADDRSTRLEN + 16];
    lua_getiuservalue(L, -2, 1);
    lh_socket *sock = lhsock_test(L, -1);
    if (sock && sock->conn.fd >= 0)
        lhsock_describe(sock, where, sizeof where);
    else
        snprintf(where, sizeof where, "fd %d", fd);
    char head[sizeof where + 32];
    size_t len;
    const char *msg = lua_tolstring(L, -2, &len);
    snprintf(head, sizeof head, "error in callback for %s: ", where);
    lh_log_text(loop->log, LH_ERROR, head, msg ? msg : "?", msg ? len : 1);
    const sel_key *slot = s->core ? sel_get(s->core, fd) : NULL;
    if (sock && (sock->flags & LH_LISTENING))
        pause_accepting(L, loop);
    else if (sock)
        lhsock_reset(L, sock, 0, "its callback failed");
    else if (slot && slot->gen == gen && lhsel_unregister_fd(L, s, fd) == 0)
        lua_pop(L, 1);
    lua_pop(L, 3);
}

/* After an error, hang-up or end of stream was delivered: if the script kept the
 * registration although its recv already said the stream ended (or failed) and nothing
 * is left to read, no later event can tell it anything new, and level-triggered
 * readiness would wake the loop for it forever (a script that ignores EOF). So those
 * events are withheld until it is closed or unregistered: both directions after a
 * hang-up, reading only after the peer shut its side. An fd closed behind the host's
 * back (POLLNVAL) is withheld at once. The key is on the stack top. */
static void withhold_if_finished(lua_State *L, lh_loop *loop, lh_selector *s, const sel_fired *f)
{
    const sel_key *slot = s->core ? sel_get(s->core, f->fd) : NULL;
    int unread = 0;
    if (!slot || slot->gen != f->gen)
        return;
    lua_getiuservalue(L, -1, 1);
    lh_socket *sock = lhsock_test(L, -1);
    int seen_eof = sock && (sock->conn.flags & CONN_EOF_SEEN);
    lua_pop(L, 1);
    if (!(f->mask & (SEL_HANGUP | SEL_PEER_CLOSED)) && !seen_eof)
        return; /* unflagged (select): only the script's own reads can tell of an end */
    if (ioctl(f->fd, FIONREAD, &unread) < 0 ? errno != EBADF : !seen_eof || unread > 0)
        return; /* the script has yet to read what is there, or to see the end of it */
    sel_set_paused(s->core, f->fd, (f->mask & SEL_HANGUP) ? SEL_BOTH : slot->paused | SEL_READ);
    lh_log(loop->log, LH_DEBUG, "fd %d: the peer is gone and the script kept it: events withheld",
           f->fd);
}

/* A batch being dispatched: the selector's fired entries from `next` on are still to be
 * looked at. While a script's callback runs, `calling` is set and `fd`, `gen` say which
 * registration it was called for. */
typedef struct lh_batch {
    lh_loop *loop;
    lh_selector *s;
    int n, next, calls;
    int calling;
    int fd;
    uint32_t gen;
} lh_batch;

/* Calls key.data(key.fileobj, mask, key) for the batch's deliverable events from
 * b->next on. An event is re-checked before each call, since an earlier callback may
 * have unregistered or replaced its key. Runs in one protected call for the whole batch,
 * not one per callback (a lua_pcall, with its setjmp, costs ~120 instructions per
 * echoed message); a callback that raises ends that call, and dispatch goes on with
 * the rest. Arguments: the batch (light userdata) and the keys table. */
static int run_batch(lua_State *L)
{
    lh_batch *b = (lh_batch *)lua_touserdata(L, 1);
    lh_selector *s = b->s;
    int ends = sel_flags_ends(s->core);
    while (b->next < b->n) {
        const sel_fired *f = sel_fired_at(s->core, b->next++);
        int mask = lhsel_script_mask(L, s, f);
        if (!mask)
            continue;
        lua_rawgeti(L, 2, f->fd);
        lua_getiuservalue(L, 3, 2);
        lua_getiuservalue(L, 3, 1);
        lua_pushinteger(L, mask);
        lua_pushvalue(L, 3);
        b->calls++;
        b->fd = f->fd;
        b->gen = f->gen;
        b->calling = 1;
        budget_note(b->loop->budget, L, -4, f->fd);
        budget_begin(b->loop->budget, L);
        lua_call(L, 3, 0);
        budget_end(b->loop->budget, L);
        b->calling = 0;
        if ((f->mask & (SEL_HANGUP | SEL_PEER_CLOSED)) || ((f->mask & SEL_READ) && !ends))
            withhold_if_finished(L, b->loop, s, f);
        lua_settop(L, 2);
    }
    return 0;
}

/* Dispatches the n events select() returned; returns the number of callbacks run. When
 * a callback raises, the fd and generation kept in the batch tell whose it was: if that
 * registration is still the fd's, its key is the one that raised. */
static int dispatch(lua_State *L, lh_loop *loop, lh_selector *s, int n)
{
    lh_batch b = {loop, s, n, 0, 0, 0, -1, 0};
    lua_pushcfunction(L, lh_traceback);
    int handler = lua_gettop(L), keys = handler + 1;
    lhsel_push_keys(L, s);
    while (b.next < b.n) {
        lua_pushcfunction(L, run_batch);
        lua_pushlightuserdata(L, &b);
        lua_pushvalue(L, keys);
        if (lua_pcall(L, 2, 0, handler) == LUA_OK)
            break;
        if (!b.calling) { /* the host's own: memory ran out between callbacks */
            lh_log(loop->log, LH_ERROR, "dispatching events: %s (the rest wait for the next round)",
                   lua_tostring(L, -1));
            break; /* readiness is level-triggered: what was not delivered is reported again */
        }
        budget_end(loop->budget, L);
        b.calling = 0;
        const sel_key *slot = s->core ? sel_get(s->core, b.fd) : NULL;
        if (!slot || slot->gen != b.gen) { /* it closed or let go of its fd itself */
            char where[32];
            snprintf(where, sizeof where, "error in callback for fd %d", b.fd);
            lh_report_error(L, loop->log, where);
            continue;
        }
        lua_rawgeti(L, keys, b.fd);
        lua_insert(L, -2);
        callback_failed(L, loop, s, b.fd, b.gen);
    }
    lua_settop(L, handler - 1);
    return b.calls;
}

static int min_timeout(int a, int b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

/* One round of loop_step, on the host's selector s. */
static int step_round(lua_State *L, lh_loop *loop, lh_selector *s, int timeout_ms)
{
    if (adm_resume_due(loop->adm))
        lhsock_pause_listeners(L, loop->sockets, 0);
    timeout_ms = min_timeout(timeout_ms, lhtimer_timeout_ms(loop->timers));
    timeout_ms = min_timeout(timeout_ms, adm_timeout_ms(loop->adm));
    timeout_ms = min_timeout(timeout_ms, linger_timeout_ms(loop->linger));
    timeout_ms = min_timeout(timeout_ms, watch_timeout_ms(&loop->watch));
    int n = sel_select(s->core, timeout_ms);
    /* A script iterating its own select() on this selector sees its batch end here. */
    s->batch = s->cursor = 0;
    if (n < 0)
        return n;
    s->busy = 1; /* callbacks, timers included, must not re-enter the loop */
    adm_begin_round(loop->adm);
    int calls = dispatch(L, loop, s, n);
    lhtimer_run_due(L, loop->timers);
    adm_end_round(loop->adm);
    s->busy = 0;
    linger_expire(loop->linger);
    if (watch_due(&loop->watch))
        loop->reload->requested = 1;
    lhreload_if_requested(L, loop->reload);
    if (loop->debug_gc) /* shakes out sockets that are closed while still in use */
        lua_gc(L, LUA_GCCOLLECT);
    return calls;
}

int loop_step(lua_State *L, lh_loop *loop, int timeout_ms)
{
    lh_selector *s = loop->selectors->main;
    if (!s)
        return luaL_error(L, "the host's selector is closed");
    if (s->busy)
        return luaL_error(L, "luahost.step or run called from inside a callback");
    /* Called by the main chunk (or a reload's): its bracket waits while callbacks run. */
    lh_budget_saved outer;
    budget_suspend(loop->budget, &outer);
    int calls = step_round(L, loop, s, timeout_ms);
    budget_resume(loop->budget, &outer);
    return calls;
}

size_t loop_own_fds(const lh_loop *loop)
{
    return (size_t)(loop->sig.conn.fd >= 0) + (loop->watch.conn.fd >= 0) + loop->master.watched;
}

int loop_is_idle(const lh_loop *loop)
{
    const lh_selector *s = loop->selectors->main;
    if (!s)
        return 1;
    size_t own = loop_own_fds(loop);
    return sel_count(s->core) == 0 && loop->timers->heap.count == 0 && loop->linger->count == 0 &&
           sel_host_count(s->core) <= own;
}

const char *loop_run(lua_State *L, lh_loop *loop, double timeout, int *err)
{
    double deadline = timeout >= 0 ? timer_now() + timeout : -1;
    const char *why = "stopped";
    lh_selector *s = loop->selectors->main;
    if (s && s->busy)
        luaL_error(L, "luahost.step or run called from inside a callback");
    while (!loop->stop) {
        if (loop_is_idle(loop)) {
            why = "idle";
            break;
        }
        int wait = deadline < 0 ? -1 : (int)((deadline - timer_now()) * 1000.0 + 0.999);
        int rc = loop_step(L, loop, wait < 0 && deadline >= 0 ? 0 : wait);
        if (rc < 0) {
            *err = rc;
            return NULL;
        }
        if (deadline >= 0 && timer_now() >= deadline) {
            why = "timeout";
            break;
        }
    }
    if (loop->stop == 2)
        why = "signal";
    loop->stop = 0;
    return why;
}

void loop_shutdown(lua_State *L, lh_loop *loop, double grace_seconds)
{
    lh_selector *s = loop->selectors->main;
    if (!s)
        return;
    lhsel_push_keys(L, s);
    for (int fd = 0; s->core && fd < sel_capacity(s->core); fd++) {
        if (!sel_get(s->core, fd))
            continue;
        lua_rawgeti(L, -1, fd);
        lua_getiuservalue(L, -1, 1);
        lh_socket *sock = lhsock_test(L, -1);
        if (sock)
            lhsock_close(L, sock, !(sock->flags & LH_LISTENING));
        else if (lhsel_unregister_fd(L, s, fd) == 0)
            lua_pop(L, 1);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    lhtimer_cancel_all(L, loop->timers);
    double deadline = timer_now() + grace_seconds;
    while (!loop_is_idle(loop) && timer_now() < deadline)
        if (loop_step(L, loop, (int)((deadline - timer_now()) * 1000.0) + 1) < 0)
            break;
    linger_close_all(loop->linger);
}

static int timeout_arg(lua_State *L, int index)
{
    if (lua_isnoneornil(L, index))
        return -1;
    lua_Number t = luaL_checknumber(L, index);
    if (!(t > 0))
        return 0;
    return t >= 2147483.0 ? INT32_MAX : (int)(t * 1000.0 + 0.999);
}

static int l_step(lua_State *L)
{
    int calls = loop_step(L, (lh_loop *)LH_CTX(L), timeout_arg(L, 1));
    if (calls < 0)
        return lh_push_error(L, calls, "select");
    lua_pushinteger(L, calls);
    return 1;
}

/* luahost.run([{timeout =}]): returns why it ended, or nil, message, errno. */
static int l_run(lua_State *L)
{
    double timeout = -1;
    int err = 0;
    if (lua_istable(L, 1) && lua_getfield(L, 1, "timeout") != LUA_TNIL)
        timeout = luaL_checknumber(L, -1);
    const char *why = loop_run(L, (lh_loop *)LH_CTX(L), timeout, &err);
    if (!why)
        return lh_push_error(L, err, "select");
    lua_pushstring(L, why);
    return 1;
}

static int l_stop(lua_State *L)
{
    ((lh_loop *)LH_CTX(L))->stop = 1;
    return 0;
}

static const luaL_Reg module_functions[] = {
    {"step", l_step},
    {"run", l_run},
    {"stop", l_stop},
    {NULL, NULL},
};

void loop_init(lh_loop *loop, lh_selectors *selectors, lh_sockets *sockets, lh_timers *timers,
               lh_budget *budget, lh_reload *reload, admission *adm, linger_list *linger,
               lh_logger *log)
{
    memset(loop, 0, sizeof *loop);
    loop->selectors = selectors;
    loop->sockets = sockets;
    loop->timers = timers;
    loop->budget = budget;
    loop->reload = reload;
    reload->stopping = &loop->stop; /* a reload that stops the server on purpose is kept */
    loop->adm = adm;
    loop->linger = linger;
    loop->log = log;
    signals_init(&loop->sig);
    watch_init(&loop->watch);
    worker_init(&loop->master);
    selectors->host_ready = host_ready;
    selectors->host_ready_ud = loop;
}

void loop_open(lua_State *L, int module, int host, lh_loop *loop)
{
    lh_setfuncs(L, module_functions, module, host, loop);
}
