/* main.c: the luahost executable: parse the command line, load the script, run its
 * main chunk with `arg` as lua does, run the loop, and stop gracefully on a signal. */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stddef.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "blocks.h"
#include "log.h"
#include "luahost.h"
#include "master.h"
#include "stall.h"
#include "warn.h"

#define SHUTDOWN_GRACE_SECONDS 3.0
/* fds kept back from --max-connections for listeners, the host's own and the script's. */
#define FDS_RESERVED 64

static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "luahost: unprotected error: %s\n", msg ? msg : "(not a string)");
    return 0;
}

typedef struct options {
    const char *backend;
    const char *log_level;
    long long max_output; /* -1 where not given */
    long long max_connections;
    long long max_instructions;
    long long max_memory;
    long long max_callback_seconds;
    long long workers;      /* --workers: 0 for none */
    const char *worker_env; /* set when this process is a worker: WORKER_ENV's value */
    int check;
    int watch;
    int debug_gc;
    int script; /* index in argv of SCRIPT */
    int argc;
    char **argv;
} options;

static const char *progname = "luahost";
static char worker_progname[40];

static void usage(FILE *out)
{
    const char *const *names = sel_backend_names();
    fprintf(out,
            "Usage: %s [options] SCRIPT [ARGS...]\n"
            "Runs SCRIPT, a Lua 5.4 file, then serves what it registered until nothing is\n"
            "left, luahost.stop() is called, or SIGINT/SIGTERM arrives. SIGHUP loads SCRIPT\n"
            "anew without dropping a connection.\n\n"
            "Options:\n"
            "  --selector NAME     readiness backend: ",
            progname);
    for (int i = 0; names[i]; i++)
        fprintf(out, "%s%s", i ? ", " : "", names[i]);
    fprintf(out,
            " (default: %s)\n"
            "  --log-level LEVEL   debug, info, warn or error (default: info)\n"
            "  --max-output BYTES  output a connection may buffer (default: %u)\n"
            "  --max-connections N connections at once; more are closed when accepted\n"
            "                      (default: the fd limit, raised to its maximum, less 64)\n"
            "  --max-instructions N\n"
            "                      Lua instructions one callback may run before it is\n"
            "                      aborted (default: %ld; 0: no limit)\n"
            "  --max-memory BYTES  memory the Lua state may use (default: no limit)\n"
            "  --max-callback-seconds N\n"
            "                      end the process (exit status %d) when one callback has\n"
            "                      run N seconds, for a supervisor to restart it: the way\n"
            "                      out of a long C call the budget cannot stop\n"
            "                      (default: 0, off)\n"
            "  --workers N         run N worker processes, each running SCRIPT, under a\n"
            "                      master that owns the listeners, restarts a worker that\n"
            "                      dies and passes SIGHUP on (default: 0, one process)\n"
            "  --check             compile SCRIPT, report, and exit\n"
            "  --watch             reload SCRIPT whenever its file changes\n"
            "  --debug-gc          collect all garbage after every round (slow; for tests)\n"
            "  -h, --help          show this help and exit\n"
            "  --version           show the version and exit\n",
            names[0], CONN_DEFAULT_LIMIT, LH_DEFAULT_MAX_INSTRUCTIONS, LH_STALL_EXIT_STATUS);
}

static int usage_error(const char *fmt, const char *what)
{
    fprintf(stderr, "%s: ", progname);
    fprintf(stderr, fmt, what);
    fprintf(stderr, " (try '%s --help')\n", progname);
    return 2;
}

static int known_backend(const char *name)
{
    for (const char *const *n = sel_backend_names(); *n; n++)
        if (strcmp(*n, name) == 0)
            return 1;
    return 0;
}

/* Takes the value of option `name` from "--name=value" or the next argument. */
static const char *option_value(int argc, char **argv, int *i, const char *name)
{
    size_t len = strlen(name);
    if (argv[*i][len] == '=')
        return argv[*i] + len + 1;
    return *i + 1 < argc ? argv[++*i] : NULL;
}

