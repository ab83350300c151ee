/* The libcurl handle userdata behind each client. */
#ifndef B24_HTTP_H
#define B24_HTTP_H

#include <lua.h>

#define B24_HTTP_MT "bitrix24.http"

/* Registers core.http and the handle's metatable into the module table
 * below the cjson decode function on the top of the stack; pops it. */
void b24_http_register(lua_State *L);

#endif
