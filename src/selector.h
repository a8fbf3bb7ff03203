/* selector.h: registrations kept in an array indexed by fd over a pluggable readiness
 * backend, with the semantics of Python's selectors module. Knows nothing of Lua. */
#ifndef LUAHOST_SELECTOR_H
#define LUAHOST_SELECTOR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "net.h"

enum { SEL_READ = 1, SEL_WRITE = 2, SEL_BOTH = 3 };
/* Set in a fired entry's mask, beside READ|WRITE, when the fd reported an error or a
 * hang-up (never in sel_deliverable's result), so the host can tell "nothing more will
 * come" from "ready". */
enum { SEL_HANGUP = 4 };
/* Likewise when the peer shut its writing side (end of stream ahead), where the backend
 * can tell; the fd may still be written to. */
enum { SEL_PEER_CLOSED = 8 };

/* One readiness report. gen is the registration's generation when the batch was taken,
 * so an event for a key that was replaced later in the same batch can be recognised. */
typedef struct sel_fired {
    int fd;
    int mask;
    uint32_t gen;
} sel_fired;

/* One fd's slot. A slot is in use while the script registered it or the host has its
 * own interest in it (flushing output); gen is non-zero exactly while it is in use.
 * Eight bytes: there is one per fd, up to the highest fd in use. */
typedef struct sel_key {
    uint32_t gen;
    unsigned registered : 1;  /* registered by the script */
    unsigned events : 2;      /* the script's interest, SEL_READ|SEL_WRITE */
    unsigned host_events : 2; /* the host's own interest, apart from the script's */
    unsigned paused : 2;      /* script events withheld from the backend (backpressure) */
    unsigned armed : 2;       /* the mask the backend currently watches */
    unsigned posted : 1;      /* sel_post'ed: in the list for the next batch */
} sel_key;

typedef struct selector selector;

/* Creates a selector on the named backend ("epoll", "poll", "select"; "sim" for tests), or
 * on the best available when name is NULL. Returns NULL with a message in err on failure,
 * and errno saying why (EMFILE when fds ran out, EINVAL for an unknown backend). */
selector *sel_new(const char *backend_name, char *err, size_t errlen);
void sel_free(selector *sel);
const char *sel_backend_name(const selector *sel);
/* 1 if events carry SEL_HANGUP / SEL_PEER_CLOSED when a peer is gone; 0 for select(2). */
int sel_flags_ends(const selector *sel);
/* 1 if name is a backend sel_new knows ("sim" included, though never listed). */
int sel_backend_known(const char *name);

/* The backends compiled into this build, best first, NULL-terminated. */
const char *const *sel_backend_names(void);

/* Script registrations. Each returns 0, or a negative errno with sel_error() telling why:
 * -EEXIST registered twice, -EINVAL events outside READ|WRITE or fd < 0,
 * -ENOENT not registered, -ERANGE fd beyond what the backend can watch,
 * or the backend's own failure (-EBADF for a closed fd, -ENOMEM, ...). */
int sel_register(selector *sel, int fd, int events);
int sel_modify(selector *sel, int fd, int events);
int sel_unregister(selector *sel, int fd);

/* The host's own interest in fd (0 removes it), kept apart from the script's events,
 * with host_data, its owner, for the host's dispatch. */
int sel_set_host_events(selector *sel, int fd, int host_events, void *host_data);
/* The host_data of fd's host interest, or NULL when the host has none in fd. */
void *sel_host_data(const selector *sel, int fd);
/* Makes the next sel_select report fd readable to its registration whether or not the
 * kernel has anything: for input a layer above the kernel holds (TLS records already
 * read and decrypted), which no kernel readiness will announce. Once: the next batch
 * takes it, and not while the script's READ is paused. 0 or -ENOMEM. */
int sel_post(selector *sel, int fd);

/* Withholds some of the script's events from the backend without changing them. */
int sel_set_paused(selector *sel, int fd, int paused);

/* The slot for fd if the script registered it, else NULL. Valid until the next change. */
const sel_key *sel_get(const selector *sel, int fd);
/* The slot for fd if it is in use at all (script or host), else NULL. */
const sel_key *sel_slot(const selector *sel, int fd);
/* Largest fd the backend can watch plus one, or 0 for no limit (select: FD_SETSIZE). */
int sel_fd_limit(const selector *sel);
/* Number of script registrations. */
size_t sel_count(const selector *sel);
/* Number of slots the host has its own interest in. */
size_t sel_host_count(const selector *sel);
/* Highest fd ever given a slot plus one: iterate 0..sel_capacity() with sel_get. */
int sel_capacity(const selector *sel);

/* Waits up to timeout_ms (-1 forever, 0 poll) and returns the number of ready fds, kept
 * in a batch read by sel_fired_at; EINTR is retried with the remaining time. Error and
 * hang-up are reported as READ|WRITE, then masked by what the slot watches.
 * Returns a negative errno on failure. */
int sel_select(selector *sel, int timeout_ms);
const sel_fired *sel_fired_at(const selector *sel, int i);
/* The part of a fired entry still deliverable: 0 when the slot was released or reused
 * since the batch was taken, else the fired mask within the slot's current interest. */
int sel_deliverable(const selector *sel, const sel_fired *fired);
/* The same, given the fd's slot (sel_slot's result, NULL included), for a caller that
 * looks at the slot too. */
static inline int sel_deliverable_in(const sel_key *slot, const sel_fired *fired)
{
    if (!slot || slot->gen != fired->gen)
        return 0;
    return fired->mask & (slot->events | slot->host_events);
}

/* What the last failing call said, e.g. "fd 7 is already registered". */
const char *sel_error(const selector *sel);

/* The socket calls to make on the fds this selector watches: the kernel's, or the
 * backend's own world ("sim" for tests). Fixed for the selector's life. */
const net_io *sel_io(const selector *sel);

/* The backend's own state if sel runs on backend be, else NULL (how a backend's test
 * controls reach it). */
struct sel_backend;
void *sel_backend_state(const selector *sel, const struct sel_backend *be);

#endif
