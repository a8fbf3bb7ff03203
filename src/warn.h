/* warn.h: Lua's warnings (warn() in scripts, errors in __gc finalizers) as log lines, with
 * the control messages "@on" and "@off" as Lua's own handler has them. */
#ifndef LUAHOST_WARN_H
#define LUAHOST_WARN_H

#include <lua.h>
#include <stddef.h>

#include "log.h"

/* Characters of one warning kept; the rest of a longer one is cut. */
#define LH_WARN_MAX 1024

typedef struct lh_warnings {
    lh_logger *log;
    int off;     /* warn("@off") was the last control message */
    int pending; /* pieces of a message so far (lua_warning's tocont) */
    size_t len;
    char text[LH_WARN_MAX];
} lh_warnings;

/* Makes w the warning function of L, logging at level warn through log; warnings are on
 * until a script sends "@off". w must outlive L. */
void lh_warnings_install(lua_State *L, lh_warnings *w, lh_logger *log);

#endif
