/* buffer.c: the pending-output byte queue of buffer.h; storage exists only while bytes
 * are queued, and is reused by compaction before it is ever grown. */
#include "buffer.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Small enough that many idle-ish connections stay cheap, large enough that a typical
 * reply needs one allocation. */
#define BUF_MIN_CAP ((size_t)4096)
/* Objects larger than this make pointer differences undefined, and glibc refuses them. */
#define BUF_MAX_CAP ((size_t)PTRDIFF_MAX)

void buf_init(buffer *b)
{
    b->data = NULL;
    b->start = 0;
    b->end = 0;
    b->cap = 0;
}

void buf_free(buffer *b)
{
    free(b->data);
    buf_init(b);
}

size_t buf_len(const buffer *b)
{
    return b->end - b->start;
}

/* Returns the unsent bytes and their count (len may be NULL). An empty buffer yields a
 * static empty string rather than NULL, so callers may hand it to memcpy or write(2). */
const char *buf_peek(const buffer *b, size_t *len)
{
    if (len)
        *len = b->end - b->start;
    if (b->data == NULL)
        return "";
    return b->data + b->start;
}

/* Drops n bytes from the front; n beyond buf_len is clamped rather than trusted, since a
 * corrupt start would be far worse than a short drop. Frees the storage once empty. */
void buf_consume(buffer *b, size_t n)
{
    if (n >= b->end - b->start) {
        buf_free(b);
        return;
    }
    b->start += n;
}

/* Moves the live bytes into a new block of at least need bytes, grown by doubling.
 * Returns 0, or -ENOMEM with the buffer untouched. need must be <= BUF_MAX_CAP. */
static int buf_grow(buffer *b, size_t need)
{
    size_t cap = b->cap ? b->cap : BUF_MIN_CAP;
    size_t live = b->end - b->start;
    char *data;

    while (cap < need)
        cap = cap > BUF_MAX_CAP / 2 ? BUF_MAX_CAP : cap * 2;
    /* A fresh block rather than realloc: only the live bytes are copied, never the
     * already-sent prefix, and failure leaves the old block as it was. */
    data = malloc(cap);
    if (data == NULL)
        return -ENOMEM;
    if (live)
        memcpy(data, b->data + b->start, live);
    free(b->data);
    b->data = data;
    b->start = 0;
    b->end = live;
    b->cap = cap;
    return 0;
}

/* Appends len bytes from src, which must not point into b's own storage. Returns 0, or
 * -ENOMEM (also for sizes whose arithmetic would overflow) leaving b unchanged. */
int buf_append(buffer *b, const void *src, size_t len)
{
    size_t live = b->end - b->start, need;

    if (len == 0)
        return 0;
    if (len > BUF_MAX_CAP - live)
        return -ENOMEM;
    need = live + len;
    if (len > b->cap - b->end) {
        /* Compact only when the sent prefix is at least as large as what must move:
         * that pays for the memmove, and stops a nearly full buffer from being
         * shuffled on every small append. Otherwise double, which also compacts. */
        if (need <= b->cap && (b->start >= live || b->cap == BUF_MAX_CAP)) {
            memmove(b->data, b->data + b->start, live);
            b->start = 0;
            b->end = live;
        } else {
            int err = buf_grow(b, need > b->cap ? need : b->cap + 1);
            if (err)
                return err;
        }
    }
    memcpy(b->data + b->end, src, len);
    b->end += len;
    return 0;
}