static int matches(const char *arg, const char *name)
{
    size_t len = strlen(name);
    return strncmp(arg, name, len) == 0 && (arg[len] == '\0' || arg[len] == '=');
}

/* The options that take a number, with their ranges. */
static const struct {
    const char *name;
    long long min, max;
    size_t offset;
} numeric_options[] = {
    {"--max-output", 1, UINT32_MAX, offsetof(options, max_output)},
    {"--max-connections", 1, INT32_MAX, offsetof(options, max_connections)},
    {"--max-instructions", 0, INT32_MAX, offsetof(options, max_instructions)},
    {"--max-memory", 0, LLONG_MAX, offsetof(options, max_memory)},
    {"--max-callback-seconds", 0, 86400, offsetof(options, max_callback_seconds)},
    {"--workers", 0, MASTER_MAX_WORKERS, offsetof(options, workers)},
};

/* If argv[*i] is a numeric option, takes its value into o and returns 1, with *status
 * set to an exit status when the value is missing or out of range (-1 otherwise). */
static int numeric_option(int argc, char **argv, int *i, options *o, int *status)
{
    for (size_t n = 0; n < sizeof numeric_options / sizeof numeric_options[0]; n++) {
        const char *name = numeric_options[n].name, *v;
        if (!matches(argv[*i], name))
            continue;
        *status = -1;
        if (!(v = option_value(argc, argv, i, name))) {
            *status = usage_error("option %s needs a value", name);
            return 1;
        }
        char *end;
        errno = 0;
        long long value = strtoll(v, &end, 10);
        if (errno || end == v || *end != '\0' || value < numeric_options[n].min ||
            value > numeric_options[n].max) {
            fprintf(stderr, "%s: invalid %s '%s' (expected %lld to %lld) (try '%s --help')\n",
                    progname, name, v, numeric_options[n].min, numeric_options[n].max, progname);
            *status = 2;
            return 1;
        }
        *(long long *)((char *)o + numeric_options[n].offset) = value;
        return 1;
    }
    return 0;
}

/* Returns -1 to go on, or the exit status. */
static int parse_options(int argc, char **argv, options *o)
{
    int i, status;
    for (i = 1; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0) {
            printf("luahost %s (%s)\n", LUAHOST_VERSION, LUA_RELEASE);
            return 0;
        } else if (strcmp(a, "--check") == 0) {
            o->check = 1;
        } else if (strcmp(a, "--watch") == 0) {
            o->watch = 1;
        } else if (strcmp(a, "--debug-gc") == 0) {
            o->debug_gc = 1;
        } else if (matches(a, "--selector")) {
            if (!(v = option_value(argc, argv, &i, "--selector")))
                return usage_error("option %s needs a value", a);
            if (!known_backend(v))
                return usage_error("unknown selector backend '%s' (sim is for tests only)", v);
            o->backend = v;
        } else if (matches(a, "--log-level")) {
            if (!(v = option_value(argc, argv, &i, "--log-level")))
                return usage_error("option %s needs a value", a);
            if (lh_log_level_from_name(v) < 0)
                return usage_error("unknown log level '%s' (expected debug, info, warn, error)", v);
            o->log_level = v;
        } else if (numeric_option(argc, argv, &i, o, &status)) {
            if (status >= 0)
                return status;
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (i >= argc)
        return usage_error("%s", "no SCRIPT given");
    const char *env = getenv("LUAHOST_SELECTOR");
    if (!o->backend && env && *env && !known_backend(env))
        return usage_error("unknown selector backend '%s' in $LUAHOST_SELECTOR", env);
    o->script = i;
    return -1;
}

/* arg as lua.c builds it: the script at 0, its arguments from 1, the host before it;
 * and the script's table for reloads: its path and arguments. */
static void create_arg_table(lua_State *L, const options *o, lh_host *host)
{
    lua_createtable(L, o->argc - o->script, o->script + 1);
    for (int i = 0; i < o->argc; i++) {
        lua_pushstring(L, o->argv[i]);
        lua_rawseti(L, -2, i - o->script);
    }
    lua_setglobal(L, "arg");
    lua_createtable(L, 0, 2);
    lua_pushstring(L, o->argv[o->script]);
    lua_setfield(L, -2, "path");
    lua_createtable(L, o->argc - o->script - 1, 0);
    for (int i = o->script + 1; i < o->argc; i++) {
        lua_pushstring(L, o->argv[i]);
        lua_rawseti(L, -2, i - o->script);
    }
    lua_setfield(L, -2, "args");
    lhreload_set_script(L, &host->reload, -1);
    lua_pop(L, 1);
}

/* Raises the soft fd limit to the hard one, so the host can hold as many connections as
 * the system allows, and derives the default --max-connections from it. */
static void set_connection_limit(lh_settings *settings, const options *o)
{
    struct rlimit rl;
    long long fds = 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                getrlimit(RLIMIT_NOFILE, &rl);
        }
        fds = rl.rlim_cur == RLIM_INFINITY ? INT32_MAX : (long long)rl.rlim_cur;
    }
    long long room = fds > 2 * FDS_RESERVED ? fds - FDS_RESERVED : fds / 2;
    settings->max_connections = (size_t)(o->max_connections > 0 ? o->max_connections : room);
    settings->fd_limit = fds;
}

