/* The ceiling for a libcurl client: one easy handle, every option set once,
 * then N identical POSTs on the same keep-alive connection. The request is
 * the one the bitrix24 client sends (same headers, same body, the answer
 * collected into a growing buffer); nothing is decoded.
 *
 *   curl_loop URL BODY N [USER_AGENT]   ->   "calls=N seconds=S"
 *
 * Built by `make bench` (build/bench/curl_loop); one warm-up call opens the
 * connection before the clock starts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

struct buf {
    char *p;
    size_t len, cap;
};

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    struct buf *b = ud;
    size_t add = size * n;
    if (b->len + add > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        char *p;
        while (cap < b->len + add)
            cap *= 2;
        p = realloc(b->p, cap);
        if (!p)
            return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, add);
    b->len += add;
    return add;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int one(CURL *c, struct buf *b)
{
    long status = 0;
    CURLcode rc;
    b->len = 0;
    rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        rc = curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK || status != 200) {
        fprintf(stderr, "curl_loop: %s (HTTP %ld)\n", curl_easy_strerror(rc), status);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    struct curl_slist *h = NULL;
    struct buf b = {0};
    CURL *c;
    long n, i;
    double t0, t1;

    if (argc < 4) {
        fprintf(stderr, "usage: curl_loop URL BODY N [USER_AGENT]\n");
        return 2;
    }
    n = atol(argv[3]);
    curl_global_init(CURL_GLOBAL_ALL);
    c = curl_easy_init();
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, argv[1]);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, argc > 4 ? argv[4] : "bitrix24-lua");
    curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(argv[2]));
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, argv[2]);

    if (!one(c, &b))
        return 1;
    t0 = now();
    for (i = 0; i < n; i++)
        if (!one(c, &b))
            return 1;
    t1 = now();
    printf("calls=%ld seconds=%.6f bytes=%zu\n", n, t1 - t0, b.len);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    free(b.p);
    curl_global_cleanup();
    return 0;
}
