/* timer.c: the monotonic clock and the binary min-heap of timer.h, ordered by
 * (deadline, seq) so that timers due at the same moment fire in the order scheduled. */
#include "timer.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define THEAP_MIN_CAP ((size_t)16)
/* Deadlines near 1e9 s of uptime carry about 1e-4 ms of rounding, so a timer set exactly
 * n ms ahead can compute as a hair over n. Forgiving one microsecond keeps it at n ms
 * instead of n + 1; waking that early costs one more short wait, never a spin. */
#define THEAP_SLACK_MS 1e-3

/* Seconds on CLOCK_MONOTONIC. That clock cannot fail on the systems we build for, so
 * there is no error path; 0 is returned if it somehow does. */
double timer_now(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double timer_clock_now(const timer_clock *clock)
{
    return clock->is_virtual ? clock->virtual_now : timer_now();
}

void theap_init(timer_heap *h)
{
    h->items = NULL;
    h->count = 0;
    h->cap = 0;
    h->next_seq = 0;
}

/* Frees the array only; the timers belong to the caller, and are marked idle so that a
 * later theap_remove on them stays harmless. Leaves h ready for reuse. */
void theap_free(timer_heap *h)
{
    for (size_t i = 0; i < h->count; i++)
        h->items[i]->index = TIMER_IDLE;
    free(h->items);
    theap_init(h);
}

static int theap_less(const timer *a, const timer *b)
{
    if (a->deadline != b->deadline)
        return a->deadline < b->deadline;
    return a->seq < b->seq;
}

static void theap_place(timer_heap *h, size_t i, timer *t)
{
    h->items[i] = t;
    t->index = i;
}

static void theap_sift_up(timer_heap *h, size_t i)
{
    timer *t = h->items[i];

    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!theap_less(t, h->items[parent]))
            break;
        theap_place(h, i, h->items[parent]);
        i = parent;
    }
    theap_place(h, i, t);
}

static void theap_sift_down(timer_heap *h, size_t i)
{
    timer *t = h->items[i];

    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->count)
            break;
        if (child + 1 < h->count && theap_less(h->items[child + 1], h->items[child]))
            child++;
        if (!theap_less(h->items[child], t))
            break;
        theap_place(h, i, h->items[child]);
        i = child;
    }
    theap_place(h, i, t);
}

/* True when t sits in this heap. Checking the slot rather than trusting index alone
 * keeps a never-initialised or foreign timer from being mistaken for one of ours. */
static int theap_holds(const timer_heap *h, const timer *t)
{
    return t->index < h->count && h->items[t->index] == t;
}

/* Schedules t. Returns 0; -ENOMEM if the array cannot grow; -EINVAL if t is already in
 * this heap (pushing it twice would corrupt the order). h is unchanged on error. */
int theap_push(timer_heap *h, timer *t)
{
    if (theap_holds(h, t))
        return -EINVAL;
    if (h->count == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : THEAP_MIN_CAP;
        timer **items;
        if (h->cap > SIZE_MAX / 2 / sizeof *items)
            return -ENOMEM;
        items = realloc(h->items, cap * sizeof *items);
        if (items == NULL)
            return -ENOMEM;
        h->items = items;
        h->cap = cap;
    }
    t->seq = h->next_seq++;
    theap_place(h, h->count++, t);
    theap_sift_up(h, t->index);
    return 0;
}

/* Unschedules t from any position by moving the last timer into its slot and sifting
 * that one whichever way it needs to go. A timer not in this heap is left alone. */
void theap_remove(timer_heap *h, timer *t)
{
    size_t i;
    timer *last;

    if (!theap_holds(h, t))
        return;
    i = t->index;
    last = h->items[--h->count];
    t->index = TIMER_IDLE;
    if (last == t)
        return;
    theap_place(h, i, last);
    if (i > 0 && theap_less(last, h->items[(i - 1) / 2]))
        theap_sift_up(h, i);
    else
        theap_sift_down(h, i);
}

timer *theap_peek(const timer_heap *h)
{
    return h->count ? h->items[0] : NULL;
}

/* Milliseconds from now_s to the earliest deadline: -1 when empty, 0 once it has passed
 * (or is NaN), else rounded up to at least 1 and clamped to INT_MAX. */
int theap_timeout_ms(const timer_heap *h, double now_s)
{
    double ms;
    int whole;

    if (h->count == 0)
        return -1;
    ms = (h->items[0]->deadline - now_s) * 1000.0;
    if (!(ms > 0.0))
        return 0;
    if (ms >= (double)INT_MAX)
        return INT_MAX;
    ms -= THEAP_SLACK_MS;
    whole = (int)ms; /* truncates; ms < INT_MAX so whole + 1 cannot overflow */
    if ((double)whole < ms)
        whole++;
    return whole > 0 ? whole : 1;
}
