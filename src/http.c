/* The HTTP handle: one libcurl easy handle per client, reused so calls
 * share a keep-alive connection.
 *
 * Nothing here raises while libcurl is running or while a buffer is only
 * reachable from a C local: arguments are checked before any state is
 * touched, and the response buffer belongs to the userdata, so a raise
 * afterwards (out of memory in lua_pushlstring) leaks nothing. */
#include <string.h>

#include <curl/curl.h>

#include "answer.h"
#include "compat.h"
#include "envelope.h"
#include "failure.h"
#include "http.h"
#include "system.h"
#include "version.h"

#define DEFAULT_MAX_RESPONSE (64 * 1024 * 1024)
#define MAX_RESPONSE_LIMIT (1024.0 * 1024 * 1024)

typedef struct {
    CURL *curl;
    struct curl_slist *headers;
    b24_answer answer;
    long timeout_ms;     /* the handle's own timeout (a call may pass a shorter one) */
    char errbuf[CURL_ERROR_SIZE];
} b24_http;

/* The one cleanup behind close, __gc and __close; safe to run twice. */
static void http_cleanup(b24_http *h)
{
    if (h->curl) {
        curl_easy_cleanup(h->curl);
        h->curl = NULL;
    }
    if (h->headers) {
        curl_slist_free_all(h->headers);
        h->headers = NULL;
    }
    b24_answer_free(&h->answer);
}

static b24_http *check_http(lua_State *L)
{
    b24_http *h = luaL_checkudata(L, 1, B24_HTTP_MT);
    if (!h->curl)
        luaL_argerror(L, 1, "the client is closed");
    return h;
}

static long opt_ms(lua_State *L, int t, const char *key, double dflt)
{
    double s;
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1))
        s = dflt;
    else if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) > 0)
             || lua_tonumber(L, -1) > B24_MAX_SECONDS)
        return luaL_error(L, "option '%s' must be a number of seconds in (0, %d]",
                          key, B24_MAX_SECONDS);
    else
        s = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return b24_ms(s);
}

long b24_ms(double s)
{
    /* libcurl reads 0 ms as "no timeout at all": a positive timeout
     * below half a millisecond must not round down to that. */
    if (s * 1000.0 < 1.0)
        return 1;
    return (long)(s * 1000.0 + 0.5);
}

long b24_http_call_timeout(lua_State *L, int i, long handle_ms)
{
    double s;
    long ms;

    if (lua_isnoneornil(L, i))
        return handle_ms;
    s = luaL_checknumber(L, i);
    luaL_argcheck(L, s > 0 && s <= B24_MAX_SECONDS, i,
                  "timeout must be a number of seconds in (0, 86400]");
    ms = b24_ms(s);
    return ms < handle_ms ? ms : handle_ms;
}

/* Leaves the string (or nil) on the stack so the pointer stays valid. */
static const char *opt_str(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1))
        return NULL;
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "option '%s' must be a string", key);
    return lua_tostring(L, -1);
}

/* Reads the options every easy handle of a client shares (see http.h).
 * Raises on a bad option before the caller allocates anything. */
void b24_http_read_opts(lua_State *L, b24_easy_opts *o)
{
    const int t = 1;
    double max;

    if (lua_isnoneornil(L, t)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, t, LUA_TTABLE);

    o->timeout_ms = opt_ms(L, t, "timeout", 60);
    o->connect_ms = opt_ms(L, t, "connect_timeout", 10);
    o->ua = opt_str(L, t, "user_agent");
    o->ca_file = opt_str(L, t, "ca_file");
    o->ca_path = opt_str(L, t, "ca_path");
    o->proxy = opt_str(L, t, "proxy");
    lua_getfield(L, t, "tls_verify");
    o->verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_getfield(L, t, "max_response");
    max = lua_isnil(L, -1) ? DEFAULT_MAX_RESPONSE : lua_tonumber(L, -1);
    /* A number, not a string that looks like one (as every other
     * option); whole, since 0.5 would become a limit of 0 bytes. */
    if ((!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TNUMBER)
        || !(max >= 1) || max > MAX_RESPONSE_LIMIT || (double)(size_t)max != max)
        luaL_error(L, "option 'max_response' must be a whole number of bytes in [1, 1 GiB]");
    o->max = (size_t)max;
}

/* The request headers of every POST; NULL when out of memory. */
struct curl_slist *b24_http_headers(void)
{
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *more;

    if (!headers)
        return NULL;
    more = curl_slist_append(headers, "Accept: application/json");
    /* curl would wait up to a second for "100 Continue" on large bodies. */
    if (more)
        more = curl_slist_append(headers, "Expect:");
    if (!more) {
        curl_slist_free_all(headers);
        return NULL;
    }
    return headers;
}

