/* sim.h: the "sim" selector backend's controls, for tests: in-memory connections
 * (socketpairs) handed to a listener, and faults the test decides on. No Lua here. */
#ifndef LUAHOST_SIM_H
#define LUAHOST_SIM_H

#include <stddef.h>

/* A selector on the sim backend has one as its backend state: sel_backend_state(sel,
 * &sel_backend_sim) (backend.h). */
typedef struct sim_state sim_state;

/* Makes an in-memory connection to listen_fd. Returns the test's end (non-blocking,
 * close-on-exec) or a negative errno; the host's end waits until the host accepts it,
 * and then appears to come from 127.0.0.1 on a port of its own. */
int sim_connect(sim_state *st, int listen_fd);

/* The next count accepts on listen_fd fail with err (EMFILE, ENFILE, ...). */
int sim_fail_accepts(sim_state *st, int listen_fd, int err, int count);

/* The host's sends on the sim connection fd belongs to (either end may be named) send
 * at most max_write bytes each (0: no cap), and the next would_block sends fail with
 * EAGAIN. -ENOTCONN if fd is not a sim connection. */
int sim_shape_sends(sim_state *st, int fd, size_t max_write, int would_block);

/* The host's end of peer_fd's connection fails every recv and send with ECONNRESET
 * from now on; the caller then closes peer_fd. */
int sim_reset(sim_state *st, int peer_fd);

/* Connections waiting on listen_fd to be accepted. */
int sim_waiting(sim_state *st, int listen_fd);

#endif
