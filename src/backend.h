/* backend.h: the operations every readiness backend provides (one small file each),
 * in the manner of Redis's ae_*.c. A backend only translates kernel readiness. */
#ifndef LUAHOST_BACKEND_H
#define LUAHOST_BACKEND_H

#include "net.h"
#include "selector.h"

/* I/O a backend may take over (only "sim" does): each returns what the net_* call it
 * replaces would. NULL members fall through to the real call. */
typedef struct sel_io {
    ssize_t (*send)(void *state, int fd, const void *data, size_t len);
    ssize_t (*recv)(void *state, int fd, void *data, size_t len);
    int (*accept)(void *state, int listen_fd, net_addr *peer);
    int (*peername)(void *state, int fd, net_addr *out);
} sel_io;

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
    const sel_io *io; /* NULL: the socket calls go to the kernel */
    /* 1 if poll flags a hang-up or the peer's shutdown (SEL_HANGUP, SEL_PEER_CLOSED);
     * select(2) cannot, so the host must learn the end from the script's own reads. */
    int flags_ends;
} sel_backend;

extern const sel_backend sel_backend_epoll;
extern const sel_backend sel_backend_poll;
extern const sel_backend sel_backend_select;
extern const sel_backend sel_backend_kqueue;
extern const sel_backend sel_backend_sim;

#endif
