/* buffer.h: a growable byte queue for pending output; holds no memory while empty so
 * an idle connection costs nothing here. */
#ifndef LUAHOST_BUFFER_H
#define LUAHOST_BUFFER_H

#include <stddef.h>

typedef struct buffer {
    char *data;
    size_t start; /* first unsent byte */
    size_t end;   /* one past the last byte */
    size_t cap;
} buffer;

void buf_init(buffer *b);
void buf_free(buffer *b);
size_t buf_len(const buffer *b);
/* Appends len bytes; returns 0, or -ENOMEM leaving the buffer unchanged. */
int buf_append(buffer *b, const void *src, size_t len);
/* The unsent bytes, contiguous; *len gets their count. */
const char *buf_peek(const buffer *b, size_t *len);
/* Drops n bytes from the front (n <= buf_len); releases the storage once empty. */
void buf_consume(buffer *b, size_t n);

#endif
