/* limits.c: what the host does at its limits: fds running out while accepting, more
 * connections than --max-connections, a callback past its instruction budget. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "lh.h"

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
    double now = timer_now();
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
    while (shed < LH_ACCEPTS_PER_ROUND && (fd = net_accept(listen_fd, &peer)) >= 0) {
        close(fd);
        shed++;
    }
    host->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    host->refused += (size_t)shed;
    host->accept_resume_at = timer_now() + LH_ACCEPT_PAUSE_SECONDS;
    pause_listeners(L, host, 1);
    if (may_warn(host))
        lh_log(host, LH_WARN,
               "out of file descriptors (%s) with %zu connections open: "
               "closed %d waiting connections, accepting again in %.1f s",
               strerror(err), host->connections, shed, LH_ACCEPT_PAUSE_SECONDS);
}

/* Resumes accepting once the pause after running out of fds is over. */
void host_resume_accepting(lua_State *L, lh_host *host)
{
    if (host->accept_resume_at <= 0 || timer_now() < host->accept_resume_at)
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

static void budget_exceeded(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "callback ran past its budget of instructions (--max-instructions)");
}

/* Calls the function below nargs arguments in protected mode with a traceback, within
 * the host's instruction budget. Pops them; leaves the error message on failure. */
int host_pcall(lua_State *L, lh_host *host, int nargs)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, lh_traceback);
    lua_insert(L, base);
    if (host->max_instructions > 0)
        lua_sethook(L, budget_exceeded, LUA_MASKCOUNT, (int)host->max_instructions);
    int status = lua_pcall(L, nargs, 0, base);
    if (host->max_instructions > 0)
        lua_sethook(L, NULL, 0, 0);
    lua_remove(L, base);
    return status;
}
