/* core.multi(opts): many requests in flight without threads. One libcurl
 * multi handle drives a small pool of easy handles; the multi handle's
 * connection cache keeps their connections alive between requests.
 *
 * It is a separate object from core.http's handle (the transport owns
 * both): handle:call stays the simple blocking path, and this file only
 * adds the queueing. Every easy handle is a copy of one template set up
 * with the same options and headers as handle:call (http.h), and answers
 * are read through the same buffer (answer.c: max_response counts header
 * bytes, large buffers are given back) and decoded by the same code, so
 * results are identical.
 *
 * The rules of http.c hold here too: nothing raises while libcurl runs,
 * arguments are checked before any state changes, and every buffer
 * belongs to the userdata, so a raise while pushing results (out of
 * memory) leaks nothing and leaves the pool consistent. */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <string.h>

#include <curl/curl.h>

#include "answer.h"
#include "compat.h"
#include "envelope.h"
#include "http.h"
#include "multi.h"
#include "system.h"

#define DEFAULT_PARALLEL 8
/* Bitrix24 admits bursts of 250 requests on its largest plans. */
#define MAX_PARALLEL 256

enum { SLOT_IDLE, SLOT_RUNNING, SLOT_DONE };

/* One easy handle of the pool and the answer it is receiving or holds. */
typedef struct {
    CURL *curl;           /* NULL until the pool grows to this slot */
    int state;
    lua_Integer ticket;
    unsigned long done_seq; /* order in which DONE slots are handed out */
    CURLcode rc;
    long status;
    b24_answer answer;
    char errbuf[CURL_ERROR_SIZE];
} slot;

typedef struct {
    CURLM *multi;
    CURL *tmpl;           /* never sent: the pool's easy handles copy it */
    struct curl_slist *headers;
    long timeout_ms;
    size_t max;
    int parallel, created, in_flight;
    lua_Integer next_ticket;
    unsigned long seq;
    slot slots[];         /* parallel of them, inside the userdata */
} b24_multi;

/* The one cleanup behind close, __gc and __close; safe to run twice and
 * with requests in flight (libcurl closes their half-read connections). */
static void multi_cleanup(b24_multi *m)
{
    int i;

    for (i = 0; i < m->created; i++) {
        slot *s = &m->slots[i];
        if (s->curl) {
            if (s->state == SLOT_RUNNING && m->multi)
                curl_multi_remove_handle(m->multi, s->curl);
            curl_easy_cleanup(s->curl);
            s->curl = NULL;
        }
        s->state = SLOT_IDLE;
        b24_answer_free(&s->answer);
    }
    m->created = m->in_flight = 0;
    if (m->multi) {
        curl_multi_cleanup(m->multi);
        m->multi = NULL;
    }
    if (m->tmpl) {
        curl_easy_cleanup(m->tmpl);
        m->tmpl = NULL;
    }
    if (m->headers) {
        curl_slist_free_all(m->headers);
        m->headers = NULL;
    }
}

static b24_multi *check_multi(lua_State *L)
{
    b24_multi *m = luaL_checkudata(L, 1, B24_MULTI_MT);
    if (!m->multi)
        luaL_argerror(L, 1, "the multi handle is closed");
    return m;
}

/* wait's seconds: in [0, B24_MAX_SECONDS] (0: just look), or raises. */
static double check_wait(lua_State *L, int i)
{
    double s = (double)luaL_checknumber(L, i);
    luaL_argcheck(L, s >= 0 && s <= B24_MAX_SECONDS, i, "seconds must be in [0, 86400]");
    return s;
}

/* core.multi(opts) -> multi. The options of core.http plus `parallel`
 * (default 8): how many requests may be in flight. Options are read
 * before anything is allocated. */
static int multi_new(lua_State *L)
{
    b24_easy_opts o;
    double parallel = DEFAULT_PARALLEL;
    b24_multi *m;
    CURLcode rc = CURLE_OK;

    b24_http_read_opts(L, &o);
    lua_getfield(L, 1, "parallel");
    if (!lua_isnil(L, -1)) {
        parallel = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : 0;
        if (!(parallel >= 1 && parallel <= MAX_PARALLEL) || parallel != (double)(int)parallel)
            return luaL_error(L, "option 'parallel' must be an integer in [1, %d]", MAX_PARALLEL);
    }

    m = lua_newuserdata(L, sizeof *m + (size_t)parallel * sizeof(slot));
    memset(m, 0, sizeof *m + (size_t)parallel * sizeof(slot));
    m->parallel = (int)parallel;
    m->timeout_ms = o.timeout_ms;
    m->max = o.max;
    m->next_ticket = 1;
    luaL_getmetatable(L, B24_MULTI_MT);
    lua_setmetatable(L, -2);

    m->multi = curl_multi_init();
    m->tmpl = curl_easy_init();
    m->headers = b24_http_headers();
    if (!m->multi || !m->tmpl || !m->headers)
        return luaL_error(L, "out of memory");
    rc = b24_http_apply_opts(m->tmpl, &o);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(m->tmpl, CURLOPT_HTTPHEADER, m->headers);
    if (rc != CURLE_OK)
        return luaL_error(L, "curl option: %s", curl_easy_strerror(rc));
    /* Keep one idle connection per easy handle: libcurl's default (four
     * per handle currently added) would shrink as transfers finish. */
    if (curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, (long)m->parallel) != CURLM_OK)
        return luaL_error(L, "curl multi option failed");
    return 1;
}

