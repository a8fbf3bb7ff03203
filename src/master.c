/* master.c: the --workers supervisor: a poll loop over a signal self-pipe and one
 * channel per worker, restarting, signalling and heartbeating the workers. It never runs
 * Lua, so it is never stuck in a script, and it can always act on a signal. */
#include "master.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fdpass.h"
#include "timer.h"
#include "worker.h"

/* The master loop's tick: restarts and heartbeats are checked at least this often. */
#define MASTER_TICK_MS 50

typedef struct slot {
    pid_t pid;       /* 0: not running */
    int chan;        /* the master's end of the channel, -1 when none */
    double started;  /* when the running worker was started */
    double due;      /* when to start it (again); < 0: never */
    double heard;    /* when it last sent anything */
    double pinged;   /* when it was last pinged */
    int quick_exits; /* quick exits in a row: the backoff */
    int killed;      /* the master killed it for not answering */
} slot;

typedef struct master {
    const master_config *cfg;
    slot slots[MASTER_MAX_WORKERS];
    master_listeners listeners;
    pid_t self;
    int stopping; /* a stop signal arrived: restart nothing, wait for the workers */
    int ping_seq;
} master;

static int signal_pipe[2] = {-1, -1};

static void on_signal(int signo)
{
    int saved = errno;
    unsigned char byte = (unsigned char)signo;
    if (write(signal_pipe[1], &byte, 1) < 0) {
        /* full: the master is behind on signals it will read anyway */
    }
    errno = saved;
}

static int install_signals(void)
{
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    int signals[] = {SIGINT, SIGTERM, SIGHUP, SIGCHLD};
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++)
        sigaction(signals[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* In the child: becomes worker i. Its own process group, so a terminal's Ctrl-C reaches
 * only the master, which passes the stop on once; and SIGTERM when the master dies.
 * SIGHUP is ignored until the host takes it over, once the main chunk has returned: a
 * reload passed on meanwhile asks for the file the worker is loading anyway, and would
 * otherwise kill it and cost a restart. */
static void exec_worker(master *m, int i, int chan, const sigset_t *mask)
{
    char env[64];
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != m->self)
        _exit(1);
    int signals[] = {SIGINT, SIGTERM, SIGCHLD};
    for (size_t k = 0; k < sizeof signals / sizeof signals[0]; k++)
        signal(signals[k], SIG_DFL);
    signal(SIGHUP, SIG_IGN);
    /* Only now may a signal sent to the new worker come in: it meets these dispositions,
     * not the master's handler, which would write into the master's own signal pipe (a
     * SIGTERM passed on to it would count as the master's second). */
    sigprocmask(SIG_SETMASK, mask, NULL);
    fcntl(chan, F_SETFD, 0); /* the one fd the worker inherits */
    snprintf(env, sizeof env, "%d,%d,%d", i + 1, m->cfg->workers, chan);
    setenv(WORKER_ENV, env, 1);
    execv("/proc/self/exe", m->cfg->argv);
    fprintf(stderr, "luahost: cannot start worker %d: %s\n", i + 1, strerror(errno));
    _exit(127);
}

static void start_worker(master *m, int i)
{
    slot *s = &m->slots[i];
    int fds[2];
    double now = timer_now();
    if (fdpass_pair(fds) < 0) {
        lh_log(m->cfg->log, LH_ERROR, "cannot start worker %d: %s", i + 1, strerror(errno));
        s->due = now + MASTER_BACKOFF_MOST;
        return;
    }
    sigset_t handled, before;
    sigemptyset(&handled);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGHUP);
    sigaddset(&handled, SIGCHLD);
    sigprocmask(SIG_BLOCK, &handled, &before); /* the child unblocks past its own setup */
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        exec_worker(m, i, fds[1], &before);
    }
    sigprocmask(SIG_SETMASK, &before, NULL);
    close(fds[1]);
    if (pid < 0) {
        lh_log(m->cfg->log, LH_ERROR, "cannot start worker %d: %s", i + 1, strerror(errno));
        close(fds[0]);
        s->due = now + MASTER_BACKOFF_MOST;
        return;
    }
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    *s = (slot){.pid = pid,
                .chan = fds[0],
                .started = now,
                .due = -1,
                .heard = now,
                .pinged = now,
                .quick_exits = s->quick_exits};
    lh_log(m->cfg->log, LH_INFO, "worker %d started (pid %d)", i + 1, (int)pid);
}

