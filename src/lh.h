/* lh.h: what the Lua bindings and the host loop share: the host state, the userdata
 * types (selector, key, socket, timer) and the calls between their files. */
#ifndef LUAHOST_LH_H
#define LUAHOST_LH_H

#include <lauxlib.h>
#include <lua.h>
#include <signal.h>

#include "conn.h"
#include "net.h"
#include "selector.h"
#include "timer.h"

#define LH_SOCKET   "luahost.socket"
#define LH_SELECTOR "luahost.selector"
#define LH_KEY      "luahost.key"
#define LH_TIMER    "luahost.timer"

enum lh_log_level { LH_DEBUG, LH_INFO, LH_WARN, LH_ERROR };

/* A connect storm gets this many accepts per round, so established clients are served. */
#define LH_ACCEPTS_PER_ROUND 64
/* How long accepting pauses after the fds ran out. */
#define LH_ACCEPT_PAUSE_SECONDS 0.1
/* Instructions a callback may run before it is aborted, unless --max-instructions says. */
#define LH_DEFAULT_MAX_INSTRUCTIONS 100000000L
/* The budget is counted in steps of this many instructions. */
#define LH_BUDGET_STEP 1000

/* recv() reads into this much of the host's own scratch space before making a string. */
#define LH_SCRATCH_SIZE 65536
/* How long a closed connection may take to flush what it still has buffered. */
#define LH_LINGER_SECONDS 5.0

/* What a host run in process by a test may keep of its log. */
#define LH_LOG_CAPTURE_MAX (1024 * 1024)

typedef struct lh_log_capture {
    char *text;
    size_t len, cap;
    size_t dropped; /* lines past LH_LOG_CAPTURE_MAX */
} lh_log_capture;

typedef struct lh_selector lh_selector;
typedef struct lh_host *lh_host_ptr;

/* A closed socket whose buffered output is still being sent. */
typedef struct lh_linger {
    conn conn;
    double deadline;
    struct lh_linger *next;
} lh_linger;

typedef struct lh_host {
    lua_State *L;
    lh_selector *sel;       /* the default selector, anchored by the module table */
    lh_selector *selectors; /* every live selector, so close() can unregister everywhere */
    timer_heap timers;
    lh_linger *linger_head, *linger_tail;
    conn signal_conn; /* read end of the self-pipe the signal handlers write to */
    int signal_write_fd;
    uint32_t max_output;
    int log_level;
    lh_log_capture *log_captured; /* luahost.open{log = "capture"}: kept, not printed */
    int stop_requested;
    int closed;
    int listeners_ref; /* table of listening sockets */
    int timers_ref;    /* scheduled timer -> its userdata, so none is collected early */
    int drain_ref;     /* socket pointer -> on_drain callback */
    int module_ref;    /* the module table, where a script sets luahost.adopt */
    int on_reload_ref; /* the running script's on_reload callbacks */
    int journal_ref;   /* while reloading: what the new script changed, to roll back */
    int script_ref;    /* {path=, args=, env=} of a script run in process, or LUA_NOREF */
    int generation;    /* which load of the script is running: 1, then one more per reload */
    int reloading;
    int reload_requested;
    double reload_at;        /* --watch: when to reload after the file changed, 0 if not pending */
    conn watch_conn;         /* --watch: the inotify fd */
    char *watch_name;        /* --watch: the script's file name within its directory */
    int spare_fd;            /* given up when fds run out, so pending connections can be shed */
    size_t connections;      /* accepted connections whose fd is still open */
    size_t max_connections;  /* 0: no limit */
    long long fd_limit;      /* RLIMIT_NOFILE as the executable left it (0: not known) */
    size_t refused;          /* connections accepted and closed at once (limits, no fds) */
    int accepts_this_round;  /* accepts while dispatching this round, capped */
    double accept_resume_at; /* listeners paused after running out of fds, until then */
    double last_fd_warning;
    long max_instructions; /* per callback; 0: no budget */
    long budget_used;      /* instructions counted for the running callback */
    lua_State *running;    /* the thread running a callback, for the watchdog */
    volatile sig_atomic_t in_callback;
    volatile sig_atomic_t callback_epoch; /* one more per callback */
    volatile sig_atomic_t budget_armed;   /* the counting hook is set */
    int debug_gc;                         /* --debug-gc: a full collection after every round */
    int virtual_clock; /* the "sim" backend's: time moves only when a test advances it */
    double virtual_now;
    int handles_ref;       /* socket pointer -> socket, weak: finds the socket to call on_drain */
    int batch_handler_ref; /* the message handler of dispatch (host.c) */
    int batch_depth;       /* the stack level below run_batch's, for that handler */
    char scratch[LH_SCRATCH_SIZE];
} lh_host;

struct lh_selector {
    selector *core;
    lh_host *host;
    int keys_ref; /* table fd -> the registration's entry (see lua_selector.c) */
    int cursor;   /* next entry of the batch select() is iterating */
    int batch;    /* entries in that batch */
    int busy;     /* inside select() or dispatch: a nested select would clobber the batch */
    lh_selector *next;
};

/* A key's userdata; its user values are 1: fileobj, 2: data. Keys are snapshots, as in
 * Python: modify makes a new one. */
