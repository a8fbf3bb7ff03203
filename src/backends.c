/* backends.c: the readiness backends of this build, by name: those a server may run on,
 * best first, and those only a test asks for by name ("sim"), never listed nor chosen
 * by default. */
#include <stdio.h>
#include <string.h>

#include "backend.h"

static const sel_backend *const listed[] = {&sel_backend_epoll, &sel_backend_poll,
                                            &sel_backend_select, NULL};
static const sel_backend *const for_tests[] = {&sel_backend_sim, NULL};

/* The names of listed, in its order. */
static const char *const listed_names[] = {"epoll", "poll", "select", NULL};

const char *const *sel_backend_names(void)
{
    return listed_names;
}

void sel_backend_names_list(char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; listed_names[i] && used < len; i++) {
        int n = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", listed_names[i]);
        used += n > 0 ? (size_t)n : 0;
    }
}

static const sel_backend *find_in(const sel_backend *const *list, const char *name)
{
    for (; *list; list++)
        if (strcmp((*list)->name, name) == 0)
            return *list;
    return NULL;
}

const sel_backend *sel_find_backend(const char *name)
{
    if (!name)
        return listed[0];
    const sel_backend *be = find_in(listed, name);
    return be ? be : find_in(for_tests, name);
}

int sel_backend_known(const char *name)
{
    return name && sel_find_backend(name) != NULL;
}
