/* blocks.c: free lists per size class for a Lua state's small blocks. The collector frees
 * a server's strings by the thousand per cycle, which overflows malloc's per-thread
 * cache: malloc and free then cost ~180 instructions per string, a list ~20. */
#include "blocks.h"

#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define KEEP 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEEP 0
#endif
#endif
#ifndef KEEP
#define KEEP BLOCKS_KEEP
#endif
static const unsigned blocks_keep = KEEP;
static const unsigned blocks_cap = KEEP ? BLOCKS_CAP : 0;

static size_t class_of(size_t size)
{
    return (size + 7) / 16;
}

static size_t class_size(size_t c)
{
    return 16 * c + 8;
}

static void *take(blocks *b, size_t size)
{
    size_t c = class_of(size);
    void *block = b->free[c];
    if (!block) {
        block = malloc(class_size(c));
        b->made[c] += block != NULL;
        return block;
    }
    memcpy(&b->free[c], block, sizeof(void *));
    b->kept[c]--;
    return block;
}

static void give(blocks *b, void *block, size_t size)
{
    size_t c = class_of(size);
    if (b->kept[c] >= blocks_keep && b->made[c] > blocks_cap) {
        free(block);
        b->made[c]--;
        return;
    }
    memcpy(block, &b->free[c], sizeof(void *));
    b->free[c] = block;
    b->kept[c]++;
}

/* A block that changes class moves, so that the class it is freed into is the one it
 * was made for. */
static void *move(blocks *b, void *ptr, size_t osize, size_t nsize)
{
    void *moved = nsize <= BLOCKS_MAX ? take(b, nsize) : malloc(nsize);
    if (!moved)
        return NULL;
    memcpy(moved, ptr, osize < nsize ? osize : nsize);
    if (osize <= BLOCKS_MAX)
        give(b, ptr, osize);
    else
        free(ptr);
    return moved;
}

void *blocks_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    blocks *b = (blocks *)ud;
    if (!ptr) /* osize is then the kind of object Lua makes */
        return nsize == 0 ? NULL : nsize <= BLOCKS_MAX ? take(b, nsize) : malloc(nsize);
    if (nsize == 0) {
        if (osize <= BLOCKS_MAX)
            give(b, ptr, osize);
        else
            free(ptr);
        return NULL;
    }
    if (osize > BLOCKS_MAX && nsize > BLOCKS_MAX)
        return realloc(ptr, nsize);
    if (osize <= BLOCKS_MAX && nsize <= BLOCKS_MAX && class_of(osize) == class_of(nsize))
        return ptr;
    return move(b, ptr, osize, nsize);
}

void blocks_release(blocks *b)
{
    for (size_t c = 0; c < BLOCKS_CLASSES; c++) {
        while (b->free[c]) {
            void *block = b->free[c];
            memcpy(&b->free[c], block, sizeof(void *));
            free(block);
        }
        b->made[c] -= b->kept[c];
        b->kept[c] = 0;
    }
}