typedef struct lh_key {
    int fd;
    int events;
    int generation; /* the script load that last registered or modified it */
} lh_key;

typedef struct lh_socket {
    conn conn; /* conn.fd is -1 once closed; first, so a conn* from the selector casts back */
    lh_host_ptr host;
    uint16_t registrations;
    uint8_t family;
    uint8_t listening; /* LISTENING, or LISTENING_ANY_PORT when port 0 was asked */
    int generation;    /* for a listener: the script load that last asked for it */
    /* A socket registered on its own host's selector with a callback that takes no key
     * holds that registration itself, its data as user value 1 (see lua_selector.c). */
    uint8_t own_events; /* that registration's events; 0 when it holds none */
    int own_generation; /* the script load that last registered or modified it */
} lh_socket;

enum { LISTENING = 1, LISTENING_ANY_PORT = 2 };

/* The host is upvalue 1 of the module's functions; methods find it through their object,
 * because one Lua state may open the module more than once (busted's insulation does). */
#define LH_HOST(L) ((lh_host *)lua_touserdata((L), lua_upvalueindex(1)))

/* luahost.c */
void lh_setfuncs(lua_State *L, const luaL_Reg *funcs, int table, int host);
int lh_push_error(lua_State *L, int neg_errno, const char *what);

/* reload.c */
int lh_push_script_field(lua_State *L, lh_host *host, const char *name);

/* lua_sim.c */
void lhsim_open(lua_State *L, int module, int host);

/* log.c */
void lh_log(lh_host *host, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int lh_log_level_from_name(const char *name);

/* lua_selector.c */
void lhsel_open(lua_State *L, int module, int host);
lh_selector *lhsel_push_new(lua_State *L, lh_host *host, const char *backend);
void lhsel_push_keys(lua_State *L, lh_selector *s);
int lhsel_entry_fd(lua_State *L, int entry);
int lhsel_entry_events(lua_State *L, int entry);
int lhsel_entry_generation(lua_State *L, int entry);
void lhsel_push_fileobj(lua_State *L, int entry);
void lhsel_push_data(lua_State *L, int entry);
void lhsel_push_key(lua_State *L, int entry);
void lhsel_set_entry(lua_State *L, int entry, int events, int generation, int data);
void lhsel_forget_socket(lua_State *L, lh_host *host, lh_socket *sock);
int lhsel_fileobj_fd(lua_State *L, int index);
int lhsel_unregister_fd(lua_State *L, lh_selector *s, int fd);
int lhsel_restore_entry(lua_State *L, lh_selector *s, int entry);
void lhsel_release_all(lua_State *L, lh_host *host);

/* lua_socket.c */
void lhsock_open(lua_State *L, int module, int host);
lh_socket *lhsock_push(lua_State *L, lh_host *host, int fd, int family);
lh_socket *lhsock_test(lua_State *L, int index);
void lhsock_close_listeners(lua_State *L, lh_host *host);
void lhsock_close(lua_State *L, lh_host *host, lh_socket *sock, int graceful);
int lhsock_describe(lh_socket *sock, char *out, size_t outlen);
int lhsock_flushed(lua_State *L, lh_host *host, lh_socket *sock);

/* lua_timer.c */
void lhtimer_open(lua_State *L, int module, int host);
void lhtimer_run_due(lua_State *L, lh_host *host);
void lhtimer_settle(lua_State *L, lh_host *host, int index, int reschedule);
void lhtimer_cancel(lua_State *L, int index);

/* reload.c */
void lhreload_open(lua_State *L, int module, int host);
int host_reload(lua_State *L, lh_host *host, const char *path);
void reload_journal_key(lua_State *L, lh_host *host, int selector_index, int fd);
void reload_journal_object(lua_State *L, lh_host *host, const char *list, int index);
void reload_journal_listener(lua_State *L, lh_host *host, int index, int old_generation);
int host_watch_file(lh_host *host, const char *path);
void host_watch_event(lh_host *host);

/* host.c */
lh_host *host_push_new(lua_State *L);
double host_now(const lh_host *host);
int host_step(lua_State *L, lh_host *host, int timeout_ms);
int host_is_idle(lh_host *host);
int host_script_mask(lua_State *L, lh_host *host, selector *core, const sel_fired *f);
void host_linger(lh_host *host, conn *c);
void host_shutdown(lua_State *L, lh_host *host, double grace_seconds);
void host_close(lua_State *L, lh_host *host, double grace_seconds);
int host_watch_signals(lh_host *host);
void host_close_fd(lh_host *host, conn *c);
void host_out_of_fds(lua_State *L, lh_host *host, int listen_fd, int err);
void host_resume_accepting(lua_State *L, lh_host *host);
void host_pause_accepting(lua_State *L, lh_host *host);
int host_refuse(lh_host *host, int fd, const char *why);
int host_pcall(lua_State *L, lh_host *host, int nargs, int handler);
void host_callback_begin(lua_State *L, lh_host *host);
void host_callback_end(lua_State *L, lh_host *host);
int host_start_watchdog(lh_host *host);
void host_guard_coroutines(lua_State *L, lh_host *host);
void host_stop_watchdog(lh_host *host);
int lh_traceback(lua_State *L);
int lh_is_message_handler(lua_CFunction f);
void host_report_error(lua_State *L, lh_host *host, const char *where);

#endif
