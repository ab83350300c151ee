/* Growable byte buffers owned by a Lua userdata, so a Lua error raised in
 * the middle of building a string (a bad value, out of memory) frees them
 * at the next collection instead of leaking. */
#ifndef B24_BUFFER_H
#define B24_BUFFER_H

#include <stddef.h>
#include <lua.h>

typedef struct {
    char *p;      /* always NUL-terminated once anything was added */
    size_t len, cap;
} b24_buf;

/* Pushes a userdata holding n empty buffers ("", NUL-terminated) and
 * returns them: buffer i is the i-th element. */
b24_buf *b24_bufs_new(lua_State *L, int n);

/* Frees the n buffers now (the userdata's __gc then has nothing to do). */
void b24_bufs_free(b24_buf *b, int n);

/* Appends without raising: 0 when out of memory (b is unchanged then).
 * For libcurl's callbacks, where a raise would longjmp over its frames. */
int b24_buf_append(b24_buf *b, const char *s, size_t n);

/* Appends; raises "out of memory" on failure. */
void b24_buf_add(lua_State *L, b24_buf *b, const char *s, size_t n);

/* Cuts back to len bytes (len <= b->len). */
void b24_buf_truncate(b24_buf *b, size_t len);

#endif