/* An idle slot, growing the pool when all created ones are busy; NULL
 * when `parallel` requests are in flight. Raises only before the new
 * slot counts as created. */
static slot *idle_slot(lua_State *L, b24_multi *m)
{
    slot *s;
    CURLcode rc;
    int i;

    for (i = 0; i < m->created; i++)
        if (m->slots[i].state == SLOT_IDLE)
            return &m->slots[i];
    if (m->created == m->parallel)
        return NULL;
    s = &m->slots[m->created];
    s->curl = curl_easy_duphandle(m->tmpl);
    if (!s->curl)
        luaL_error(L, "out of memory");
    rc = curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, s->errbuf);
    if (rc == CURLE_OK)
        rc = b24_answer_attach(s->curl, &s->answer);
    if (rc != CURLE_OK) {
        curl_easy_cleanup(s->curl);
        s->curl = NULL;
        luaL_error(L, "curl option: %s", curl_easy_strerror(rc));
    }
    s->answer.max = m->max;
    m->created++;
    return s;
}

/* multi:start(url, json_body [, timeout [, fresh]]) -> ticket
 * timeout: seconds for this request, never more than the pool's own.
 * Queues one POST; libcurl sends it during wait(). fresh = true opens a
 * new connection, so libcurl never re-sends the request on a reused
 * connection that turned out dead (writes must not be sent twice). */
static int multi_start(lua_State *L)
{
    b24_multi *m = check_multi(L);
    size_t len;
    const char *url = luaL_checkstring(L, 2);
    const char *body = luaL_checklstring(L, 3, &len);
    long timeout_ms = b24_http_call_timeout(L, 4, m->timeout_ms);
    int fresh;
    slot *s;
    CURLcode rc;
    CURLMcode mrc;

    if (!lua_isnoneornil(L, 5))
        luaL_checktype(L, 5, LUA_TBOOLEAN);
    fresh = lua_toboolean(L, 5);

    s = idle_slot(L, m);
    if (!s)
        return luaL_error(L, "all %d requests of the pool are in flight", m->parallel);
    rc = curl_easy_setopt(s->curl, CURLOPT_URL, url);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(s->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    /* A copy: the Lua string may be collected before the transfer ends. */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(s->curl, CURLOPT_COPYPOSTFIELDS, body);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(s->curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(s->curl, CURLOPT_FRESH_CONNECT, fresh ? 1L : 0L);
    if (rc != CURLE_OK)
        return luaL_error(L, "curl option: %s", curl_easy_strerror(rc));
    b24_answer_start(&s->answer);
    s->errbuf[0] = '\0';
    mrc = curl_multi_add_handle(m->multi, s->curl);
    if (mrc != CURLM_OK)
        return luaL_error(L, "curl_multi_add_handle: %s", curl_multi_strerror(mrc));
    s->state = SLOT_RUNNING;
    s->ticket = m->next_ticket;
    m->next_ticket = m->next_ticket == INT_MAX ? 1 : m->next_ticket + 1;
    m->in_flight++;
    lua_pushinteger(L, s->ticket);
    return 1;
}

/* Moves every transfer libcurl reports finished to DONE. */
static void collect_done(b24_multi *m)
{
    CURLMsg *msg;
    int left, i;

    while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        CURL *curl = msg->easy_handle;
        CURLcode rc = msg->data.result;
        if (msg->msg != CURLMSG_DONE)
            continue;
        for (i = 0; i < m->created; i++) {
            slot *s = &m->slots[i];
            if (s->curl != curl || s->state != SLOT_RUNNING)
                continue;
            s->status = 0;
            if (rc == CURLE_OK)
                rc = curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &s->status);
            s->rc = rc;
            curl_multi_remove_handle(m->multi, curl);
            s->state = SLOT_DONE;
            s->done_seq = ++m->seq;
            break;
        }
    }
}

static slot *first_done(b24_multi *m)
{
    slot *first = NULL;
    int i;

    for (i = 0; i < m->created; i++) {
        slot *s = &m->slots[i];
        if (s->state == SLOT_DONE && (!first || s->done_seq < first->done_seq))
            first = s;
    }
    return first;
}

/* Runs the transfers until one is finished (returns it) or the deadline
 * passes or nothing is in flight (returns NULL). Raises only when libcurl
 * itself fails, between its calls. */
