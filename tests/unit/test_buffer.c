/* test_buffer.c: proves the output queue keeps bytes in order against a reference copy,
 * holds no memory while empty, stays bounded under a steady stream, and refuses sizes
 * that would overflow without losing what it holds. */
#include "buffer.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Under AddressSanitizer a huge malloc aborts by default; the overflow test needs it to
 * fail the way the C library's would. Unused without the sanitizer. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

/* xorshift64*: deterministic, so a failure reproduces exactly. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static size_t rng_below(size_t n)
{
    return n ? (size_t)(rng_next() % n) : 0;
}

static void fill_random(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)rng_next();
}

/* The representation invariants; an empty buffer must be exactly the init state. */
static void check_invariants(const buffer *b)
{
    CHECK(b->start <= b->end);
    CHECK(b->end <= b->cap);
    CHECK((b->data == NULL) == (b->cap == 0));
    if (buf_len(b) == 0)
        CHECK(b->data == NULL && b->cap == 0 && b->start == 0 && b->end == 0);
}

/* The capacity the buffer picks for its first small append. */
static size_t min_capacity(void)
{
    buffer b;
    size_t cap;

    buf_init(&b);
    buf_append(&b, "x", 1);
    cap = b.cap;
    buf_free(&b);
    return cap;
}

static void test_empty(void)
{
    buffer b;
    size_t len = 99;
    const char *p;

    buf_init(&b);
    check_invariants(&b);
    CHECK(buf_len(&b) == 0);
    p = buf_peek(&b, &len);
    CHECK(p != NULL && len == 0);
    CHECK(buf_append(&b, NULL, 0) == 0);
    CHECK(buf_append(&b, "abc", 0) == 0);
    CHECK(b.data == NULL && b.cap == 0);
    buf_consume(&b, 0);
    check_invariants(&b);
    buf_free(&b);
    buf_free(&b);
    check_invariants(&b);
}

static void test_basic(void)
{
    buffer b;
    size_t len;
    const char *p;

    buf_init(&b);
    CHECK(buf_append(&b, "hello, ", 7) == 0);
    CHECK(buf_append(&b, "world", 5) == 0);
    p = buf_peek(&b, &len);
    CHECK(len == 12 && memcmp(p, "hello, world", 12) == 0);
    buf_consume(&b, 7);
    p = buf_peek(&b, &len);
    CHECK(len == 5 && memcmp(p, "world", 5) == 0);
    CHECK(buf_peek(&b, NULL) == p);
    check_invariants(&b);
    buf_consume(&b, 5);
    check_invariants(&b);
    CHECK(buf_append(&b, "again", 5) == 0);
    buf_consume(&b, 1000); /* beyond the length: clamped, and frees */
    check_invariants(&b);
    CHECK(buf_append(&b, "x", 1) == 0);
    buf_free(&b);
    check_invariants(&b);
}

static void test_large_append(void)
{
    enum { N = 100000 };
    static unsigned char src[N];
    buffer b;
    size_t len;
    const char *p;

    fill_random(src, N);
    buf_init(&b);
    CHECK(buf_append(&b, src, N) == 0);
    CHECK(b.cap >= N);
    CHECK(buf_append(&b, src, N) == 0);
    p = buf_peek(&b, &len);
    CHECK(len == 2 * N && memcmp(p, src, N) == 0 && memcmp(p + N, src, N) == 0);
    buf_free(&b);
}

/* When the sent prefix outweighs the live bytes, the space is reused, not grown. */
static void test_compaction(void)
{
    size_t min = min_capacity();
    unsigned char *src = malloc(min);
    buffer b;
    size_t len;
    const char *p, *block;

    CHECK(src != NULL);
    if (src == NULL)
        return;
    fill_random(src, min);
    buf_init(&b);
    CHECK(buf_append(&b, src, min) == 0);
    CHECK(b.cap == min);
    buf_consume(&b, min - 10);
    block = b.data;
    CHECK(buf_append(&b, src, min - 20) == 0);
    CHECK(b.data == block && b.cap == min && b.start == 0);
    p = buf_peek(&b, &len);
    CHECK(len == min - 10 && memcmp(p, src + min - 10, 10) == 0);
    CHECK(memcmp(p + 10, src, min - 20) == 0);
    buf_free(&b);
    free(src);
}

/* A nearly full buffer fed and drained in small steps must not move its whole
 * contents on every append: the copying has to be paid for by the bytes sent. */
static void test_no_thrash(void)
{
    size_t min = min_capacity(), resets = 0;
    unsigned char *src = malloc(min);
    buffer b;

    CHECK(src != NULL);
    if (src == NULL)
        return;
    fill_random(src, min);
    buf_init(&b);
    CHECK(buf_append(&b, src, min) == 0);
    for (int i = 0; i < 1000; i++) {
        buf_consume(&b, 60);
        CHECK(buf_append(&b, src, 60) == 0);
        if (b.start == 0)
            resets++;
    }
    CHECK(resets <= 1000 / 10);
    CHECK(b.cap <= 2 * min);
    buf_free(&b);
    free(src);
}

