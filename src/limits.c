/* limits.c: what the host does at its limits: fds running out while accepting, more
 * connections than --max-connections, a callback past its instruction budget. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "lh.h"

/* The host the CPU-time watchdog guards: process state, because signal handlers are. */
static struct {
    lh_host *host;
    volatile sig_atomic_t seen_epoch;
} watchdog;

/* Closes c's fd, keeping the count of open accepted connections. */
void host_close_fd(lh_host *host, conn *c)
{
    if (c->fd < 0)
        return;
    close(c->fd);
    c->fd = -1;
    if ((c->flags & CONN_ACCEPTED) && host->connections > 0)
        host->connections--;
    c->flags &= ~CONN_ACCEPTED;
}

/* Logs at most once a second, so a flood of refusals cannot flood the log. */
static int may_warn(lh_host *host)
{
    double now = host_now(host);
    if (now - host->last_fd_warning < 1.0)
        return 0;
    host->last_fd_warning = now;
    return 1;
}

/* Withholds or gives back READ on every listener of the host's selector. */
static void pause_listeners(lua_State *L, lh_host *host, int paused)
{
    if (!host->sel)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->listeners_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lh_socket *s = lhsock_test(L, -1);
        if (s && s->conn.fd >= 0 && sel_slot(host->sel->core, s->conn.fd))
            sel_set_paused(host->sel->core, s->conn.fd, paused ? SEL_READ : 0);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Stops accepting for a moment, after which host_resume_accepting gives it back. */
void host_pause_accepting(lua_State *L, lh_host *host)
{
    host->accept_resume_at = host_now(host) + LH_ACCEPT_PAUSE_SECONDS;
    pause_listeners(L, host, 1);
}

/* Out of fds (EMFILE/ENFILE) with connections waiting: give up the spare fd so they can
 * be accepted and closed (otherwise the listener stays readable and the loop spins),
 * take the spare back, and stop accepting for a moment. Clients already connected go on
 * being served; new ones are served again once fds free up. */
void host_out_of_fds(lua_State *L, lh_host *host, int listen_fd, int err)
{
    net_addr peer;
    int fd, shed = 0;
    if (host->spare_fd >= 0) {
        close(host->spare_fd);
        host->spare_fd = -1;
    }
    while (shed < LH_ACCEPTS_PER_ROUND &&
           (fd = sel_accept(host->sel ? host->sel->core : NULL, listen_fd, &peer)) >= 0) {
        close(fd);
        shed++;
    }
    host->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    host->refused += (size_t)shed;
    host_pause_accepting(L, host);
    if (may_warn(host))
        lh_log(host, LH_WARN,
               "out of file descriptors (%s) with %zu connections open: "
               "closed %d waiting connections, accepting again in %.1f s",
               strerror(err), host->connections, shed, LH_ACCEPT_PAUSE_SECONDS);
}

/* Resumes accepting once the pause after running out of fds is over. */
void host_resume_accepting(lua_State *L, lh_host *host)
{
    if (host->accept_resume_at <= 0 || host_now(host) < host->accept_resume_at)
        return;
    host->accept_resume_at = 0;
    pause_listeners(L, host, 0);
}

/* Closes a just-accepted fd that a limit does not allow, counting and logging it. */
int host_refuse(lh_host *host, int fd, const char *why)
{
    close(fd);
    host->refused++;
    if (may_warn(host))
        lh_log(host, LH_WARN, "refusing connections: %s (%zu refused so far)", why, host->refused);
    return 0;
}

static void budget_hook(lua_State *L, lua_Debug *ar);

/* From now on every instruction and every call on L raises, so a script that catches
 * the error with its own pcall cannot go on: the call to pcall itself fails. */
static void budget_exceeded(lua_State *L, lh_host *host)
{
    lua_sethook(L, budget_hook, LUA_MASKCALL | LUA_MASKCOUNT, 1);
    luaL_error(L, "callback ran past its budget of %I instructions (--max-instructions)",
               (lua_Integer)host->max_instructions);
}

/* The count hook behind --max-instructions. It is called every LH_BUDGET_STEP
 * instructions and raises once the callback has used its budget. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    lh_host *host = *(lh_host **)lua_getextraspace(L);
    if (!host)
        return;
    if (ar->event == LUA_HOOKCOUNT)
        host->budget_used += LH_BUDGET_STEP;
    if (host->budget_used < host->max_instructions)
        return;
    if (ar->event == LUA_HOOKCALL) { /* let the host's own message handler run */
        lua_getinfo(L, "f", ar);
        int handler = lh_is_message_handler(lua_tocfunction(L, -1));
        lua_pop(L, 1);
        if (handler)
            return;
    }
    budget_exceeded(L, host);
}

/* SIGVTALRM, every 50 ms of the process's own CPU time: a callback that was already
 * running at the previous tick gets the counting hook. So callbacks that return in time
 * cost nothing, and an idle host is never woken. */
static void on_watchdog_tick(int signo)
{
    (void)signo;
    lh_host *host = watchdog.host;
    if (host && host->in_callback && host->callback_epoch == watchdog.seen_epoch &&
        !host->budget_armed && host->max_instructions > 0) {
        host->budget_armed = 1;
        lua_sethook(host->running, budget_hook, LUA_MASKCOUNT, LH_BUDGET_STEP);
    }
    if (host)
        watchdog.seen_epoch = host->callback_epoch;
}

