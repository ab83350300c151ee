/* The libcurl handle userdata behind each client, and what every easy
 * handle of the core shares (options, failure codes, redirect results),
 * so core.multi (multi.c) sends exactly what handle:call sends. */
#ifndef B24_HTTP_H
#define B24_HTTP_H

#include <stddef.h>

#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#include "answer.h"

#define B24_HTTP_MT "bitrix24.http"

/* A client's options, as core.http(opts) reads them. The strings point
 * into values left on the Lua stack by b24_http_read_opts. */
typedef struct {
    long timeout_ms, connect_ms;
    const char *ua, *ca_file, *ca_path, *proxy;
    int verify;
    size_t max;   /* max_response in bytes */
} b24_easy_opts;

/* Reads the options table, argument 1 (none or nil: all defaults);
 * raises on a bad option. Leaves values on the stack (the strings must
 * stay reachable); the table stays at index 1. */
void b24_http_read_opts(lua_State *L, b24_easy_opts *o);

/* The request headers of every POST (JSON, no "Expect: 100-continue");
 * NULL when out of memory. */
struct curl_slist *b24_http_headers(void);

/* Applies the options to an easy handle (not the error buffer and the
 * write callback, which point into the caller's own structure). */
CURLcode b24_http_apply_opts(CURL *curl, const b24_easy_opts *o);

/* Seconds -> libcurl's milliseconds; a positive timeout never becomes 0,
 * which libcurl reads as "no timeout at all". */
long b24_ms(double s);

/* The optional timeout argument i of one request (seconds in
 * (0, 86400]): the shorter of it and the handle's own timeout_ms. Raises
 * naming the argument. */
long b24_http_call_timeout(lua_State *L, int i, long handle_ms);

/* Pushes (nil, failure) for a failed transfer (RESPONSE_TOO_LARGE when
 * the answer stopped at max_response); returns 2. */
int b24_http_push_failure(lua_State *L, CURLcode rc, const b24_answer *a,
                          const char *errbuf);

/* Pushes (nil, failure) with code PORTAL_MOVED, the status and the
 * location (when there is one) for a 3xx answer; returns 2. */
int b24_http_push_redirect(lua_State *L, CURL *curl, long status);

/* Registers a handle type into the module table below the cjson decode
 * function on the top of the stack: the metatable mt with the metamethods
 * meta, the methods index as its __index, and module (the constructor)
 * in the module table; each gets the decode function as upvalue 1, which
 * is popped. */
void b24_register_handle(lua_State *L, const char *mt, const luaL_Reg *meta,
                         const luaL_Reg *index, const luaL_Reg *module);

/* Registers core.http and the handle's metatable into the module table
 * below the cjson decode function on the top of the stack; pops it. */
void b24_http_register(lua_State *L);

#endif