/* Applies the shared options to a fresh easy handle; the caller sets
 * the error buffer and where the body goes. */
CURLcode b24_http_apply_opts(CURL *curl, const b24_easy_opts *o)
{
    CURLcode rc = CURLE_OK;

#define SET(opt, val) if (rc == CURLE_OK) rc = curl_easy_setopt(curl, opt, val)
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_TIMEOUT_MS, o->timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, o->connect_ms);
    SET(CURLOPT_USERAGENT, o->ua ? o->ua : "bitrix24-lua/" B24_VERSION);
    SET(CURLOPT_ACCEPT_ENCODING, "");
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    /* One connection per client: a write's fresh connection (see perform)
     * replaces the idle one instead of joining it in the cache. */
    SET(CURLOPT_MAXCONNECTS, 1L);
    /* Redirects are policy (a moved portal must not get our secrets
     * replayed to another host), so the Lua layer sees every 3xx. */
    SET(CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SET(CURLOPT_SSL_VERIFYPEER, o->verify ? 1L : 0L);
    SET(CURLOPT_SSL_VERIFYHOST, o->verify ? 2L : 0L);
    if (o->ca_file)
        SET(CURLOPT_CAINFO, o->ca_file);
    if (o->ca_path)
        SET(CURLOPT_CAPATH, o->ca_path);
    if (o->proxy)
        SET(CURLOPT_PROXY, o->proxy);
#undef SET
    return rc;
}

/* core.http(opts) -> handle. Options are read before anything is
 * allocated, so a bad option raises with nothing to free. */
static int http_new(lua_State *L)
{
    b24_easy_opts o;
    b24_http *h;
    CURLcode rc = CURLE_OK;

    b24_http_read_opts(L, &o);

    h = lua_newuserdata(L, sizeof *h);
    memset(h, 0, sizeof *h);
    h->answer.max = o.max;
    h->timeout_ms = o.timeout_ms;
    luaL_getmetatable(L, B24_HTTP_MT);
    lua_setmetatable(L, -2);

    h->curl = curl_easy_init();
    if (!h->curl)
        return luaL_error(L, "curl_easy_init failed");
    h->headers = b24_http_headers();
    if (!h->headers)
        return luaL_error(L, "out of memory");

#define SET(opt, val) if (rc == CURLE_OK) rc = curl_easy_setopt(h->curl, opt, val)
    SET(CURLOPT_ERRORBUFFER, h->errbuf);
#undef SET
    if (rc == CURLE_OK)
        rc = b24_answer_attach(h->curl, &h->answer);
    if (rc == CURLE_OK)
        rc = b24_http_apply_opts(h->curl, &o);
    if (rc != CURLE_OK)
        return luaL_error(L, "curl option: %s", curl_easy_strerror(rc));
    return 1;
}

static const char *failure_code(CURLcode rc, int too_large)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return B24_E_TIMEOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
        return B24_E_TLS;
    case CURLE_WRITE_ERROR:
        return too_large ? B24_E_TOO_LARGE : B24_E_NETWORK;
    default:
        return B24_E_NETWORK;
    }
}

/* Pushes (nil, failure) for a transfer that failed. */
int b24_http_push_failure(lua_State *L, CURLcode rc, const b24_answer *a,
                          const char *errbuf)
{
    if (b24_answer_long_line(a, rc)) {
        lua_pushfstring(L, "reading the answer's headers: a header line longer than 16 KiB (%d bytes)",
                        B24_MAX_HEADER_LINE);
        return b24_failure_push(L, B24_E_NETWORK, lua_gettop(L), 0, 0, NULL);
    }
    if (a->too_large)
        lua_pushfstring(L, "the answer is larger than max_response (%d bytes)",
                        (int)a->max);
    else
        lua_pushstring(L, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    return b24_failure_push(L, failure_code(rc, a->too_large), lua_gettop(L), 0, 0, NULL);
}

/* Performs one request within timeout_ms; body == NULL means GET. On failure pushes
 * (nil, failure) and returns 0.
 *
 * is_write: the request is not safe to repeat. libcurl sends a request again,
 * on a new connection, when a reused keep-alive connection closes before
 * any byte of the answer ("Connection died, retrying a fresh connect" in
 * its Curl_retry_request); the server may have read and run it already.
 * It does so only for a reused connection, so a write goes on a fresh one
 * (CURLOPT_FRESH_CONNECT) and is sent at most once. That connection then
 * stays in the cache for the calls after it. */
static int perform(lua_State *L, b24_http *h, const char *url, const char *body,
                   size_t len, int is_write, long timeout_ms, long *status)
{
    CURLcode rc = curl_easy_setopt(h->curl, CURLOPT_URL, url);

    if (rc == CURLE_OK)
        rc = curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    b24_answer_start(&h->answer);
    h->errbuf[0] = '\0';
    if (rc == CURLE_OK && body) {
        rc = curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, h->headers);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE,
                                  (curl_off_t)len);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, body);
    } else if (rc == CURLE_OK) {
        rc = curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER,
                                  (struct curl_slist *)NULL);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(h->curl, CURLOPT_HTTPGET, 1L);
    }
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(h->curl, CURLOPT_FRESH_CONNECT, is_write ? 1L : 0L);
    if (rc == CURLE_OK)
        rc = curl_easy_perform(h->curl);
    if (rc == CURLE_OK)
        rc = curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, status);
    if (rc == CURLE_OK)
        return 1;

    b24_http_push_failure(L, rc, &h->answer, h->errbuf);
    return 0;
}

