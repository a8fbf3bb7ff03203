/* test_watch.c: proves --watch's file watch: a write to the script, or the script
 * replaced by a rename (as editors do), makes the selector report the inotify fd and a
 * reload due once the burst has settled; changes to other files in the directory do
 * not, nor does a script made anew until its writer closes it. */
#include "watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "timer.h"

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* Runs the selector for up to ms and reads the watch when it is reported. */
static int poll_watch(selector *sel, watch *w, int ms)
{
    int n = sel_select(sel, ms), seen = 0;
    for (int i = 0; i < n; i++)
        if (sel_fired_at(sel, i)->fd == w->conn.fd) {
            watch_read(w);
            seen = 1;
        }
    return seen;
}

/* Waits (up to two seconds) for a reload to come due. */
static int wait_due(selector *sel, watch *w)
{
    for (int i = 0; i < 200; i++) {
        if (watch_due(w))
            return 1;
        poll_watch(sel, w, 10);
    }
    return 0;
}

int main(void)
{
    char dir[256], script[300], other[300], moved[300], err[128];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/luahost-watch-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(script, sizeof script, "%s/script.lua", dir);
    snprintf(other, sizeof other, "%s/other.lua", dir);
    snprintf(moved, sizeof moved, "%s/script.lua.new", dir);
    write_file(script, "-- v1\n");
    selector *sel = sel_new("poll", err, sizeof err);
    watch w;
    watch_init(&w);
    CHECK(watch_timeout_ms(&w) == -1);
    CHECK(watch_start(&w, sel, script) == 0);
    CHECK(w.conn.kind == CONN_WATCH && strcmp(w.name, "script.lua") == 0);

    write_file(other, "-- not the script\n");
    CHECK(!wait_due(sel, &w));

    write_file(script, "-- v2\n");
    CHECK(wait_due(sel, &w));
    CHECK(!watch_due(&w)); /* once */

    write_file(moved, "-- v3\n");
    CHECK(rename(moved, script) == 0);
    CHECK(wait_due(sel, &w));

    /* Made anew (deleted first, as some editors do) and still being written: not due
     * until it is closed, however long the writer takes. */
    CHECK(unlink(script) == 0);
    FILE *f = fopen(script, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("-- half", f);
        fflush(f);
        CHECK(!wait_due(sel, &w));
        fputs(" written\n", f);
        fclose(f);
        CHECK(wait_due(sel, &w));
    }

    watch_close(&w, sel);
    CHECK(w.conn.fd == -1 && w.name == NULL && sel_host_count(sel) == 0);
    sel_free(sel);
    unlink(script);
    unlink(other);
    rmdir(dir);
    if (failures) {
        printf("test_watch: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_watch: %lu checks passed\n", checks);
    return 0;
}
