/* test_blocks.c: proves the small-block allocator hands back blocks that hold what was
 * written to them through every resize across classes, reuses a freed block for a
 * request of its class, keeps no more blocks a class than it had in use at once (nor
 * BLOCKS_CAP), and frees them all. */
#include "blocks.h"

#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define LIVE 512

static uint64_t rng_state = 0x2545f4914f6cdd1du;

static size_t rng_below(size_t n)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (size_t)((rng_state * 0x2545f4914f6cdd1dull) % n);
}

/* Every byte of block i is (i + offset) mod 251: a block that moved or was handed to
 * two owners shows it. */
static void fill(unsigned char *p, size_t n, size_t i)
{
    for (size_t k = 0; k < n; k++)
        p[k] = (unsigned char)((i + k) % 251);
}

static int intact(const unsigned char *p, size_t n, size_t i)
{
    for (size_t k = 0; k < n; k++)
        if (p[k] != (unsigned char)((i + k) % 251))
            return 0;
    return 1;
}

/* Random allocations, resizes (within a class, across classes, to and from large) and
 * frees, as a Lua state makes them, each block's bytes checked at every step. */
static void test_random_use(void)
{
    blocks b = {0};
    unsigned char *live[LIVE] = {0};
    size_t size[LIVE] = {0};
    for (int step = 0; step < 200000; step++) {
        size_t i = rng_below(LIVE);
        size_t want = rng_below(4) ? 1 + rng_below(BLOCKS_MAX + 40) : 1 + rng_below(600);
        if (!live[i]) {
            live[i] = blocks_alloc(&b, NULL, 4 /* a kind of object, as Lua passes */, want);
            CHECK(live[i] != NULL);
            fill(live[i], want, i);
            size[i] = want;
            continue;
        }
        CHECK(intact(live[i], size[i], i));
        if (rng_below(3) == 0) {
            CHECK(blocks_alloc(&b, live[i], size[i], 0) == NULL);
            live[i] = NULL;
            continue;
        }
        live[i] = blocks_alloc(&b, live[i], size[i], want);
        CHECK(live[i] != NULL);
        CHECK(intact(live[i], size[i] < want ? size[i] : want, i));
        fill(live[i], want, i);
        size[i] = want;
    }
    for (size_t i = 0; i < LIVE; i++)
        if (live[i])
            blocks_alloc(&b, live[i], size[i], 0);
    for (size_t c = 0; c < BLOCKS_CLASSES; c++)
        CHECK(b.kept[c] <= BLOCKS_KEEP);
    blocks_release(&b);
    for (size_t c = 0; c < BLOCKS_CLASSES; c++)
        CHECK(b.kept[c] == 0 && b.free[c] == NULL);
}

/* A freed block serves the next request of its class (unless this build keeps none:
 * AddressSanitizer's), and a resize within a class keeps the block where it is. */
static void test_reuse(void)
{
    blocks b = {0};
    void *first = blocks_alloc(&b, NULL, 0, 89);
    blocks_alloc(&b, first, 89, 0);
    void *second = blocks_alloc(&b, NULL, 0, 92);
    CHECK(b.kept[(89 + 7) / 16] == 0);
    void *third = blocks_alloc(&b, NULL, 0, 89);
    blocks_alloc(&b, third, 89, 0);
    if (b.kept[(89 + 7) / 16] == 1) /* this build keeps blocks */
        CHECK(second == first);
    CHECK(blocks_alloc(&b, second, 92, 104) == second);
    blocks_alloc(&b, second, 104, 0);
    blocks_release(&b);
}

/* Frees n blocks of 64 bytes made together; returns how many of them are kept. */
static unsigned kept_of(blocks *b, void **many, size_t n)
{
    for (size_t i = 0; i < n; i++)
        many[i] = blocks_alloc(b, NULL, 0, 64);
    for (size_t i = 0; i < n; i++)
        blocks_alloc(b, many[i], 64, 0);
    return b->kept[(64 + 7) / 16];
}

/* Freeing many blocks of one class keeps all of them while the class has made no more
 * than BLOCKS_CAP (unless this build keeps none), and BLOCKS_CAP at most. */
static void test_bound(void)
{
    static void *many[2 * BLOCKS_CAP];
    blocks b = {0};
    unsigned kept = kept_of(&b, many, BLOCKS_KEEP + 100);
    CHECK(kept == BLOCKS_KEEP + 100 || kept == 0);
    CHECK(kept_of(&b, many, 2 * BLOCKS_CAP) <= BLOCKS_CAP);
    CHECK(b.made[(64 + 7) / 16] == b.kept[(64 + 7) / 16]);
    blocks_release(&b);
    CHECK(b.free[(64 + 7) / 16] == NULL);
}

/* A block costs what malloc would give for the same request: classes are malloc's own
 * sizes. (Not under AddressSanitizer, whose malloc sizes differ and where no block is
 * kept, so nothing is rounded that matters.) */
static void test_no_more_than_malloc(void)
{
    blocks b = {0};
    void *probe = blocks_alloc(&b, NULL, 0, 8);
    blocks_alloc(&b, probe, 8, 0);
    int keeps = b.kept[0] == 1;
    blocks_release(&b);
    if (!keeps)
        return;
    for (size_t n = 1; n <= BLOCKS_MAX; n++) {
        void *ours = blocks_alloc(&b, NULL, 0, n);
        void *theirs = malloc(n);
        CHECK(malloc_usable_size(ours) == malloc_usable_size(theirs));
        free(theirs);
        blocks_alloc(&b, ours, n, 0);
    }
    blocks_release(&b);
}

int main(void)
{
    test_no_more_than_malloc();
    test_random_use();
    test_reuse();
    test_bound();
    if (failures) {
        printf("test_blocks: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_blocks: %lu checks passed\n", checks);
    return 0;
}