/* Sizes whose arithmetic would overflow, or that no allocator could satisfy, fail
 * cleanly and leave the contents alone. src is never read for them, so a short one is
 * passed on purpose. */
static void test_overflow(void)
{
    static const size_t sizes[] = {SIZE_MAX, SIZE_MAX - 2, SIZE_MAX / 2 + 1,
                                   (size_t)PTRDIFF_MAX - 2};
    char tiny[1] = {0};
    buffer b, saved;
    size_t len;
    const char *p;

    buf_init(&b);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        CHECK(buf_append(&b, tiny, sizes[i]) == -ENOMEM);
        CHECK(b.data == NULL && b.cap == 0);
    }
    CHECK(buf_append(&b, "keep", 4) == 0);
    saved = b;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        CHECK(buf_append(&b, tiny, sizes[i]) == -ENOMEM);
        CHECK(memcmp(&b, &saved, sizeof b) == 0);
    }
    /* Exactly one past what fits, and exactly the wrap-around of live + len. */
    CHECK(buf_append(&b, tiny, (size_t)PTRDIFF_MAX - 3) == -ENOMEM);
    CHECK(buf_append(&b, tiny, SIZE_MAX - 3) == -ENOMEM);
    /* Within the limit but far beyond memory: the allocator's own failure. */
    CHECK(buf_append(&b, tiny, (size_t)PTRDIFF_MAX / 2) == -ENOMEM);
    CHECK(memcmp(&b, &saved, sizeof b) == 0);
    p = buf_peek(&b, &len);
    CHECK(len == 4 && memcmp(p, "keep", 4) == 0);
    buf_free(&b);
}

/* A size skewed towards small writes, with the occasional large one. */
static size_t random_size(void)
{
    switch (rng_below(8)) {
    case 0:
        return 0;
    case 1:
        return rng_below(65536);
    case 2:
        return rng_below(8192);
    default:
        return rng_below(600);
    }
}

enum { REF_CAP = 1 << 20 };

/* A plain array copy of what the buffer should hold, live bytes at the front. */
static unsigned char ref[REF_CAP];
static size_t ref_len;
static unsigned char chunk[65536];

static void random_append(buffer *b)
{
    size_t n = random_size();

    if (ref_len + n > REF_CAP)
        n = REF_CAP - ref_len;
    fill_random(chunk, n);
    CHECK(buf_append(b, chunk, n) == 0);
    memcpy(ref + ref_len, chunk, n);
    ref_len += n;
}

/* Drops n bytes from both. Every byte is compared once, as it leaves: that proves
 * order and content in full without re-reading the whole queue on every step. */
static void consume_checked(buffer *b, size_t n)
{
    size_t len;
    const char *p = buf_peek(b, &len);

    if (n > ref_len)
        n = ref_len;
    CHECK(len == ref_len);
    if (len == ref_len && memcmp(p, ref, n) != 0)
        CHECK(!"consumed bytes differ from the reference");
    buf_consume(b, n);
    memmove(ref, ref + n, ref_len - n);
    ref_len -= n;
}

static void test_random_against_reference(void)
{
    buffer b;
    unsigned long frees = 0;

    buf_init(&b);
    ref_len = 0;
    for (int op = 0; op < 100000; op++) {
        /* Lean towards consuming once the queue is long, so it keeps emptying. */
        if (rng_below(ref_len > 200000 ? 4 : 2) == 0)
            random_append(&b);
        else
            consume_checked(&b, rng_below(4) == 0 ? ref_len : random_size());
        check_invariants(&b);
        CHECK(buf_len(&b) == ref_len);
        if (ref_len == 0)
            frees++;
    }
    CHECK(frees > 1000); /* the free-on-empty path was really exercised */
    consume_checked(&b, ref_len);
    check_invariants(&b);
}

/* A writer and a reader running at the same pace: capacity must track the live
 * length, not the total ever sent. */
static void test_steady_stream(void)
{
    size_t min = min_capacity(), max_live = 0, max_cap = 0;
    unsigned long long total = 0;
    unsigned char data[1500];
    buffer b;

    fill_random(data, sizeof data);
    buf_init(&b);
    CHECK(buf_append(&b, data, 1) == 0); /* never empty, so never freed */
    for (int op = 0; op < 200000; op++) {
        size_t n = 1 + rng_below(sizeof data);
        CHECK(buf_append(&b, data, n) == 0);
        total += n;
        if (buf_len(&b) > max_live)
            max_live = buf_len(&b);
        if (b.cap > max_cap)
            max_cap = b.cap;
        if (b.cap > 4 * max_live + min)
            CHECK(!"capacity outgrew the live length");
        if (buf_len(&b) > 20000)
            buf_consume(&b, buf_len(&b) - 1 - rng_below(20000));
    }
    CHECK(total > 1000ull * max_cap);
    CHECK(max_cap <= 4 * max_live + min);
    buf_free(&b);
}

int main(void)
{
    test_empty();
    test_basic();
    test_large_append();
    test_compaction();
    test_no_thrash();
    test_overflow();
    test_random_against_reference();
    test_steady_stream();
    if (failures) {
        printf("test_buffer: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_buffer: %lu checks passed\n", checks);
    return 0;
}
