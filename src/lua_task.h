/* lua_task.h: luahost.task's fast paths in C (luahost._task_io): the resumer in a
 * waiting stream's key, and a stream's receiveany and send. */
#ifndef LUAHOST_LUA_TASK_H
#define LUAHOST_LUA_TASK_H

#include "budget.h"

/* Puts _task_io into the module table at index module; host is the host userdata's
 * index, whose budget each resume counts against. */
void lhtask_open(lua_State *L, int module, int host, lh_budget *budget);

#endif