/* How a worker ended, for the log. */
static void describe_exit(int status, char *out, size_t len)
{
    if (WIFEXITED(status))
        snprintf(out, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(out, len, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(out, len, "ended (status %d)", status);
}

/* Worker i ended: logs it and decides when it starts again. One that exits 0 by itself
 * is done (a script that ends); one that ends otherwise is restarted, at once the first
 * time, later and later while it keeps exiting soon after its start. */
static void worker_ended(master *m, int i, int status)
{
    slot *s = &m->slots[i];
    char how[96];
    double now = timer_now(), ran = now - s->started;
    describe_exit(status, how, sizeof how);
    if (s->chan >= 0)
        close(s->chan);
    s->chan = -1;
    s->pid = 0;
    if (m->stopping || (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !s->killed)) {
        lh_log(m->cfg->log, LH_INFO, "worker %d %s", i + 1, how);
        s->due = -1;
        return;
    }
    s->quick_exits = ran < MASTER_QUICK_EXIT_SECONDS ? s->quick_exits + 1 : 0;
    double delay = 0;
    for (int k = 0; k < s->quick_exits && delay < MASTER_BACKOFF_MOST; k++)
        delay = delay ? delay * 2 : MASTER_BACKOFF_FIRST;
    delay = delay > MASTER_BACKOFF_MOST ? MASTER_BACKOFF_MOST : delay;
    s->due = now + delay;
    lh_log(m->cfg->log, s->quick_exits > 1 ? LH_ERROR : LH_WARN,
           "worker %d %s after %.1f s%s; restarting it in %.1f s%s", i + 1, how, ran,
           s->killed ? " (killed: it stopped answering the heartbeat)" : "", delay,
           s->quick_exits > 1 ? " (it keeps exiting at start: backing off)" : "");
}

static void reap(master *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (int i = 0; i < m->cfg->workers; i++)
            if (m->slots[i].pid == pid)
                worker_ended(m, i, status);
}

static void signal_workers(master *m, int signo)
{
    for (int i = 0; i < m->cfg->workers; i++)
        if (m->slots[i].pid > 0)
            kill(m->slots[i].pid, signo);
}

/* A stop signal: the first passes SIGTERM on (each worker stops gracefully); a second
 * kills them. Returns the exit status once the master should exit at once, else -1. */
static int stop_signal(master *m, int signo)
{
    const char *name = signo == SIGINT ? "SIGINT" : "SIGTERM";
    if (m->stopping) {
        lh_log(m->cfg->log, LH_WARN, "second %s: killing the workers", name);
        signal_workers(m, SIGKILL);
        for (int i = 0; i < m->cfg->workers; i++)
            if (m->slots[i].pid > 0)
                waitpid(m->slots[i].pid, NULL, 0);
        return 128 + signo;
    }
    lh_log(m->cfg->log, LH_INFO, "%s received, stopping the workers", name);
    m->stopping = 1;
    signal_workers(m, SIGTERM);
    return -1;
}

/* Acts on what the signal pipe holds. The exit status, or -1 to go on. */
static int read_signals(master *m)
{
    unsigned char got[32];
    ssize_t n;
    int status = -1;
    while (status < 0 && (n = read(signal_pipe[0], got, sizeof got)) > 0)
        for (ssize_t k = 0; k < n && status < 0; k++) {
            if (got[k] == SIGCHLD) {
                reap(m);
            } else if (got[k] == SIGHUP) {
                lh_log(m->cfg->log, LH_INFO, "SIGHUP received, reloading every worker");
                signal_workers(m, SIGHUP);
            } else {
                status = stop_signal(m, got[k]);
            }
        }
    return status;
}

/* A listen request from worker i: answered with the slot's socket or an errno. */
static void serve_listen(master *m, int i, const fdpass_msg *req)
{
    fdpass_msg reply;
    memset(&reply, 0, sizeof reply);
    reply.type = FDPASS_REPLY;
    int fd = ml_get(&m->listeners, i, &req->addr, req->nth, req->value > 0 ? req->value : 511);
    if (fd < 0)
        reply.value = -fd;
    if (fdpass_send(m->slots[i].chan, &reply, fd) < 0)
        lh_log(m->cfg->log, LH_WARN, "cannot answer worker %d: %s", i + 1, strerror(errno));
}

/* Reads worker i's channel: requests, and heartbeats; closes it at its end. */
static void read_channel(master *m, int i)
{
    slot *s = &m->slots[i];
    for (;;) {
        fdpass_msg msg;
        int fd, rc = fdpass_recv(s->chan, &msg, &fd);
        if (fd >= 0)
            close(fd); /* a worker has no fd to give */
        if (rc == -EAGAIN || rc == -EPROTO) {
            if (rc == -EAGAIN)
                return;
            continue;
        }
        if (rc <= 0) { /* it is exiting: SIGCHLD will tell */
            close(s->chan);
            s->chan = -1;
            return;
        }
        s->heard = timer_now();
        if (msg.type == FDPASS_LISTEN)
            serve_listen(m, i, &msg);
    }
}

/* Pings each worker a quarter of the limit apart, and kills one silent past the grace. */
static void heartbeat(master *m, double now)
{
    double limit = m->cfg->heartbeat_seconds;
    for (int i = 0; limit > 0 && i < m->cfg->workers; i++) {
        slot *s = &m->slots[i];
        if (s->pid <= 0 || s->chan < 0 || s->killed)
            continue;
        if (now - s->heard > limit * MASTER_HEARTBEAT_GRACE) {
            lh_log(m->cfg->log, LH_ERROR,
                   "worker %d (pid %d) has not answered for %.1f s (--max-callback-seconds "
                   "%g): killing it",
                   i + 1, (int)s->pid, now - s->heard, limit);
            kill(s->pid, SIGKILL);
            s->killed = 1;
        } else if (now - s->pinged >= limit / 4) {
            fdpass_msg ping = {.type = FDPASS_PING, .value = ++m->ping_seq};
            fdpass_send(s->chan, &ping, -1); /* a full channel: the worker is behind */
            s->pinged = now;
        }
    }
}

/* Starts the workers that are due; whether any runs or is due to. */
static int start_due(master *m, double now)
{
    int alive = 0;
    for (int i = 0; i < m->cfg->workers; i++) {
        slot *s = &m->slots[i];
        if (!m->stopping && s->pid == 0 && s->due >= 0 && now >= s->due)
            start_worker(m, i);
        alive |= s->pid > 0 || (!m->stopping && s->due >= 0);
    }
    return alive;
}

/* One wait over the signal pipe and the channels; then what arrived is handled. The
 * exit status, or -1 to go on. */
static int wait_once(master *m)
{
    struct pollfd p[MASTER_MAX_WORKERS + 1];
    int who[MASTER_MAX_WORKERS + 1], n = 0;
    p[n++] = (struct pollfd){signal_pipe[0], POLLIN, 0};
    for (int i = 0; i < m->cfg->workers; i++)
        if (m->slots[i].chan >= 0) {
            who[n] = i;
            p[n++] = (struct pollfd){m->slots[i].chan, POLLIN, 0};
        }
    if (poll(p, (nfds_t)n, MASTER_TICK_MS) < 0 && errno != EINTR)
        lh_log(m->cfg->log, LH_ERROR, "poll: %s", strerror(errno));
    for (int k = 1; k < n; k++)
        if (p[k].revents && m->slots[who[k]].chan == p[k].fd)
            read_channel(m, who[k]);
    return (p[0].revents & POLLIN) ? read_signals(m) : -1;
}

int master_run(const master_config *cfg)
{
    static master m; /* large, and one a process */
    memset(&m, 0, sizeof m);
    m.cfg = cfg;
    m.self = getpid();
    ml_init(&m.listeners, cfg->log);
    if (install_signals() < 0) {
        lh_log(cfg->log, LH_ERROR, "cannot make the signal pipe: %s", strerror(errno));
        return 1;
    }
    for (int i = 0; i < cfg->workers; i++)
        m.slots[i] = (slot){.chan = -1, .due = 0};
    lh_log(cfg->log, LH_INFO, "master (pid %d) starting %d workers", (int)m.self, cfg->workers);
    int status = -1;
    while (status < 0 && start_due(&m, timer_now())) {
        heartbeat(&m, timer_now());
        status = wait_once(&m);
    }
    lh_log(cfg->log, LH_INFO, "every worker has stopped; the master exits");
    ml_close_all(&m.listeners);
    return status < 0 ? 0 : status;
}
