/* host.c: the host loop: select, call each ready key's callback in protected mode,
 * flush buffered output, run due timers, finish lingering closes, stop on signals. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lh.h"

/* Pushes "chunk:line: " for the nearest Lua function on the stack, or "" if there is none:
 * error({}) or error(42) carries no position of its own, yet the operator needs one. */
static void push_raise_position(lua_State *L)
{
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
    }
    lua_pushliteral(L, "");
}

/* Message handler for lua_pcall: the error as a string with a traceback, as lua.c does,
 * so errors that are not strings (error({}), error(nil)) still say something useful. */
int lh_traceback(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING) {
        luaL_traceback(L, L, lua_tostring(L, 1), 1);
        return 1;
    }
    push_raise_position(L);
    int base = lua_gettop(L);
    /* An object with __tostring speaks for itself, as lua5.4 lets it. */
    if (!luaL_callmeta(L, 1, "__tostring") || lua_type(L, -1) != LUA_TSTRING) {
        lua_settop(L, base);
        if (lua_type(L, 1) == LUA_TNUMBER)
            lua_pushstring(L, lua_tostring(L, 1));
        else
            lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    lua_concat(L, 2);
    luaL_traceback(L, L, lua_tostring(L, -1), 1);
    return 1;
}

/* Logs the error message on top of the stack, then pops it. */
void host_report_error(lua_State *L, lh_host *host, const char *where)
{
    const char *msg = lua_tostring(L, -1);
    lh_log(host, LH_ERROR, "%s: %s", where, msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
}

/* Frees what the host holds outside Lua; safe to call twice. */
static void host_release(lh_host *host)
{
    host_stop_watchdog(host);
    host->closed = 1;
    while (host->linger_head) {
        lh_linger *l = host->linger_head;
        host->linger_head = l->next;
        conn_free(&l->conn);
        close(l->conn.fd);
        free(l);
    }
    host->linger_tail = NULL;
    if (host->signal_conn.fd >= 0) {
        close(host->signal_conn.fd);
        close(host->signal_write_fd);
        host->signal_conn.fd = host->signal_write_fd = -1;
    }
    if (host->watch_conn.fd >= 0)
        close(host->watch_conn.fd);
    host->watch_conn.fd = -1;
    free(host->watch_name);
    host->watch_name = NULL;
    if (host->spare_fd >= 0)
        close(host->spare_fd);
    host->spare_fd = -1;
    theap_free(&host->timers);
}

static int host_gc(lua_State *L)
{
    lh_host *host = (lh_host *)lua_touserdata(L, 1);
    host_release(host);
    if (host->log_captured) /* kept past a shutdown, for the test to read */
        free(host->log_captured->text);
    free(host->log_captured);
    host->log_captured = NULL;
    return 0;
}

static int new_ref_table(lua_State *L, const char *mode)
{
    lua_newtable(L);
    if (mode) {
        lua_createtable(L, 0, 1);
        lua_pushstring(L, mode);
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
    }
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

static int new_batch_handler(lua_State *L, lh_host *host);

/* A new host as a full userdata on the stack. Hosts stay referenced from the registry
 * until the state closes, so every object that points at one can rely on it. */
lh_host *host_push_new(lua_State *L)
{
    lh_host *host = (lh_host *)lua_newuserdatauv(L, sizeof *host, 0);
    memset(host, 0, sizeof *host);
    host->L = L;
    host->max_output = CONN_DEFAULT_LIMIT;
    host->log_level = LH_INFO;
    host->signal_conn.fd = -1;
    host->signal_write_fd = -1;
    host->watch_conn.fd = -1;
    host->generation = 1;
    host->journal_ref = LUA_NOREF;
    host->script_ref = LUA_NOREF;
    host->spare_fd = -1;
    host->max_instructions = LH_DEFAULT_MAX_INSTRUCTIONS;
    theap_init(&host->timers);
    /* The finalizer before the fd: a memory error in what follows must not leak it. */
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, host_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    host->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    host->on_reload_ref = new_ref_table(L, NULL);
    host->listeners_ref = new_ref_table(L, NULL);
    host->timers_ref = new_ref_table(L, NULL);
    host->drain_ref = new_ref_table(L, NULL);
    host->handles_ref = new_ref_table(L, "v");
    host->batch_handler_ref = new_batch_handler(L, host);
    if (lua_getfield(L, LUA_REGISTRYINDEX, "luahost.hosts") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, "luahost.hosts");
    }
    lua_pushvalue(L, -2);
    lua_rawsetp(L, -2, host);
    lua_pop(L, 1);
    return host;
}

/* The host's clock: monotonic seconds, or the test's virtual time under "sim". */
double host_now(const lh_host *host)
{
    return host->virtual_clock ? host->virtual_now : timer_now();
}

/* Takes over c's fd and pending output after its socket was closed, to finish sending
 * within LH_LINGER_SECONDS. On any failure the output is dropped and the fd closed. */
void host_linger(lh_host *host, conn *c)
{
    lh_linger *l = (lh_linger *)malloc(sizeof *l);
    selector *core = host->sel->core;
    if (!l || sel_set_host_events(core, c->fd, SEL_WRITE, &l->conn) < 0) {
        conn_drop(c, core);
        conn_free(c);
        host_close_fd(host, c);
        free(l);
        return;
    }
    l->conn = *c;
    l->conn.kind = CONN_LINGER;
    l->deadline = host_now(host) + LH_LINGER_SECONDS;
    l->next = NULL;
    if (host->linger_tail)
        host->linger_tail->next = l;
    else
        host->linger_head = l;
    host->linger_tail = l;
    c->out = NULL; /* the lingering record owns it now */
}

static void linger_unlink(lh_host *host, lh_linger *l)
{
    lh_linger **link = &host->linger_head, *prev = NULL;
    while (*link && *link != l) {
        prev = *link;
        link = &(*link)->next;
    }
    if (!*link)
        return;
    *link = l->next;
    if (host->linger_tail == l)
        host->linger_tail = prev;
}

static void linger_finish(lh_host *host, lh_linger *l)
{
    if (host->sel)
        conn_drop(&l->conn, host->sel->core);
    conn_free(&l->conn);
    host_close_fd(host, &l->conn);
    linger_unlink(host, l);
    free(l);
}

/* Lingering closes are in deadline order, since they all wait the same time. */
static void expire_lingering(lh_host *host, double now)
{
    while (host->linger_head && host->linger_head->deadline <= now) {
        lh_linger *l = host->linger_head;
        lh_log(host, LH_WARN, "fd %d: dropping %zu unsent bytes after %.0f s closing", l->conn.fd,
               conn_pending(&l->conn), LH_LINGER_SECONDS);
        linger_finish(host, l);
    }
}

static void drain_signals(lh_host *host)
{
    unsigned char signals[32];
    ssize_t n;
    while ((n = read(host->signal_conn.fd, signals, sizeof signals)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if (signals[i] == SIGHUP) {
                lh_log(host, LH_INFO, "SIGHUP received, reloading the script");
                host->reload_requested = 1;
                continue;
            }
            lh_log(host, LH_INFO, "%s received, stopping",
                   signals[i] == SIGINT ? "SIGINT" : "SIGTERM");
            host->stop_requested = 2;
        }
    }
}

/* Handles readiness the host asked for itself: output to flush, or a signal. */
static void dispatch_host_event(lua_State *L, lh_host *host, void *host_data)
{
    conn *c = (conn *)host_data;
    if (c->kind == CONN_SIGNAL) {
        drain_signals(host);
        return;
    }
    if (c->kind == CONN_WATCH) {
        host_watch_event(host);
        return;
    }
    ssize_t rc = conn_flush(c, host->sel->core);
    if (c->kind == CONN_LINGER) {
        if (rc <= 0)
            linger_finish(host, (lh_linger *)c);
    } else if (rc == 0) {
        lhsock_flushed(L, host, (lh_socket *)c);
    } else if (rc < 0) {
        lh_log(host, LH_DEBUG, "fd %d: output dropped: %s", c->fd, strerror((int)-rc));
    }
}

/* The part of a fired event the script may be told of, once the host has taken its own
 * part (flushing output, the signal pipe, a lingering close), which may unregister or
 * replace the script's registration: 0 when nothing is left for the script. */
static inline int script_mask(lua_State *L, lh_host *host, selector *core, const sel_fired *f)
{
    int mask = sel_deliverable(core, f);
    const sel_key *slot = sel_slot(core, f->fd);
    if (mask & (slot ? slot->host_events : 0)) {
        dispatch_host_event(L, host, slot->host_data);
        mask = sel_deliverable(core, f);
        slot = sel_slot(core, f->fd);
    }
    return mask & ((slot && slot->registered) ? slot->events : 0);
}

/* script_mask for the select() iterator; dispatch has its own copy inlined. */
int host_script_mask(lua_State *L, lh_host *host, selector *core, const sel_fired *f)
{
    return script_mask(L, host, core, f);
}

/* After a callback raised: log it with the peer's address, then close its socket (which
 * unregisters it everywhere), or for another kind of fileobj unregister the key if it is
 * still the registration that raised. The entry and the error message are on the stack;
 * both are popped. */
static void callback_failed(lua_State *L, lh_host *host, lh_selector *s, const sel_fired *f)
{
    char where[NET_ADDRSTRLEN + 16];
    lhsel_push_fileobj(L, -2);
    lh_socket *sock = lhsock_test(L, -1);
    if (sock && sock->conn.fd >= 0)
        lhsock_describe(sock, where, sizeof where);
    else
        snprintf(where, sizeof where, "fd %d", f->fd);
    lh_log(host, LH_ERROR, "error in callback for %s: %s", where, lua_tostring(L, -2));
    const sel_key *slot = sel_get(s->core, f->fd);
    if (sock && sock->listening)
        host_pause_accepting(L, host); /* no client's fault; a failing accept must not spin */
    else if (sock)
        lhsock_close(L, host, sock, 0);
    else if (slot && slot->gen == f->gen && lhsel_unregister_fd(L, s, f->fd) == 0)
        lua_pop(L, 1);
    lua_pop(L, 3);
}

/* After an error, hang-up or end of stream was delivered: if the script kept the
 * registration although its recv already said the stream ended (or failed) and nothing
 * is left to read, no later event can tell it anything new, and level-triggered
 * readiness would wake the loop for it forever (a script that ignores EOF). So those
 * events are withheld until it is closed or unregistered: both directions after a
 * hang-up, reading only after the peer shut its side. An fd closed behind the host's
 * back (POLLNVAL) is withheld at once. */
static void withhold_if_finished(lua_State *L, lh_host *host, lh_selector *s, const sel_fired *f)
{
    const sel_key *slot = sel_get(s->core, f->fd);
    int unread = 0;
    if (!slot || slot->gen != f->gen)
        return;
    lhsel_push_fileobj(L, -1);
    lh_socket *sock = lhsock_test(L, -1);
    int seen_eof = sock && (sock->conn.flags & CONN_EOF_SEEN);
    lua_pop(L, 1);
    if (!(f->mask & (SEL_HANGUP | SEL_PEER_CLOSED)) && !seen_eof)
        return; /* unflagged (select): only the script's own reads can tell of an end */
    if (ioctl(f->fd, FIONREAD, &unread) < 0 ? errno != EBADF : !seen_eof || unread > 0)
        return; /* the script has yet to read what is there, or to see the end of it */
    sel_set_paused(s->core, f->fd, (f->mask & SEL_HANGUP) ? SEL_BOTH : slot->paused | SEL_READ);
    lh_log(host, LH_DEBUG, "fd %d: the peer is gone and the script kept it: events withheld",
           f->fd);
}

/* A batch being dispatched: the selector's fired entries from `next` on are still to
 * be looked at; `calling` is set while a script's callback runs. */
typedef struct lh_batch {
    lh_host *host;
    lh_selector *s;
    int n, next, calls;
    int calling;
} lh_batch;

/* Pushes the callback, its fileobj and mask, and the key when the callback may take it
 * (not for a socket holding its registration). The entry is on the top; returns nargs. */
static int push_call(lua_State *L, int mask)
{
    /* An entry is a key or a socket, which differ in size: no need for the mark. */
    if (lua_rawlen(L, -1) == sizeof(lh_socket)) {
        lua_getiuservalue(L, -1, 1);
        lua_pushvalue(L, -2);
        lua_pushinteger(L, mask);
        return 2;
    }
    lua_getiuservalue(L, -1, 2);
    lua_getiuservalue(L, -2, 1);
    lua_pushinteger(L, mask);
    lua_pushvalue(L, -4);
    return 3;
}

/* The highest level on L's stack, in O(log n) calls of lua_getstack (each walks the
 * levels above it), as luaL_traceback finds it: a stack overflow leaves ~200,000. */
static int top_level(lua_State *L)
{
    lua_Debug ar;
    int below = 0, above = 1;
    while (lua_getstack(L, above, &ar)) {
        below = above;
        above *= 2;
    }
    while (below + 1 < above) {
        int mid = below + (above - below) / 2;
        if (lua_getstack(L, mid, &ar))
            below = mid;
        else
            above = mid;
    }
    return below;
}

/* Calls key.data(key.fileobj, mask, key) for the batch's deliverable events from
 * b->next on (the key left out where the callback cannot take it). An event is
 * re-checked before each call, since an earlier callback may have unregistered or
 * replaced its key. Runs in one protected call for the whole batch, not one per
 * callback (lua_pcall and its setjmp were ~200 instructions per echoed message).
 * Arguments: the batch (light userdata) and the keys table; the entry being called is
 * kept in slot ENTRY_SLOT, where batch_handler finds it if the callback raises. */
#define ENTRY_SLOT 3
static int run_batch(lua_State *L)
{
    lh_batch *b = (lh_batch *)lua_touserdata(L, 1);
    selector *core = b->s->core;
    b->host->batch_depth = top_level(L);
    while (b->next < b->n) {
        const sel_fired *f = sel_fired_at(core, b->next++);
        int mask = script_mask(L, b->host, core, f);
        if (!mask)
            continue;
        lua_rawgeti(L, 2, f->fd); /* ENTRY_SLOT */
        int nargs = push_call(L, mask);
        b->calls++;
        b->calling = 1;
        host_callback_begin(L, b->host);
        lua_call(L, nargs, 0);
        host_callback_end(L, b->host);
        b->calling = 0;
        if ((f->mask & (SEL_HANGUP | SEL_PEER_CLOSED)) ||
            ((f->mask & SEL_READ) && !sel_flags_ends(core)))
            withhold_if_finished(L, b->host, b->s, f);
        lua_settop(L, 2);
    }
    return 0;
}

/* The message handler of a batch. It runs before the error unwinds the stack, so it
 * can still read the entry run_batch was calling and keep it in upvalue 1 for the
 * host, which closes that socket: nothing is spent on this until a callback raises.
 * run_batch's level is found from the depth it recorded (upvalue 2 is the host), so a
 * stack overflow does not make this walk 200,000 levels one by one. Then it does what
 * lh_traceback does. */
static int batch_handler(lua_State *L)
{
    lua_Debug ar;
    lh_host *host = (lh_host *)lua_touserdata(L, lua_upvalueindex(2));
    int level = top_level(L) - host->batch_depth;
    if (level > 0 && lua_getstack(L, level, &ar)) {
        lua_getinfo(L, "f", &ar);
        int found = lua_tocfunction(L, -1) == run_batch;
        lua_pop(L, 1);
        if (found && lua_getlocal(L, &ar, ENTRY_SLOT))
            lua_replace(L, lua_upvalueindex(1));
    }
    return lh_traceback(L);
}

int lh_is_message_handler(lua_CFunction f)
{
    return f == lh_traceback || f == batch_handler;
}

/* Makes the batches' message handler, once per host. */
static int new_batch_handler(lua_State *L, lh_host *host)
{
    lua_pushnil(L);
    lua_pushlightuserdata(L, host);
    lua_pushcclosure(L, batch_handler, 2);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Dispatches the n events select() returned. Returns the number of callbacks run. */
static int dispatch(lua_State *L, lh_host *host, lh_selector *s, int n)
{
    lh_batch b = {host, s, n, 0, 0, 0};
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->batch_handler_ref);
    int handler = lua_gettop(L);
    lhsel_push_keys(L, s);
    while (b.next < b.n) {
        lua_pushcfunction(L, run_batch);
        lua_pushlightuserdata(L, &b);
        lua_pushvalue(L, handler + 1);
        if (lua_pcall(L, 2, 0, handler) == LUA_OK)
            break;
        lua_getupvalue(L, handler, 1); /* the entry batch_handler kept, or nil */
        lua_pushnil(L);
        lua_setupvalue(L, handler, 1);
        if (!b.calling) { /* the host's own: memory ran out between callbacks */
            lh_log(host, LH_ERROR, "dispatching events: %s (the rest wait for the next round)",
                   lua_tostring(L, -2));
            break; /* readiness is level-triggered: what was not delivered is reported again */
        }
        host_callback_end(L, host);
        b.calling = 0;
        const sel_fired *f = sel_fired_at(s->core, b.next - 1);
        /* No handler runs for a memory error: then the entry is what the fd has now, if
         * that is still the registration whose callback failed. */
        if (lua_isnil(L, -1)) {
            const sel_key *slot = sel_get(s->core, f->fd);
            lua_pop(L, 1);
            if (!slot || slot->gen != f->gen) {
                host_report_error(L, host, "error in callback");
                continue;
            }
            lua_rawgeti(L, handler + 1, f->fd);
        }
        lua_insert(L, -2);
        callback_failed(L, host, s, f);
    }
    lua_settop(L, handler - 1);
    return b.calls;
}

static int linger_timeout_ms(lh_host *host, double now)
{
    if (!host->linger_head)
        return -1;
    double left = host->linger_head->deadline - now;
    return left <= 0 ? 0 : (int)(left * 1000.0) + 1;
}

static int min_timeout(int a, int b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

/* Reloads the script after SIGHUP, or once a change seen by --watch has settled. */
static void reload_if_asked(lua_State *L, lh_host *host)
{
    if (host->reload_at > 0 && timer_now() >= host->reload_at) {
        host->reload_at = 0;
        host->reload_requested = 1;
    }
    if (!host->reload_requested)
        return;
    host->reload_requested = 0;
    int top = lua_gettop(L);
    lh_push_script_field(L, host, "path");
    const char *path = lua_tostring(L, -1);
    if (path)
        host_reload(L, host, path);
    else
        lh_log(host, LH_WARN, "no script to reload");
    lua_settop(L, top);
}

static int reload_timeout_ms(lh_host *host, double now)
{
    if (host->reload_at <= 0)
        return -1;
    return host->reload_at <= now ? 0 : (int)((host->reload_at - now) * 1000.0) + 1;
}

/* One round: wait up to timeout_ms (less if a timer or a lingering close is due
 * sooner), dispatch the batch, run due timers. Returns the callbacks run, or a negative
 * errno if select failed. */
int host_step(lua_State *L, lh_host *host, int timeout_ms)
{
    lh_selector *s = host->sel;
    if (!s)
        return luaL_error(L, "the host's selector is closed");
    if (s->busy)
        return luaL_error(L, "luahost.step or run called from inside a callback");
    double now = host_now(host);
    host_resume_accepting(L, host);
    host->accepts_this_round = 0;
    timeout_ms = min_timeout(timeout_ms, theap_timeout_ms(&host->timers, now));
    if (host->accept_resume_at > 0)
        timeout_ms = min_timeout(timeout_ms, (int)((host->accept_resume_at - now) * 1000) + 1);
    timeout_ms = min_timeout(timeout_ms, linger_timeout_ms(host, now));
    timeout_ms = min_timeout(timeout_ms, reload_timeout_ms(host, now));
    int n = sel_select(s->core, timeout_ms);
    /* A script iterating its own select() on this selector sees its batch end here. */
    s->batch = s->cursor = 0;
    if (n < 0)
        return n;
    s->busy = 1; /* callbacks, timers included, must not re-enter the loop */
    int calls = dispatch(L, host, s, n);
    lhtimer_run_due(L, host);
    s->busy = 0;
    expire_lingering(host, host_now(host));
    reload_if_asked(L, host);
    if (host->debug_gc) /* shakes out sockets that are closed while still in use */
        lua_gc(L, LUA_GCCOLLECT);
    return calls;
}

/* Nothing left to do: no registration, no timer, no output waiting to be sent. */
int host_is_idle(lh_host *host)
{
    if (!host->sel)
        return 1;
    size_t own = (host->signal_conn.fd >= 0) + (host->watch_conn.fd >= 0);
    return sel_count(host->sel->core) == 0 && host->timers.count == 0 &&
           host->linger_head == NULL && sel_host_count(host->sel->core) <= own;
}

/* Closes every listener, then every registered socket of the default selector (letting
 * them flush), cancels timers, and runs until the output is sent or grace runs out. */
void host_shutdown(lua_State *L, lh_host *host, double grace_seconds)
{
    if (!host->sel)
        return;
    selector *core = host->sel->core;
    lhsel_push_keys(L, host->sel);
    for (int fd = 0; fd < sel_capacity(core); fd++) {
        if (!sel_get(core, fd))
            continue;
        lua_rawgeti(L, -1, fd);
        lhsel_push_fileobj(L, -1);
        lh_socket *sock = lhsock_test(L, -1);
        if (sock)
            lhsock_close(L, host, sock, !sock->listening);
        else if (lhsel_unregister_fd(L, host->sel, fd) == 0)
            lua_pop(L, 1);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    while (theap_peek(&host->timers))
        theap_remove(&host->timers, theap_peek(&host->timers));
    double deadline = timer_now() + grace_seconds;
    while (!host_is_idle(host) && timer_now() < deadline)
        if (host_step(L, host, (int)((deadline - timer_now()) * 1000.0) + 1) < 0)
            break;
    while (host->linger_head)
        linger_finish(host, host->linger_head);
}

/* Ends a host for good (luahost.open's, when a test stops it): shuts it down, then
 * closes its listeners and selectors and frees the rest. Objects still pointing at it
 * see a closed host; the userdata itself stays until the state closes, as all do. */
void host_close(lua_State *L, lh_host *host, double grace_seconds)
{
    if (host->closed)
        return;
    host_shutdown(L, host, grace_seconds);
    lhsock_close_listeners(L, host);
    lhsel_release_all(L, host);
    host_release(host);
    /* Lets go of the timers, idle now, by clearing their table in place: a new one would
     * allocate, and a memory error would leave timers_ref naming a freed reference. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->timers_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, -4);
    }
    lua_pop(L, 1);
}

static int signal_write_fd = -1; /* the one piece of process state a handler may touch */

static volatile sig_atomic_t stop_signals; /* SIGINT/SIGTERM received so far */

static void on_signal(int signo)
{
    int saved = errno;
    /* A second stop signal ends the process at once: the loop may be stuck (a runaway
     * coroutine, say), and an operator pressing Ctrl-C twice means it. */
    if (signo != SIGHUP && stop_signals++ > 0)
        _exit(128 + signo);
    unsigned char byte = (unsigned char)signo;
    if (write(signal_write_fd, &byte, 1) < 0) {
        /* the pipe is full: a stop is already pending */
    }
    errno = saved;
}

/* Routes SIGINT, SIGTERM and SIGHUP through a self-pipe into the loop, so a signal that
 * arrives just before select() is not missed; ignores SIGPIPE. 0 or -errno. */
int host_watch_signals(lh_host *host)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    conn_init(&host->signal_conn, fds[0], CONN_SIGNAL, 0);
    host->signal_write_fd = fds[1];
    int rc = sel_set_host_events(host->sel->core, fds[0], SEL_READ, &host->signal_conn);
    if (rc < 0)
        return rc;
    signal_write_fd = fds[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}
