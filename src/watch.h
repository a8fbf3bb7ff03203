/* watch.h: --watch: inotify on the script's directory (editors often replace a file
 * rather than write it), telling when the script changed. No Lua here. */
#ifndef LUAHOST_WATCH_H
#define LUAHOST_WATCH_H

#include "conn.h"
#include "selector.h"

/* After a change, how long to wait for more before reloading: an editor's burst of
 * writes becomes one reload. */
#define WATCH_SETTLE_SECONDS 0.1

typedef struct watch {
    conn conn;  /* the inotify fd, kind CONN_WATCH: the selector's host_data for it */
    char *name; /* the script's file name within its directory */
    double due; /* when to reload (timer_now's clock), 0 when no change is pending */
} watch;

void watch_init(watch *w);
/* Watches path's directory and has sel report the inotify fd to the host. 0 or -errno. */
int watch_start(watch *w, selector *sel, const char *path);
/* Reads what inotify reported; a change to the script sets w->due. */
void watch_read(watch *w);
/* 1 once, when a change has settled and the script should be loaded anew. */
int watch_due(watch *w);
/* Milliseconds until a pending change settles, or -1. */
int watch_timeout_ms(const watch *w);
/* Stops watching (sel, if not NULL, forgets the fd first) and frees what w holds. */
void watch_close(watch *w, selector *sel);

#endif
