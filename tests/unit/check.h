/* check.h: the unit tests' CHECK, which counts every evaluation and reports a failure with
 * its place but does not stop the run, so one bug shows all its symptoms at once. */
#ifndef LUAHOST_TEST_CHECK_H
#define LUAHOST_TEST_CHECK_H

#include <stdio.h>

static unsigned long checks, failures;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

#endif
