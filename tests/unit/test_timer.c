/* test_timer.c: proves the timer heap yields deadlines in order (first-in first-out on
 * ties), removes from any position with every index kept true, rounds timeouts up
 * without ever returning 0 early, and that the clock never goes backwards. */
#include "timer.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "check.h"

/* xorshift64*: deterministic, so a failure reproduces exactly. */
static uint64_t rng_state = 0x2545f4914f6cdd1du;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static size_t rng_below(size_t n)
{
    return (size_t)(rng_next() % n);
}

static void timer_reset(timer *t, double deadline)
{
    memset(t, 0, sizeof *t);
    t->deadline = deadline;
    t->index = TIMER_IDLE;
}

static int fires_before(const timer *a, const timer *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

/* The heap property, and every scheduled timer's index naming its own slot. */
static int heap_valid(const timer_heap *h)
{
    if (h->count > h->cap || (h->count && h->items == NULL))
        return 0;
    for (size_t i = 0; i < h->count; i++) {
        if (h->items[i]->index != i)
            return 0;
        if (i > 0 && fires_before(h->items[i], h->items[(i - 1) / 2]))
            return 0;
    }
    return 1;
}

/* Removes and returns the earliest timer, the way the host does. */
static timer *pop(timer_heap *h)
{
    timer *t = theap_peek(h);

    if (t)
        theap_remove(h, t);
    return t;
}

static void test_clock(void)
{
    struct timespec pause = {0, 2000000};
    double first = timer_now(), prev = first, t0;

    CHECK(first > 0.0);
    for (int i = 0; i < 100000; i++) {
        double now = timer_now();
        if (now < prev)
            CHECK(!"timer_now went backwards");
        prev = now;
    }
    t0 = timer_now();
    nanosleep(&pause, NULL);
    CHECK(timer_now() - t0 >= 0.0019);
}

static void test_empty(void)
{
    timer_heap h;
    timer t;

    theap_init(&h);
    CHECK(theap_peek(&h) == NULL);
    CHECK(theap_timeout_ms(&h, 0.0) == -1);
    CHECK(theap_timeout_ms(&h, timer_now()) == -1);
    timer_reset(&t, 1.0);
    theap_remove(&h, &t);
    CHECK(t.index == TIMER_IDLE && h.count == 0);
    theap_free(&h);
    CHECK(h.items == NULL && h.count == 0);
}

enum { N_ORDER = 2000 };

static void test_ordering(void)
{
    static timer ts[N_ORDER];
    timer_heap h;
    timer *prev = NULL, *t;
    size_t popped = 0;
    int ok = 1;

    theap_init(&h);
    for (size_t i = 0; i < N_ORDER; i++) {
        /* Few distinct values, so ties are common and the seq order is exercised. */
        timer_reset(&ts[i], (double)rng_below(300) / 7.0);
        CHECK(theap_push(&h, &ts[i]) == 0);
        CHECK(ts[i].seq == i);
    }
    CHECK(heap_valid(&h));
    while ((t = pop(&h)) != NULL) {
        if (prev && !fires_before(prev, t))
            ok = 0;
        if (t->index != TIMER_IDLE)
            ok = 0;
        prev = t;
        popped++;
    }
    CHECK(ok);
    CHECK(popped == N_ORDER);
    theap_free(&h);
}

/* Equal deadlines fire in the order they were scheduled, with other deadlines mixed. */
static void test_fifo(void)
{
    timer same[50], other[50];
    timer_heap h;
    size_t next = 0;
    timer *t;

    theap_init(&h);
    for (size_t i = 0; i < 50; i++) {
        timer_reset(&same[i], 5.0);
        timer_reset(&other[i], i % 2 ? 1.0 + (double)i : 9.0 - (double)i / 100.0);
        CHECK(theap_push(&h, &other[i]) == 0);
        CHECK(theap_push(&h, &same[i]) == 0);
    }
    while ((t = pop(&h)) != NULL) {
        if (t >= same && t < same + 50) {
            CHECK(t == &same[next]);
            next++;
        }
    }
    CHECK(next == 50);
    theap_free(&h);
}

/* Schedules ts[i] at deadlines[i]. The deadlines given are already in heap order, so
 * each timer stays in the slot it was pushed to. */
static void build(timer_heap *h, timer *ts, const double *deadlines, size_t n)
{
    theap_init(h);
    for (size_t i = 0; i < n; i++) {
        timer_reset(&ts[i], deadlines[i]);
        CHECK(theap_push(h, &ts[i]) == 0 && ts[i].index == i);
    }
    CHECK(h->count == n && heap_valid(h));
}

/* Removal from the middle, where the last timer moved into the hole must travel up in
 * one case and down in the other, and from the root and the last slot. */
static void test_remove_positions(void)
{
    static const double up[] = {0, 10, 1, 11, 12, 2, 3};
    static const double down[] = {0, 10, 1, 11, 12, 2, 3, 13, 14, 15, 16, 17, 18};
    timer ts[13];
    timer_heap h;

    build(&h, ts, up, 7);
    theap_remove(&h, &ts[3]); /* ts[6] (3) lands under 10 and rises above it */
    CHECK(ts[3].index == TIMER_IDLE && h.count == 6 && heap_valid(&h));
    CHECK(h.items[1] == &ts[6] && h.items[3] == &ts[1]);
    theap_free(&h);

    build(&h, ts, down, 13);
    theap_remove(&h, &ts[1]); /* ts[12] (18) lands under 0 and sinks two levels */
    CHECK(ts[1].index == TIMER_IDLE && h.count == 12 && heap_valid(&h));
    CHECK(h.items[1] == &ts[3] && h.items[3] == &ts[7] && ts[12].index == 7);
    theap_remove(&h, h.items[11]); /* the last slot */
    CHECK(h.count == 11 && heap_valid(&h));
    theap_remove(&h, &ts[0]); /* the root */
    CHECK(ts[0].index == TIMER_IDLE && h.count == 10 && heap_valid(&h));
    CHECK(theap_peek(&h) == &ts[2]);
    theap_free(&h);
}

/* Removing what is not in the heap changes nothing, whatever its index says; pushing
 * what already is in it is refused. */
static void test_remove_strays(void)
{
    static const double d[] = {0, 1, 2, 3, 4};
    timer ts[5], stray, foreign;
    timer_heap h, h2;

    build(&h, ts, d, 5);
    theap_init(&h2);
    timer_reset(&foreign, 0.5);
    CHECK(theap_push(&h2, &foreign) == 0);
    CHECK(theap_push(&h, &ts[4]) == -EINVAL);
    theap_remove(&h, &ts[2]);
    theap_remove(&h, &ts[2]);        /* idle now */
    memset(&stray, 0, sizeof stray); /* index 0, as a zeroed timer has */
    theap_remove(&h, &stray);
    theap_remove(&h, &foreign); /* index 0, but of the other heap */
    CHECK(h.count == 4 && heap_valid(&h) && theap_peek(&h) == &ts[0]);
    CHECK(h2.count == 1 && foreign.index == 0);
    theap_free(&h);
    theap_free(&h2);
    CHECK(foreign.index == TIMER_IDLE);
}

/* A removed timer can be scheduled again, and then queues behind its equals. */
static void test_repush(void)
{
    timer a, b, c;
    timer_heap h;

    theap_init(&h);
    timer_reset(&a, 1.0);
    timer_reset(&b, 1.0);
    timer_reset(&c, 1.0);
    CHECK(theap_push(&h, &a) == 0 && theap_push(&h, &b) == 0 && theap_push(&h, &c) == 0);
    theap_remove(&h, &a);
    CHECK(theap_push(&h, &a) == 0);
    CHECK(a.seq == 3);
    CHECK(pop(&h) == &b && pop(&h) == &c && pop(&h) == &a && pop(&h) == NULL);
    theap_free(&h);
}

/* theap_free leaves the caller's timers idle and the heap reusable. */
static void test_free(void)
{
    timer ts[40];
    timer_heap h;

    theap_init(&h);
    for (size_t i = 0; i < 40; i++) {
        timer_reset(&ts[i], (double)i);
        CHECK(theap_push(&h, &ts[i]) == 0);
    }
    theap_free(&h);
    for (size_t i = 0; i < 40; i++)
        CHECK(ts[i].index == TIMER_IDLE);
    CHECK(h.items == NULL && h.count == 0 && h.cap == 0);
    CHECK(theap_push(&h, &ts[7]) == 0 && theap_peek(&h) == &ts[7]);
    theap_free(&h);
}

enum { POOL = 300 };

/* Checks the heap against the pool: every scheduled timer is in its slot and the count
 * matches, so nothing was lost or duplicated. */
static int pool_consistent(const timer_heap *h, const timer *pool)
{
    size_t scheduled = 0;

    for (size_t i = 0; i < POOL; i++) {
        if (pool[i].index == TIMER_IDLE)
            continue;
        if (pool[i].index >= h->count || h->items[pool[i].index] != &pool[i])
            return 0;
        scheduled++;
    }
    return scheduled == h->count && heap_valid(h);
}

/* The earliest scheduled timer in the pool, found the slow way. */
static const timer *pool_min(const timer *pool)
{
    const timer *min = NULL;

    for (size_t i = 0; i < POOL; i++)
        if (pool[i].index != TIMER_IDLE && (!min || fires_before(&pool[i], min)))
            min = &pool[i];
    return min;
}

static void random_step(timer_heap *h, timer *pool)
{
    timer *t = &pool[rng_below(POOL)];
    double deadline = (double)rng_below(1000) / 16.0;

    switch (rng_below(4)) {
    case 0: /* schedule, or reschedule if already scheduled */
        theap_remove(h, t);
        t->deadline = deadline;
        CHECK(theap_push(h, t) == 0);
        break;
    case 1: /* remove, scheduled or not */
        theap_remove(h, t);
        CHECK(t->index == TIMER_IDLE);
        break;
    case 2: /* fire the earliest */
        if (pool_min(pool) != theap_peek(h))
            CHECK(!"peek is not the earliest timer");
        pop(h);
        break;
    default: /* schedule an idle one */
        if (t->index == TIMER_IDLE) {
            t->deadline = deadline;
            CHECK(theap_push(h, t) == 0);
        }
        break;
    }
}

static void test_random(void)
{
    static timer pool[POOL];
    timer_heap h;
    unsigned long bad = 0;

    for (size_t i = 0; i < POOL; i++)
        timer_reset(&pool[i], 0.0);
    theap_init(&h);
    for (int op = 0; op < 10000; op++) {
        random_step(&h, pool);
        if (!pool_consistent(&h, pool))
            bad++;
    }
    CHECK(bad == 0);
    CHECK(h.count > 0); /* the mix keeps the heap populated */
    theap_free(&h);
}

static int timeout_for(double ahead_s, double now)
{
    timer_heap h;
    timer t;
    int ms;

    theap_init(&h);
    timer_reset(&t, now + ahead_s);
    CHECK(theap_push(&h, &t) == 0);
    ms = theap_timeout_ms(&h, now);
    theap_free(&h);
    return ms;
}

static void test_timeout(void)
{
    double nows[] = {0.0, 1000.0, 123456.789, timer_now()};

    for (size_t i = 0; i < sizeof nows / sizeof nows[0]; i++) {
        double now = nows[i];
        CHECK(timeout_for(0.0004, now) == 1);
        CHECK(timeout_for(1e-7, now) == 1); /* inside the slack: still never 0 */
        CHECK(timeout_for(0.0025, now) == 3);
        CHECK(timeout_for(0.001, now) == 1); /* exactly 1 ms is not 2 */
        CHECK(timeout_for(0.0011, now) == 2);
        CHECK(timeout_for(0.010, now) == 10);
        CHECK(timeout_for(1.5, now) == 1500);
        CHECK(timeout_for(0.0, now) == 0);
        CHECK(timeout_for(-1.0, now) == 0);
        CHECK(timeout_for(1e9, now) == INT_MAX);
        CHECK(timeout_for(INFINITY, now) == INT_MAX);
        CHECK(timeout_for(NAN, now) == 0);
    }
    CHECK(timeout_for(1e-300, 0.0) == 1);
}

int main(void)
{
    test_clock();
    test_empty();
    test_ordering();
    test_fifo();
    test_remove_positions();
    test_remove_strays();
    test_repush();
    test_free();
    test_random();
    test_timeout();
    if (failures) {
        printf("test_timer: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_timer: %lu checks passed\n", checks);
    return 0;
}
