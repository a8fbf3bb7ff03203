/* main.c: the luahost executable: parse the command line, load the script, run its
 * main chunk with `arg` as lua does, run the loop, and stop gracefully on a signal. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "lh.h"

#define SHUTDOWN_GRACE_SECONDS 3.0

int luaopen_luahost(lua_State *L);

typedef struct options {
    const char *backend;
    const char *log_level;
    long long max_output;
    int check;
    int watch;
    int script; /* index in argv of SCRIPT */
    int argc;
    char **argv;
} options;

static const char *progname = "luahost";

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
            "  --check             compile SCRIPT, report, and exit\n"
            "  --watch             reload SCRIPT whenever its file changes\n"
            "  -h, --help          show this help and exit\n"
            "  --version           show the version and exit\n",
            names[0], CONN_DEFAULT_LIMIT);
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

/* Returns -1 to go on, or the exit status. */
static int parse_options(int argc, char **argv, options *o)
{
    int i;
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
        } else if (matches(a, "--selector")) {
            if (!(v = option_value(argc, argv, &i, "--selector")))
                return usage_error("option %s needs a value", a);
            if (!known_backend(v))
                return usage_error("unknown selector backend '%s'", v);
            o->backend = v;
        } else if (matches(a, "--log-level")) {
            if (!(v = option_value(argc, argv, &i, "--log-level")))
                return usage_error("option %s needs a value", a);
            if (lh_log_level_from_name(v) < 0)
                return usage_error("unknown log level '%s' (expected debug, info, warn, error)", v);
            o->log_level = v;
        } else if (matches(a, "--max-output")) {
            if (!(v = option_value(argc, argv, &i, "--max-output")))
                return usage_error("option %s needs a value", a);
            char *end;
            o->max_output = strtoll(v, &end, 10);
            if (*end != '\0' || o->max_output <= 0 || o->max_output > UINT32_MAX)
                return usage_error("invalid --max-output '%s' (expected 1-4294967295 bytes)", v);
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (i >= argc)
        return usage_error("%s", "no SCRIPT given");
    o->script = i;
    return -1;
}

/* arg as lua.c builds it: the script at 0, its arguments from 1, the host before it.
 * The path and arguments are kept for reloads too. */
static void create_arg_table(lua_State *L, const options *o)
{
    lua_createtable(L, o->argc - o->script, o->script + 1);
    for (int i = 0; i < o->argc; i++) {
        lua_pushstring(L, o->argv[i]);
        lua_rawseti(L, -2, i - o->script);
    }
    lua_setglobal(L, "arg");
    lua_createtable(L, o->argc - o->script - 1, 0);
    for (int i = o->script + 1; i < o->argc; i++) {
        lua_pushstring(L, o->argv[i]);
        lua_rawseti(L, -2, i - o->script);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, "luahost.script_args");
    lua_pushstring(L, o->argv[o->script]);
    lua_setfield(L, LUA_REGISTRYINDEX, "luahost.script");
}

static void apply_settings(lua_State *L, const options *o)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "luahost.host");
    lh_host *host = (lh_host *)lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (o->log_level)
        host->log_level = lh_log_level_from_name(o->log_level);
    if (o->max_output > 0)
        host->max_output = (uint32_t)o->max_output;
    signal(SIGPIPE, SIG_IGN);
}

/* Runs the loop once the main chunk has returned, then closes down gracefully. Signals
 * are routed into the loop only now: while the main chunk runs (a client script may run
 * its own select loop there) SIGINT and SIGTERM act as they do for lua. */
static int serve(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "luahost.host");
    lh_host *host = (lh_host *)lua_touserdata(L, -1);
    if (host_watch_signals(host) < 0)
        lh_log(host, LH_WARN, "cannot watch signals; SIGINT/SIGTERM will not stop gracefully");
    const options *o = (const options *)lua_touserdata(L, 1);
    if (o->watch && host_watch_file(host, o->argv[o->script]) < 0)
        lh_log(host, LH_WARN, "cannot watch %s for changes; --watch is off", o->argv[o->script]);
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "luahost");
    lua_getfield(L, -1, "run");
    lua_call(L, 0, 2);
    if (lua_isnil(L, -2))
        return luaL_error(L, "%s", lua_tostring(L, -1));
    host_shutdown(L, host, SHUTDOWN_GRACE_SECONDS);
    return 0;
}

/* Everything runs inside one protected call, as in lua.c, so that even a failure while
 * opening the libraries is reported rather than aborting. */
static int pmain(lua_State *L)
{
    options *o = (options *)lua_touserdata(L, 1);
    const char *script = o->argv[o->script];
    luaL_openlibs(L);
    if (o->backend) {
        lua_pushstring(L, o->backend);
        lua_setfield(L, LUA_REGISTRYINDEX, "luahost.backend");
    }
    luaL_requiref(L, "luahost", luaopen_luahost, 1);
    lua_pop(L, 1);
    apply_settings(L, o);
    create_arg_table(L, o);
    lua_pushcfunction(L, lh_traceback);
    int handler = lua_gettop(L);
    if (luaL_loadfile(L, script) != LUA_OK)
        return lua_error(L);
    if (o->check) {
        printf("%s: syntax OK\n", script);
        return 0;
    }
    for (int i = o->script + 1; i < o->argc; i++)
        lua_pushstring(L, o->argv[i]);
    if (lua_pcall(L, o->argc - o->script - 1, 0, handler) != LUA_OK)
        return lua_error(L);
    return serve(L);
}

/* The first line of an error; the traceback follows only at log level debug. */
static void report(const options *o, const char *msg)
{
    int verbose = o->log_level && strcmp(o->log_level, "debug") == 0;
    int len = (int)strcspn(msg, "\n");
    fprintf(stderr, "%s: %.*s\n", progname, verbose ? (int)strlen(msg) : len, msg);
}

int main(int argc, char **argv)
{
    options o = {.argc = argc, .argv = argv};
    int status = parse_options(argc, argv, &o);
    if (status >= 0)
        return status;
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "%s: cannot create a Lua state: not enough memory\n", progname);
        return 1;
    }
    lua_pushcfunction(L, pmain);
    lua_pushlightuserdata(L, &o);
    status = lua_pcall(L, 1, 0, 0);
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        report(&o, msg ? msg : "(error object is not a string)");
    }
    lua_close(L);
    return status == LUA_OK ? 0 : 1;
}