/* The host's settings from the command line. */
static void settings_from(lh_settings *settings, const options *o)
{
    lh_settings_init(settings);
    settings->backend = o->backend ? o->backend : getenv("LUAHOST_SELECTOR");
    if (settings->backend && !*settings->backend)
        settings->backend = NULL;
    if (o->log_level)
        settings->log_level = lh_log_level_from_name(o->log_level);
    if (o->max_output > 0)
        settings->max_output = (uint32_t)o->max_output;
    if (o->max_instructions >= 0)
        settings->max_instructions = (long)o->max_instructions;
    settings->debug_gc = o->debug_gc;
    set_connection_limit(settings, o);
}

/* Makes the host: the module, required as "luahost" and the global `luahost`. */
static lh_host *open_host(lua_State *L, const options *o)
{
    lh_settings settings;
    settings_from(&settings, o);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lh_host *host = luahost_push(L, &settings);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "luahost");
    lua_setglobal(L, "luahost");
    lua_pop(L, 1);
    signal(SIGPIPE, SIG_IGN);
    if (host->budget.max_instructions > 0) /* before the script runs: it may make coroutines */
        budget_guard_coroutines(L, &host->budget);
    return host;
}

/* Says how many connections the host can hold: the fd limit's share, or fewer when the
 * backend watches only fds below a bound (select: FD_SETSIZE) and some are taken. */
static void say_ceiling(lh_host *host)
{
    size_t most = adm_ceiling(&host->adm);
    if (most < host->adm.max_connections)
        lh_log(&host->log, LH_INFO,
               "fd limit %lld: up to %zu connections (the %s backend watches only fds below %d)",
               host->adm.fd_limit, most, sel_backend_name(host->sel), host->adm.watch_limit);
    else
        lh_log(&host->log, LH_INFO, "fd limit %lld: up to %zu connections", host->adm.fd_limit,
               host->adm.max_connections);
}

/* Runs the loop once the main chunk has returned, then closes down gracefully. Signals
 * are routed into the loop only now: while the main chunk runs (a client script may run
 * its own select loop there) SIGINT and SIGTERM act as they do for lua. */
