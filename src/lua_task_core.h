/* lua_task_core.h: a luahost.task stream's core: the state a message's path reads and
 * writes, in C fields, with the Lua values it points to held by its user values. task.lua
 * reaches the same state by integer keys (core[TC_BUF]), so there is one copy of it, and
 * a script that reaches a core can write only values of each field's type. */
#ifndef LUAHOST_LUA_TASK_CORE_H
#define LUAHOST_LUA_TASK_CORE_H

#include "lua_socket.h"

#define LH_TASK_CORE "luahost.task.core"

/* The keys task.lua reads and writes a core by. */
enum {
    TC_SOCK = 1, /* read only: the socket it was made for */
    TC_BUF,      /* what was read and not yet taken: a string */
    TC_READER,   /* the task waiting to read (accept, connect), or false */
    TC_DRAINER,  /* the task waiting in send for output to drain, or false */
    TC_DRAINED,  /* the last read left nothing: wait before reading */
    TC_EVENTS,   /* what its key is registered for, or false */
    TC_TIMEOUT,  /* seconds, or false */
    TC_DISCARDING,
    TC_HIGH, /* the high water of its output */
    TC_LAST = TC_HIGH,
};

/* Its user values. */
enum {
    TCU_SOCK = 1,
    TCU_BUF,
    TCU_TASK,   /* the reader, or the last one (task below) */
    TCU_THREAD, /* that task's coroutine (thread below) */
    TCU_DRAINER,
    TCU_COUNT = TCU_DRAINER,
};

typedef struct lh_task_core {
    lh_socket *sock;     /* the socket its user value holds: set once, when made */
    lua_State *thread;   /* the coroutine a user value holds: the reader's while waits */
    const void *task;    /* the task a user value holds: the reader, or the last one */
    size_t buffered;     /* the buffer's length */
    lua_Number timeout;  /* with has_timeout */
    lua_Integer high;    /* the high water */
    lua_Integer events;  /* 0: not registered */
    unsigned char waits; /* a reader waits: the task held */
    unsigned char timed; /* ... and may have a timer (the C wait sets none) */
    unsigned char has_timeout, drained, discarding;
} lh_task_core;

/* Makes the core metatable (once per Lua state) and leaves it on the stack. */
void lhtc_metatable(lua_State *L);
/* Pushes a new core for the socket at index sock (checked by the socket metatable at
 * index mt, raising if it is not one). */
lh_task_core *lhtc_push(lua_State *L, int sock, int mt);
/* Makes the task at index task (0: none), whose coroutine is at index thread (0: it has
 * none), the reader of c (at index core); timed: it may have a timer. */
void lhtc_set_reader(lua_State *L, lh_task_core *c, int core, int task, int thread, int timed);
/* Sets c's buffer (at index core) to the string on the stack's top, popping it. */
void lhtc_set_buffer(lua_State *L, lh_task_core *c, int core, size_t len);

#endif
