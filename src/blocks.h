/* blocks.h: the Lua state's allocator when no --max-memory is set: small blocks are kept
 * on a free list per size class, up to a bound, instead of going back to malloc. */
#ifndef LUAHOST_BLOCKS_H
#define LUAHOST_BLOCKS_H

#include <stddef.h>

/* Blocks of up to BLOCKS_MAX bytes, in classes BLOCKS_STEP bytes apart. A message's
 * string (a 64-byte message makes an 89-byte long string) falls in one. */
#define BLOCKS_STEP    16
#define BLOCKS_MAX     128
#define BLOCKS_CLASSES (BLOCKS_MAX / BLOCKS_STEP)
/* At most this many free blocks kept per class: 256 KiB in all at most (less under
 * AddressSanitizer, which keeps none, so that it sees every block freed). */
#define BLOCKS_KEEP 256

typedef struct blocks {
    void *free[BLOCKS_CLASSES]; /* each free block holds the next one's address */
    unsigned kept[BLOCKS_CLASSES];
} blocks;

/* A lua_Alloc (ud: a zeroed blocks). A block of up to BLOCKS_MAX bytes is malloc'd at
 * its class's full size, so any block freed into a class fits every request of it. */
void *blocks_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* Frees the kept blocks (after lua_close). */
void blocks_release(blocks *b);

#endif
