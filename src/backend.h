/* backend.h: the operations every readiness backend provides (one small file each),
 * in the manner of Redis's ae_*.c. A backend only translates kernel readiness. */
#ifndef LUAHOST_BACKEND_H
#define LUAHOST_BACKEND_H

#include "net.h"
#include "selector.h"

typedef struct sel_backend {
    const char *name;
    /* Returns the backend's state, or NULL with errno set. */
    void *(*create)(void);
    void (*destroy)(void *state);
    /* Largest fd this backend can watch plus one, or 0 for no limit. */
    int fd_limit;
    /* Changes what fd is watched for from old_mask to new_mask (either may be 0:
     * 0 -> m adds, m -> 0 removes). Returns 0 or a negative errno. */
    int (*set)(void *state, int fd, int old_mask, int new_mask);
    /* Waits up to timeout_ms and fills out[] with at most max entries (fd and mask;
     * error/hang-up as SEL_READ|SEL_WRITE). Returns the count or a negative errno,
     * -EINTR included: the selector retries. */
    int (*poll)(void *state, int timeout_ms, sel_fired *out, int max);
    /* The socket calls for fds this backend watches, or NULL for the kernel's: a backend
     * that simulates its own world ("sim") answers them itself. */
    const net_io *(*io)(void *state);
    /* 1 if poll flags a hang-up or the peer's shutdown (SEL_HANGUP, SEL_PEER_CLOSED);
     * select(2) cannot, so the host must learn the end from the script's own reads. */
    int flags_ends;
} sel_backend;

/* The backend called name (NULL: the best one), or NULL when this build has none. */
const sel_backend *sel_find_backend(const char *name);
/* The names of the backends a server may use, as "epoll, poll, select". */
void sel_backend_names_list(char *buf, size_t len);

extern const sel_backend sel_backend_epoll;
extern const sel_backend sel_backend_poll;
extern const sel_backend sel_backend_select;
extern const sel_backend sel_backend_sim;

#endif
