/* stall.h: --max-callback-seconds: a watchdog for a callback stuck where the instruction
 * budget cannot reach it (one long C call, a blocking call), which ends the process so
 * that a supervisor starts it again. One per process: the executable's host. */
#ifndef LUAHOST_STALL_H
#define LUAHOST_STALL_H

#include "budget.h"

/* The exit status of a process the stall watchdog ended (EX_SOFTWARE, sysexits.h). */
#define LH_STALL_EXIT_STATUS 70

/* Starts the watchdog over b: when one callback (or main chunk) has run for seconds of
 * wall-clock time, it writes one line on stderr naming it (where it is defined, the fd
 * it was called for) and ends the process with LH_STALL_EXIT_STATUS. It checks on
 * SIGALRM, a quarter of the limit apart, so the end comes after the limit and before
 * 1.25 times it (plus the time the kernel takes to deliver the signal). 0 or -errno. */
int stall_start(lh_budget *b, lua_State *L, long seconds);
/* Stops it if it watches b. */
void stall_stop(lh_budget *b);

#endif
