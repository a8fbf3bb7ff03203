/* fdpass.h: the messages between the --workers master and its workers, over a
 * SOCK_SEQPACKET socketpair (one message a record, never split or merged), with a file
 * descriptor passed alongside (SCM_RIGHTS) where one is handed over. No Lua here. */
#ifndef LUAHOST_FDPASS_H
#define LUAHOST_FDPASS_H

#include <stdint.h>

#include "net.h"

enum fdpass_type {
    FDPASS_LISTEN = 1, /* worker -> master: a listener for addr, please */
    FDPASS_REPLY,      /* master -> worker: value 0 and the fd, or value an errno */
    FDPASS_PING,       /* master -> worker: are you there? (value: a sequence number) */
    FDPASS_PONG,       /* worker -> master: yes (value: the ping's) */
};

typedef struct fdpass_msg {
    uint32_t type;
    int32_t value; /* LISTEN: the backlog; REPLY: 0 or an errno; PING, PONG: a sequence */
    uint32_t nth;  /* LISTEN: the worker's how-manieth request for this address (0 first) */
    net_addr addr; /* LISTEN: the address asked for, as the script gave it */
} fdpass_msg;

/* A socketpair for the protocol, both ends close-on-exec: 0 or -errno. */
int fdpass_pair(int fds[2]);
/* Sends m on sock, with fd (unless -1) passed along. Retries EINTR; never raises
 * SIGPIPE. 0, or -errno (-EAGAIN when sock is non-blocking and full). */
int fdpass_send(int sock, const fdpass_msg *m, int fd);
/* Receives one message into m and the fd passed with it into *fd (-1 if none; it is
 * close-on-exec). 1, 0 at end of stream (the peer is gone), or -errno: -EAGAIN when
 * nothing is waiting on a non-blocking sock, -EPROTO for a message of the wrong size or
 * type, or an empty one with an fd (any fd it carried is closed). */
int fdpass_recv(int sock, fdpass_msg *m, int *fd);

#endif