/* Makes host the one the watchdog guards (the executable has one host). 0 or -errno. */
int host_start_watchdog(lh_host *host)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_watchdog_tick;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGVTALRM, &sa, NULL) < 0)
        return -errno;
    watchdog.host = host;
    struct itimerval every = {{0, 50000}, {0, 50000}};
    return setitimer(ITIMER_VIRTUAL, &every, NULL) < 0 ? -errno : 0;
}

/* Stops the watchdog if it guards host: its ticks must never reach a freed host. */
void host_stop_watchdog(lh_host *host)
{
    if (watchdog.host != host)
        return;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_VIRTUAL, &off, NULL);
    watchdog.host = NULL;
}

/* Starts the host's bookkeeping for one callback about to run on L: its instruction
 * budget, and what the watchdog looks at. Under the watchdog the budget is counted once
 * a callback has run for a tick; without it (luahost.so in another program) every
 * instruction is counted, which is exact but slower. */
void host_callback_begin(lua_State *L, lh_host *host)
{
    host->budget_used = 0;
    host->running = L;
    *(lh_host **)lua_getextraspace(L) = host; /* for the hook, which has only L */
    host->callback_epoch++;
    host->in_callback = 1;
    if (host->max_instructions > 0 && watchdog.host != host) {
        host->budget_armed = 1;
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, LH_BUDGET_STEP);
    }
}

/* Ends it, whether the callback returned or raised. */
void host_callback_end(lua_State *L, lh_host *host)
{
    host->in_callback = 0;
    if (host->budget_armed) {
        lua_sethook(L, NULL, 0, 0);
        host->budget_armed = 0;
    }
}

/* Calls the function below nargs arguments in protected mode, with the message handler
 * at index handler, within the host's instruction budget. Pops the function and its
 * arguments; leaves the error message on failure. */
int host_pcall(lua_State *L, lh_host *host, int nargs, int handler)
{
    host_callback_begin(L, host);
    int status = lua_pcall(L, nargs, 0, handler);
    host_callback_end(L, host);
    return status;
}

/* Calls the original coroutine.resume (at index resume) on the arguments (a thread and
 * its values) with that thread made the one the watchdog arms and the budget counts:
 * hooks are per thread, and a coroutine made before the callback has none. */
static int resume_guarded(lua_State *L, lh_host *host, int resume)
{
    int nargs = lua_gettop(L);
    lua_State *co = lua_tothread(L, 1);
    int guarded = co && host->in_callback && host->max_instructions > 0;
    if (guarded) {
        *(lh_host **)lua_getextraspace(co) = host;
        if (host->budget_armed)
            lua_sethook(co, budget_hook, LUA_MASKCOUNT, LH_BUDGET_STEP);
        host->running = co;
    }
    lua_pushvalue(L, resume);
    lua_insert(L, 1);
    lua_call(L, nargs, LUA_MULTRET);
    if (guarded) {
        host->running = L;
        if (host->budget_used >= host->max_instructions) /* the coroutine died of it */
            budget_exceeded(L, host);
        if (host->budget_armed)
            lua_sethook(L, budget_hook, LUA_MASKCOUNT, LH_BUDGET_STEP);
    }
    return lua_gettop(L);
}

/* coroutine.resume, guarded. Upvalues: the host, the original resume. */
static int guarded_resume(lua_State *L)
{
    return resume_guarded(L, (lh_host *)lua_touserdata(L, lua_upvalueindex(1)),
                          lua_upvalueindex(2));
}

/* What coroutine.wrap returns, guarded: resumes its thread (upvalue 3) and raises its
 * error, as the original does. */
static int guarded_wrapped(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(3));
    lua_insert(L, 1);
    int n =
        resume_guarded(L, (lh_host *)lua_touserdata(L, lua_upvalueindex(1)), lua_upvalueindex(2));
    if (lua_toboolean(L, 1))
        return n - 1;
    if (lua_type(L, 2) == LUA_TSTRING) { /* as the original, with where it was called */
        luaL_where(L, 1);
        lua_insert(L, 2);
        lua_concat(L, 2);
    }
    lua_settop(L, 2);
    return lua_error(L);
}

/* coroutine.wrap, guarded. Upvalues: the host, the original resume. */
static int guarded_wrap(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, guarded_wrapped, 3);
    return 1;
}

/* Replaces coroutine.resume and coroutine.wrap so a runaway loop inside a coroutine is
 * caught by the budget like any other (the executable's scripts only). */
void host_guard_coroutines(lua_State *L, lh_host *host)
{
    if (lua_getglobal(L, "coroutine") != LUA_TTABLE ||
        lua_getfield(L, -1, "resume") != LUA_TFUNCTION) {
        lua_settop(L, lua_gettop(L) - 2);
        return;
    }
    int table = lua_gettop(L) - 1;
    lua_pushlightuserdata(L, host);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, guarded_resume, 2);
    lua_setfield(L, table, "resume");
    lua_pushlightuserdata(L, host);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, guarded_wrap, 2);
    lua_setfield(L, table, "wrap");
    lua_pop(L, 2);
}