static int serve(lua_State *L, const options *o, lh_host *host)
{
    if (signals_watch(&host->loop.sig, host->sel) < 0)
        lh_log(&host->log, LH_WARN,
               "cannot watch signals; SIGINT/SIGTERM will not stop gracefully");
    if (worker_watch(&host->loop.master, host->sel) < 0)
        lh_log(&host->log, LH_WARN,
               "cannot watch the master's channel; its heartbeat goes "
               "unanswered");
    if (o->watch && watch_start(&host->loop.watch, host->sel, o->argv[o->script]) < 0)
        lh_log(&host->log, LH_WARN, "cannot watch %s for changes; --watch is off",
               o->argv[o->script]);
    /* Said once the script is serving, so that an operator's mistake stays one line and a
     * client script that ran its own loop prints nothing of the host's. */
    if (!loop_is_idle(&host->loop))
        say_ceiling(host);
    int err = 0;
    if (!loop_run(L, &host->loop, -1, &err))
        return luaL_error(L, "select: %s", strerror(-err));
    loop_shutdown(L, &host->loop, SHUTDOWN_GRACE_SECONDS);
    return 0;
}

/* The watchdogs, started before the main chunk runs, so that one that never ends is
 * aborted (or, past --max-callback-seconds, the process ended) as a callback would be. */
static void start_watchdogs(lua_State *L, const options *o, lh_host *host)
{
    if (host->budget.max_instructions > 0 && budget_start_watchdog(&host->budget) < 0)
        lh_log(&host->log, LH_WARN,
               "cannot start the watchdog; every callback instruction is counted");
    int rc = o->max_callback_seconds > 0
                 ? stall_start(&host->budget, L, (long)o->max_callback_seconds)
                 : 0;
    if (rc < 0)
        lh_log(&host->log, LH_WARN,
               "cannot start the stall watchdog (%s): --max-callback-seconds is off",
               strerror(-rc));
}

static int provide_listener(void *ud, const net_addr *addr, int backlog)
{
    return worker_listen((worker_chan *)ud, addr, backlog);
}

/* A worker takes its number and its channel to the master from the environment, and
 * its listeners from the master. */
static void become_worker(lua_State *L, const options *o, lh_host *host)
{
    if (worker_from_env(&host->loop.master, o->worker_env) < 0)
        luaL_error(L, "malformed $%s '%s'", WORKER_ENV, o->worker_env);
    host->sockets.provide_listener = provide_listener;
    host->sockets.provide_ud = &host->loop.master;
}

/* Lua's warnings, logged; they must outlive the Lua state. */
static lh_warnings warnings;

/* Everything runs inside one protected call, as in lua.c, so that even a failure while
 * opening the libraries is reported rather than aborting. */
static int pmain(lua_State *L)
{
    options *o = (options *)lua_touserdata(L, 1);
    const char *script = o->argv[o->script];
    luaL_openlibs(L);
    /* A server's garbage is mostly young (a string per message): generational
     * collection spends far less on it than the incremental default. */
    lua_gc(L, LUA_GCGEN, 0, 0);
    lh_host *host = open_host(L, o);
    if (o->worker_env)
        become_worker(L, o, host);
    lh_warnings_install(L, &warnings, &host->log);
    create_arg_table(L, o, host);
    if (luaL_loadfile(L, script) != LUA_OK)
        return lua_error(L);
    if (o->check) {
        printf("%s: syntax OK\n", script);
        return 0;
    }
    for (int i = o->script + 1; i < o->argc; i++)
        lua_pushstring(L, o->argv[i]);
    start_watchdogs(L, o, host);
    /* Counted afresh at each wait: a client's select loop in the main chunk is not one
     * runaway callback. */
    if (budget_pcall_chunk(L, &host->budget, o->argc - o->script - 1, 1) != LUA_OK)
        return lua_error(L);
    return serve(L, o, host);
}

/* Writes text escaped as the log escapes it (a NUL must not end a message, nor a control
 * byte reach the terminal), but for the newlines and tabs that lay out a traceback when
 * layout is set. */
static void print_escaped(const char *text, size_t len, int layout)
{
    char escaped[1024];
    const char *end = text + len;
    while (text < end) {
        size_t piece = 0;
        while (text + piece < end && !(layout && (text[piece] == '\t' || text[piece] == '\n')))
            piece++;
        size_t taken = lh_log_escape(escaped, sizeof escaped, text, piece);
        fputs(escaped, stderr);
        text += taken;
        if (taken == piece && text < end)
            fputc(*text++, stderr);
    }
}

