/* lua_selector.h: the luahost.selector and luahost.key types, as Python's selectors:
 * register, modify, unregister, get_key, get_map, select (an iterator) and close. A
 * registration is a key, whatever its data: fileobj and data as user values, fd,
 * events and the script load that made it; get_key returns that same key until modify
 * or unregister replaces it. */
#ifndef LUAHOST_LUA_SELECTOR_H
#define LUAHOST_LUA_SELECTOR_H

#include "budget.h"
#include "conn.h"
#include "lhaux.h"
#include "lua_socket.h"
#include "selector.h"

#define LH_SELECTOR "luahost.selector"
#define LH_KEY      "luahost.key"

typedef struct lh_selector lh_selector;

/* A host's selectors. */
typedef struct lh_selectors {
    lh_selector *main; /* the host's own (luahost.selector); NULL once closed */
    lh_selector *all;  /* every live selector, so a closing socket leaves them all */
    lh_journal *journal;
    lh_anchor *anchor; /* each selector userdata holds the host */
    lh_budget *budget; /* a main chunk's waits in select() restart its count */
    /* The host's own interest in an fd fired (conn is the slot's host_data: output to
     * flush, a signal, ...): the upper layer handles it. */
    void (*host_ready)(void *ud, lua_State *L, conn *c);
    void *host_ready_ud;
} lh_selectors;

struct lh_selector {
    selector *core;
    lh_selectors *ctx;
    int keys_ref;  /* table: fd -> the registration's key */
    int cursor;    /* next entry of the batch select() is iterating */
    int batch;     /* entries in that batch */
    int busy;      /* inside select() or dispatch: a nested select would clobber the batch */
    int owns_core; /* 0 for the host's own: the host frees it, after what flushes through it */
    lh_selector *next;
};

/* A key's userdata; its user values are 1: fileobj, 2: data. Keys never change: modify
 * makes a new one. */
typedef struct lh_key {
    int fd;
    int events;
    int generation; /* the script load that registered or modified it */
} lh_key;

void lhsel_init(lh_selectors *ctx, lh_journal *journal, lh_anchor *anchor, lh_budget *budget);
/* Makes the selector and key types (once per Lua state) and puts new_selector into the
 * module table; host is the host userdata's index. Sockets closing leave the host's
 * selectors through a hook set in sockets. */
void lhsel_open(lua_State *L, int module, int host, lh_selectors *ctx, lh_sockets *sockets);
/* Pushes a new selector on backend (NULL: the best available); raises on failure. */
lh_selector *lhsel_push_new(lua_State *L, lh_selectors *ctx, const char *backend);
/* Pushes the host's own selector over core, which stays the host's to free (output is
 * flushed through it until the host is done); it becomes ctx->main. */
lh_selector *lhsel_push_main(lua_State *L, lh_selectors *ctx, selector *core);

/* Pushes the selector's table fd -> key. */
void lhsel_push_keys(lua_State *L, const lh_selector *s);
/* The key at index (a userdata made here), or NULL. */
lh_key *lhsel_test_key(lua_State *L, int index);

/* Unregisters fd and pushes the key it had; returns 0, or the negative errno with
 * nothing pushed. Allocates nothing. */
int lhsel_unregister_fd(lua_State *L, lh_selector *s, int fd);
/* Puts back the key at index as fd's registration (it was fd's; whatever fd has now is
 * unregistered first), for a failed reload's rollback: needs no memory, since the fd's
 * slot in the keys table was only cleared. 0, or -1 when the core refuses (sel_error
 * says why). A nil at index only unregisters. */
int lhsel_restore(lua_State *L, lh_selector *s, int fd, int index);

/* Closes every selector (the host is closing). */
void lhsel_release_all(lua_State *L, lh_selectors *ctx);

/* The part of a fired event the script may be told of, once the host has taken its own
 * part (flushing output, the signal pipe, a lingering close), which may unregister or
 * replace the script's registration: 0 when nothing is left for the script. Inline:
 * dispatch calls it for every event. */
static inline int lhsel_script_mask(lua_State *L, const lh_selector *s, const sel_fired *f)
{
    const sel_key *slot = sel_slot(s->core, f->fd);
    int mask = sel_deliverable_in(slot, f);
    if (mask && (mask & slot->host_events)) {
        /* While the host reads the fd itself (a TLS handshake), what made it readable was
         * the host's to read: input left for the script is posted for the next round. */
        int host_read = slot->host_events & SEL_READ;
        s->ctx->host_ready(s->ctx->host_ready_ud, L, (conn *)sel_host_data(s->core, f->fd));
        slot = sel_slot(s->core, f->fd);
        mask = sel_deliverable_in(slot, f) & ~host_read;
    }
    return mask & ((slot && slot->registered) ? slot->events : 0);
}

#endif