static slot *next_done(lua_State *L, b24_multi *m, double deadline)
{
    slot *s = first_done(m);
    int running;

    while (!s && m->in_flight > 0) {
        double left;
        CURLMcode mrc = curl_multi_perform(m->multi, &running);
        if (mrc != CURLM_OK)
            luaL_error(L, "curl_multi_perform: %s", curl_multi_strerror(mrc));
        collect_done(m);
        s = first_done(m);
        left = deadline - b24_monotonic();
        if (s || left <= 0)
            break;
#if LIBCURL_VERSION_NUM >= 0x074200
        mrc = curl_multi_poll(m->multi, NULL, 0, (int)(left * 1000.0) + 1, NULL);
#else
        mrc = curl_multi_wait(m->multi, NULL, 0, (int)(left * 1000.0) + 1, NULL);
#endif
        if (mrc != CURLM_OK)
            luaL_error(L, "curl_multi_poll: %s", curl_multi_strerror(mrc));
    }
    return s;
}

/* multi:wait(seconds) -> ticket, envelope, status | ticket, nil, failure,
 * or nothing
 * when no request finished within seconds (0: just look). Returns at
 * once, with nothing, when no request is in flight. Finished requests
 * come out one per call, in the order they finished. */
static int multi_wait(lua_State *L)
{
    b24_multi *m = check_multi(L);
    double deadline = b24_monotonic() + (lua_isnoneornil(L, 2) ? 0 : check_wait(L, 2));
    slot *s = next_done(L, m, deadline);
    int n;

    if (!s)
        return 0;
    /* Back to the pool before pushing: a raise while pushing (out of
     * memory) then loses this answer but leaves the pool consistent; the
     * buffer stays the userdata's until the slot's next request (or is
     * given back below when it grew large). */
    s->state = SLOT_IDLE;
    m->in_flight--;
    if (s->rc != CURLE_OK) {
        n = b24_http_push_failure(L, s->rc, &s->answer, s->errbuf);
    } else if (s->status >= 300 && s->status < 400) {
        n = b24_http_push_redirect(L, s->curl, s->status);
    } else {
        n = b24_envelope_push(L, lua_upvalueindex(1), s->status, s->answer.body.p,
                              s->answer.body.len);
    }
    b24_answer_release(&s->answer);
    /* The results are the top n values (the decoder leaves its work
     * below them): the ticket goes under them. */
    lua_pushinteger(L, s->ticket);
    lua_insert(L, -(n + 1));
    return n + 1;
}

/* Takes a slot out of flight; a running transfer is removed from the
 * multi handle, which closes its connection (it is left half-read). A
 * large buffer goes back now, not at the slot's next request, which may
 * never come. */
static void stop(b24_multi *m, slot *s)
{
    if (s->state == SLOT_RUNNING)
        curl_multi_remove_handle(m->multi, s->curl);
    b24_answer_release(&s->answer);
    s->state = SLOT_IDLE;
    m->in_flight--;
}

/* multi:abort([ticket]) -> how many requests were stopped (0 or 1 with a
 * ticket). Stopped requests are never returned by wait(). */
static int multi_abort(lua_State *L)
{
    b24_multi *m = check_multi(L);
    int all = lua_isnoneornil(L, 2);
    lua_Integer ticket = all ? 0 : luaL_checkinteger(L, 2);
    int i, n = 0;

    for (i = 0; i < m->created; i++) {
        slot *s = &m->slots[i];
        if (s->state == SLOT_IDLE || (!all && s->ticket != ticket))
            continue;
        stop(m, s);
        n++;
    }
    lua_pushinteger(L, n);
    return 1;
}

/* multi:in_flight() -> requests started and not yet returned or aborted. */
static int multi_in_flight(lua_State *L)
{
    lua_pushinteger(L, check_multi(L)->in_flight);
    return 1;
}

static int multi_close(lua_State *L)
{
    multi_cleanup(luaL_checkudata(L, 1, B24_MULTI_MT));
    return 0;
}

static int multi_tostring(lua_State *L)
{
    b24_multi *m = luaL_checkudata(L, 1, B24_MULTI_MT);
    if (m->multi)
        lua_pushfstring(L, "bitrix24.multi (%d of %d in flight)", m->in_flight, m->parallel);
    else
        lua_pushliteral(L, "bitrix24.multi (closed)");
    return 1;
}

static const luaL_Reg methods[] = {
    {"start", multi_start},
    {"wait", multi_wait},
    {"abort", multi_abort},
    {"in_flight", multi_in_flight},
    {"close", multi_close},
    {NULL, NULL}
};

static const luaL_Reg metamethods[] = {
    {"__gc", multi_close},
    {"__close", multi_close},
    {"__tostring", multi_tostring},
    {NULL, NULL}
};

static const luaL_Reg functions[] = {
    {"multi", multi_new},
    {NULL, NULL}
};

void b24_multi_register(lua_State *L)
{
    b24_register_handle(L, B24_MULTI_MT, metamethods, methods, functions);
}
