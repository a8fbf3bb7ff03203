/* blocks.h: the Lua state's allocator when no --max-memory is set: small blocks are kept
 * on a free list per size class, up to a bound, instead of going back to malloc. */
#ifndef LUAHOST_BLOCKS_H
#define LUAHOST_BLOCKS_H

#include <stddef.h>

/* Blocks of up to BLOCKS_MAX bytes, in classes of the sizes glibc's malloc hands out
 * (16 * c + 8 usable bytes), so that rounding a request up to its class costs no more
 * memory than malloc itself would. A 64-byte message makes an 89-byte string: 104. */
#define BLOCKS_MAX     136
#define BLOCKS_CLASSES ((BLOCKS_MAX + 7) / 16 + 1) /* class c holds 16c + 8 bytes */
/* A freed block is kept unless its class holds BLOCKS_KEEP free ones and has more than
 * BLOCKS_CAP blocks in all. A block is made only when its class has none free, so a class
 * never holds more blocks than it once had in use together: a young generation's
 * collection frees up to that many at once, and its next cycle makes as many again.
 * Under 1.3 MiB kept in all. (None under AddressSanitizer, so that it sees every block
 * freed.) */
#define BLOCKS_KEEP 256
#define BLOCKS_CAP  2048

typedef struct blocks {
    void *free[BLOCKS_CLASSES]; /* each free block holds the next one's address */
    unsigned kept[BLOCKS_CLASSES];
    unsigned made[BLOCKS_CLASSES]; /* blocks of each class in all, in use or kept */
} blocks;

/* A lua_Alloc (ud: a zeroed blocks). A block of up to BLOCKS_MAX bytes is malloc'd at
 * its class's full size, so any block freed into a class fits every request of it. */
void *blocks_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* Frees the kept blocks (after lua_close). */
void blocks_release(blocks *b);

#endif