/* An error in one line, as the log writes one (its own newlines escaped: a missing
 * module's message lists the files tried on lines of their own); at log level debug the
 * traceback follows, laid out. */
static void report(const options *o, const char *msg, size_t len)
{
    static const char tb[] = "\nstack traceback:";
    int verbose = o->log_level && strcmp(o->log_level, "debug") == 0;
    const char *cut = verbose ? NULL : memmem(msg, len, tb, sizeof tb - 1);
    fprintf(stderr, "%s: ", progname);
    print_escaped(msg, (size_t)((cut ? cut : msg + len) - msg), verbose);
    fputc('\n', stderr);
}

/* Takes WORKER_ENV out of the environment (a script's io.popen must not see it), names
 * this worker in its log and its error lines, and returns its value, or NULL for a
 * process that is no worker. */
static const char *take_worker_env(void)
{
    static char value[64];
    const char *env = getenv(WORKER_ENV);
    int number;
    if (!env)
        return NULL;
    snprintf(value, sizeof value, "%s", env);
    unsetenv(WORKER_ENV);
    if (sscanf(value, "%d", &number) == 1) {
        char tag[24];
        snprintf(tag, sizeof tag, "worker %d", number);
        lh_log_set_tag(tag);
        snprintf(worker_progname, sizeof worker_progname, "luahost [worker %d]", number);
        progname = worker_progname;
    }
    return value;
}

/* luahost --workers N: this process is the master and runs no script. */
static int run_master(const options *o)
{
    lh_logger log = {.level = o->log_level ? lh_log_level_from_name(o->log_level) : LH_INFO};
    lh_log_set_tag("master");
    master_config cfg = {.workers = (int)o->workers,
                         .argv = o->argv,
                         .heartbeat_seconds = (double)o->max_callback_seconds,
                         .log = &log};
    return master_run(&cfg);
}

int main(int argc, char **argv)
{
    options o = {.argc = argc,
                 .argv = argv,
                 .max_output = -1,
                 .max_connections = -1,
                 .max_instructions = -1,
                 .max_memory = -1,
                 .max_callback_seconds = 0};
    /* glibc gives freed memory at the top of the heap back past 128 KiB and takes it again
     * on the next allocations: a TLS handshake's buffers, freed as a connection closes,
     * made 0.17 brk a handshake (the C reference server 0.02), each with its page faults.
     * A server's heap comes back to its size at once; 1 MiB of it may stay. */
    mallopt(M_TRIM_THRESHOLD, 1 << 20);
    o.worker_env = take_worker_env();
    int status = parse_options(argc, argv, &o);
    if (status >= 0)
        return status;
    if (o.workers > 0 && !o.worker_env && !o.check)
        return run_master(&o);
    lh_memory memory = {0, o.max_memory > 0 ? (size_t)o.max_memory : 0};
    /* Without --max-memory nothing needs counting, and small blocks are recycled. */
    blocks small = {0};
    lua_State *L =
        memory.limit ? lua_newstate(budget_alloc, &memory) : lua_newstate(blocks_alloc, &small);
    if (!L) {
        fprintf(stderr, "%s: cannot create a Lua state: not enough memory\n", progname);
        return 1;
    }
    lua_atpanic(L, panic);
    lua_pushcfunction(L, pmain);
    lua_pushlightuserdata(L, &o);
    status = lua_pcall(L, 1, 0, 0);
    if (status != LUA_OK) {
        size_t len;
        const char *msg = lua_tolstring(L, -1, &len);
        if (!msg) {
            msg = "(error object is not a string)";
            len = strlen(msg);
        }
        report(&o, msg, len);
    }
    lua_close(L);
    blocks_release(&small);
    return status == LUA_OK ? 0 : 1;
}