int b24_http_push_redirect(lua_State *L, CURL *curl, long status)
{
    char *location = NULL;
    if (curl_easy_getinfo(curl, CURLINFO_REDIRECT_URL, &location) != CURLE_OK)
        location = NULL;
    lua_pushfstring(L, "HTTP %d redirect", (int)status);
    return b24_failure_push(L, B24_E_MOVED, lua_gettop(L), status, 0, location);
}

/* handle:call(url, json_body [, timeout [, write]]) -> envelope, status
 *   | nil, failure (failure.h)
 * timeout: seconds for this call (the caller's deadline may leave less
 * than the handle's timeout); never more than the handle's timeout.
 * write: true when the request must not be sent twice (see perform).
 * The hot path: request and envelope decoding without a trip to Lua. */
#define CALL_WRITE_ARG 5
static int call_answer(lua_State *L, b24_http *h)
{
    size_t len;
    const char *url = luaL_checkstring(L, 2);
    const char *body = luaL_checklstring(L, 3, &len);
    int is_write = lua_toboolean(L, CALL_WRITE_ARG);
    long timeout_ms = b24_http_call_timeout(L, 4, h->timeout_ms), status = 0;

    if (!perform(L, h, url, body, len, is_write, timeout_ms, &status))
        return 2;
    if (status >= 300 && status < 400)
        return b24_http_push_redirect(L, h->curl, status);
    return b24_envelope_push(L, lua_upvalueindex(1), status, h->answer.body.p,
                             h->answer.body.len);
}

static int http_call(lua_State *L)
{
    b24_http *h = check_http(L);
    int n = call_answer(L, h);
    b24_answer_release(&h->answer);
    return n;
}

/* handle:request(url [, body]) -> status, body | nil, failure
 * For answers that are not REST envelopes (the OAuth token endpoint).
 * Always on a fresh connection: a token request that libcurl re-sent on
 * its own would present a refresh token the first one already rotated,
 * and the new tokens of the first would be lost. */
static int request_answer(lua_State *L, b24_http *h)
{
    size_t len = 0;
    const char *url = luaL_checkstring(L, 2);
    const char *body = luaL_optlstring(L, 3, NULL, &len);
    long status = 0;

    if (!perform(L, h, url, body, len, 1, h->timeout_ms, &status))
        return 2;
    lua_pushinteger(L, (lua_Integer)status);
    lua_pushlstring(L, h->answer.body.p ? h->answer.body.p : "", h->answer.body.len);
    return 2;
}

static int http_request(lua_State *L)
{
    b24_http *h = check_http(L);
    int n = request_answer(L, h);
    b24_answer_release(&h->answer);
    return n;
}

static int http_close(lua_State *L)
{
    http_cleanup(luaL_checkudata(L, 1, B24_HTTP_MT));
    return 0;
}

static int http_tostring(lua_State *L)
{
    b24_http *h = luaL_checkudata(L, 1, B24_HTTP_MT);
    lua_pushfstring(L, "bitrix24.http (%s)", h->curl ? "open" : "closed");
    return 1;
}

static const luaL_Reg methods[] = {
    {"call", http_call},
    {"request", http_request},
    {"close", http_close},
    {NULL, NULL}
};

static const luaL_Reg metamethods[] = {
    {"__gc", http_close},
    {"__close", http_close},
    {"__tostring", http_tostring},
    {NULL, NULL}
};

static const luaL_Reg functions[] = {
    {"http", http_new},
    {NULL, NULL}
};

void b24_register_handle(lua_State *L, const char *mt, const luaL_Reg *meta,
                         const luaL_Reg *index, const luaL_Reg *module)
{
    luaL_newmetatable(L, mt);
    lua_pushvalue(L, -2);
    b24_setfuncs(L, meta, 1);
    lua_newtable(L);
    lua_pushvalue(L, -3);
    b24_setfuncs(L, index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    b24_setfuncs(L, module, 1);
}

void b24_http_register(lua_State *L)
{
    b24_register_handle(L, B24_HTTP_MT, metamethods, methods, functions);
}
