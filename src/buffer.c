/* Growable byte buffers owned by a Lua userdata (see buffer.h). */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "buffer.h"

#define BUFS_MT "bitrix24.buffers"

typedef struct {
    int n;
    b24_buf b[1];
} bufs;

void b24_bufs_free(b24_buf *b, int n)
{
    int i;
    for (i = 0; i < n; i++) {
        free(b[i].p);
        b[i].p = NULL;
        b[i].len = b[i].cap = 0;
    }
}

static int bufs_gc(lua_State *L)
{
    bufs *u = lua_touserdata(L, 1);
    b24_bufs_free(u->b, u->n);
    return 0;
}

b24_buf *b24_bufs_new(lua_State *L, int n)
{
    int i;
    bufs *u = lua_newuserdata(L, sizeof(bufs) + (size_t)(n - 1) * sizeof(b24_buf));
    memset(u, 0, sizeof(bufs) + (size_t)(n - 1) * sizeof(b24_buf));
    u->n = n;
    if (luaL_newmetatable(L, BUFS_MT)) {
        lua_pushcfunction(L, bufs_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    for (i = 0; i < n; i++)
        b24_buf_add(L, &u->b[i], "", 0);
    return u->b;
}

int b24_buf_append(b24_buf *b, const char *s, size_t n)
{
    if (n + 1 > b->cap - b->len || !b->p) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap - b->len < n + 1) {
            if (cap > (size_t)-1 / 2)
                return 0;
            cap *= 2;
        }
        p = realloc(b->p, cap);
        if (!p)
            return 0;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 1;
}

void b24_buf_add(lua_State *L, b24_buf *b, const char *s, size_t n)
{
    if (!b24_buf_append(b, s, n))
        luaL_error(L, "out of memory");
}

void b24_buf_truncate(b24_buf *b, size_t len)
{
    b->len = len;
    if (b->p)
        b->p[len] = '\0';
}
