/* lua_redis.c: luahost.resp: RESP through hiredis. format turns a command (a list of
 * strings) into its bytes with redisFormatCommandArgv; a reader takes the bytes a
 * socket received (redisReaderFeed) and gives back whole replies as Lua values. The
 * socket, reconnects and callbacks are lua/luahost/redis.lua's. */
#include "lua_redis.h"

#include <hiredis.h>
#include <lauxlib.h>

#include "lhaux.h"

#define LH_RESP_BOX "luahost.resp_box"

typedef struct lh_resp_reader {
    redisReader *reader; /* NULL once closed */
    redisReply *reply;   /* a reply being converted: freed if the conversion raised */
    size_t partial;      /* bytes fed since the last whole reply: the one coming */
} lh_resp_reader;

/* format({"SET", "k", "v"}): the command's bytes. Numbers are sent as their decimal
 * text, as redis-cli does; anything else is a misuse. */
static int l_format(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 1);
    luaL_argcheck(L, n >= 1 && n <= 1024 * 1024, 1, "a command of 1 to 1048576 words expected");
    /* The words stay on the stack; then the two arrays, the box with its metatable, the
     * result, and what an error message takes. */
    luaL_checkstack(L, (int)n + 8, "command too long");
    const char **argv = lua_newuserdatauv(L, (size_t)n * sizeof *argv, 0);
    size_t *lens = lua_newuserdatauv(L, (size_t)n * sizeof *lens, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        int t = lua_geti(L, 1, i);
        if (t != LUA_TSTRING && t != LUA_TNUMBER)
            return luaL_argerror(
                L, 1,
                lua_pushfstring(L, "word %d is a %s, not a string", (int)i, luaL_typename(L, -1)));
        argv[i - 1] = lua_tolstring(L, -1, &lens[i - 1]); /* stays on the stack */
    }
    char **box = lua_newuserdatauv(L, sizeof *box, 0); /* frees out if the push raises */
    *box = NULL;
    luaL_setmetatable(L, LH_RESP_BOX);
    int len = redisFormatCommandArgv(box, (int)n, argv, lens);
    if (len < 0)
        return luaL_error(L, "not enough memory");
    lua_pushlstring(L, *box, (size_t)len);
    redisFreeCommand(*box);
    *box = NULL;
    return 1;
}

/* __gc of format's box: the command hiredis made, if pushing it ran out of memory. */
static int box_gc(lua_State *L)
{
    char **box = luaL_checkudata(L, 1, LH_RESP_BOX);
    redisFreeCommand(*box);
    *box = NULL;
    return 0;
}

static lh_resp_reader *reader_check(lua_State *L)
{
    lh_resp_reader *r = luaL_checkudata(L, 1, LH_RESP_READER);
    if (!r->reader)
        luaL_argerror(L, 1, "reader is closed");
    return r;
}

/* luahost.resp.reader(): a new reader. The userdata comes first, so a memory error
 * leaves no hiredis reader behind. */
static int l_reader(lua_State *L)
{
    lh_resp_reader *r = lua_newuserdatauv(L, sizeof *r, 0);
    r->reader = NULL;
    r->reply = NULL;
    r->partial = 0;
    luaL_setmetatable(L, LH_RESP_READER);
    if (!(r->reader = redisReaderCreate()))
        return luaL_error(L, "not enough memory");
    return 1;
}

/* rd:feed(bytes): appends what the socket received. */
static int reader_feed(lua_State *L)
{
    lh_resp_reader *r = reader_check(L);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (redisReaderFeed(r->reader, s, len) != REDIS_OK)
        return luaL_error(L, "not enough memory");
    r->partial += len;
    return 0;
}

/* rd:partial(): the bytes fed since the last whole reply came out, all of them part of
 * the reply still coming, which hiredis holds in memory however long it grows: the
 * client bounds it with this. */
static int reader_partial(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)reader_check(L)->partial);
    return 1;
}

/* Pushes a reply inside an array as Redis's own Lua scripting does: a nil as false
 * (so an array keeps its length), an error as {err = message}, a status as its text. */
static void push_reply(lua_State *L, const redisReply *reply)
{
    luaL_checkstack(L, 3, "reply nested too deep");
    switch (reply->type) {
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)reply->integer);
        break;
    case REDIS_REPLY_NIL:
        lua_pushboolean(L, 0);
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, reply->str, reply->len);
        lua_setfield(L, -2, "err");
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)reply->elements, 0);
        for (size_t i = 0; i < reply->elements; i++) {
            push_reply(L, reply->element[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    default: /* string, status */
        lua_pushlstring(L, reply->str, reply->len);
    }
}

static void drop_reply(lh_resp_reader *r)
{
    if (r->reply) {
        freeReplyObject(r->reply);
        r->reply = NULL;
    }
}

/* rd:get(): false when no whole reply has come; true and the reply when one has (an
 * error reply: true, nil, message; a nil reply: true, nil); nil and a message when the
 * bytes are not RESP, after which the reader is of no more use. */
static int reader_get(lua_State *L)
{
    lh_resp_reader *r = reader_check(L);
    drop_reply(r); /* left by a conversion that raised */
    void *reply = NULL;
    if (redisReaderGetReply(r->reader, &reply) != REDIS_OK) {
        lua_pushnil(L);
        lua_pushfstring(L, "protocol error: %s", r->reader->errstr);
        return 2;
    }
    if (!reply) {
        lua_pushboolean(L, 0);
        return 1;
    }
    r->reply = reply;
    r->partial = r->reader->len - r->reader->pos; /* what follows this reply */
    lua_pushboolean(L, 1);
    int results = 2;
    if (r->reply->type == REDIS_REPLY_NIL) {
        lua_pushnil(L);
    } else if (r->reply->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        lua_pushlstring(L, r->reply->str, r->reply->len);
        results = 3;
    } else {
        push_reply(L, r->reply);
    }
    drop_reply(r);
    return results;
}

/* __gc and __close, and rd:close(): frees the hiredis reader once. */
static int reader_close(lua_State *L)
{
    lh_resp_reader *r = luaL_checkudata(L, 1, LH_RESP_READER);
    drop_reply(r);
    if (r->reader) {
        redisReaderFree(r->reader);
        r->reader = NULL;
    }
    return 0;
}

static const luaL_Reg reader_methods[] = {{"feed", reader_feed},
                                          {"get", reader_get},
                                          {"partial", reader_partial},
                                          {"close", reader_close},
                                          {NULL, NULL}};

static const luaL_Reg reader_metamethods[] = {
    {"__gc", reader_close}, {"__close", reader_close}, {NULL, NULL}};

static const luaL_Reg resp_functions[] = {{"format", l_format}, {"reader", l_reader}, {NULL, NULL}};

void lhresp_open(lua_State *L, int module)
{
    module = lua_absindex(L, module);
    if (luaL_newmetatable(L, LH_RESP_READER)) {
        luaL_setfuncs(L, reader_metamethods, 0);
        luaL_newlib(L, reader_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, LH_RESP_BOX)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, resp_functions);
    lua_setfield(L, module, "resp");
}
