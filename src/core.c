/* luaopen_bitrix24_core: registration only. */
#include <pthread.h>

#include <curl/curl.h>

#include "compat.h"
#include "envelope.h"
#include "http.h"
#include "json.h"
#include "multi.h"
#include "query.h"
#include "system.h"
#include "version.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

/* curl_global_init is not thread-safe and must run once per process,
 * even when several Lua states (nginx workers' threads, a host
 * application) load this module. */
static void init_curl(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static const luaL_Reg codecs[] = {
    {"envelope", b24_envelope},
    {"json_decode", b24_json_decode},
    {"json_encode", b24_json_encode},
    {"query", b24_query},
    {NULL, NULL}
};

int luaopen_bitrix24_core(lua_State *L)
{
    pthread_once(&curl_once, init_curl);
    if (curl_init_rc != CURLE_OK)
        return luaL_error(L, "curl_global_init failed: %s",
                          curl_easy_strerror(curl_init_rc));

    lua_newtable(L);
    b24_json_push_decoder(L);
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2);
    b24_setfuncs(L, codecs, 1);
    lua_pop(L, 1);
    /* Both registrations consume a decode function: a copy goes below
     * the module table for the second one. */
    lua_pushvalue(L, -1);
    lua_insert(L, -3);
    b24_http_register(L);
    lua_insert(L, -2);
    b24_multi_register(L);
    b24_system_register(L);
    lua_pushstring(L, curl_version());
    lua_setfield(L, -2, "curl_version");
    lua_pushliteral(L, B24_VERSION);
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
