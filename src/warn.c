/* warn.c: Lua's warning function, logging each whole message as one line. A finalizer
 * that raises is reported by Lua 5.4 only as a warning ("error in __gc (...)"); without
 * this its error would vanish. */
#include "warn.h"

#include <string.h>

/* A message made of one piece starting with '@' is a control message, as in lauxlib. */
static void control(lh_warnings *w, const char *msg)
{
    if (strcmp(msg, "@off") == 0)
        w->off = 1;
    else if (strcmp(msg, "@on") == 0)
        w->off = 0;
}

static void on_warning(void *ud, const char *msg, int tocont)
{
    lh_warnings *w = (lh_warnings *)ud;
    if (!w->pending && !tocont && msg[0] == '@') {
        control(w, msg);
        return;
    }
    size_t n = strlen(msg), room = sizeof w->text - 1 - w->len;
    memcpy(w->text + w->len, msg, n < room ? n : room);
    w->len += n < room ? n : room;
    w->pending = tocont;
    if (tocont)
        return;
    w->text[w->len] = '\0';
    if (!w->off)
        lh_log(w->log, LH_WARN, "warning: %s", w->text);
    w->len = 0;
}

void lh_warnings_install(lua_State *L, lh_warnings *w, lh_logger *log)
{
    memset(w, 0, sizeof *w);
    w->log = log;
    lua_setwarnf(L, on_warning, w);
}
