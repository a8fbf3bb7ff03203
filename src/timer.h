/* timer.h: a min-heap of deadlines, and the monotonic clock they are measured on.
 * Timers are owned by the caller; the heap only orders them. */
#ifndef LUAHOST_TIMER_H
#define LUAHOST_TIMER_H

#include <stddef.h>
#include <stdint.h>

typedef struct timer {
    double deadline; /* on timer_now()'s clock, in seconds */
    double interval; /* > 0 for a repeating timer */
    uint64_t seq;    /* insertion order: equal deadlines fire first-in first-out */
    size_t index;    /* position in the heap, TIMER_IDLE while not scheduled */
    void *data;
} timer;

#define TIMER_IDLE ((size_t)-1)

typedef struct timer_heap {
    timer **items;
    size_t count;
    size_t cap;
    uint64_t next_seq;
} timer_heap;

/* Seconds on a monotonic clock. */
double timer_now(void);

/* A host's clock: timer_now(), or a virtual time that moves only when a test sets it. */
typedef struct timer_clock {
    int is_virtual;
    double virtual_now;
} timer_clock;

double timer_clock_now(const timer_clock *clock);

void theap_init(timer_heap *h);
void theap_free(timer_heap *h);
/* Schedules t (which must be idle); returns 0 or -ENOMEM. */
int theap_push(timer_heap *h, timer *t);
/* Unschedules t if it is scheduled; harmless otherwise. */
void theap_remove(timer_heap *h, timer *t);
/* The earliest timer, or NULL when none is scheduled. */
timer *theap_peek(const timer_heap *h);
/* Milliseconds until the earliest deadline from now_s, rounded up so a sub-millisecond
 * wait never turns into a busy loop; -1 when nothing is scheduled. */
int theap_timeout_ms(const timer_heap *h, double now_s);

#endif
