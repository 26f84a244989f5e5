/*
 * ratelimit.c - rate limiting: which bucket a request draws from (its API
 * key, or its client address), with which limits (its tier), and the
 * decision, taken by the key-value backend in one atomic token-bucket
 * step (kv_bucket_take). guard.h has the rules.
 *
 * Design:
 *  - Bucket keys are "rl:k:<key name>" and "rl:a:<client address>": the
 *    two spaces never meet, and a key's bucket follows the key (not the
 *    address) across machines behind a load balancer.
 *  - A tier of R requests a minute and burst B is a bucket of B tokens
 *    refilled by R tokens per 60 s, in integer units (store.h), so a limit
 *    of N with burst N admits exactly N at once and then one every 60/N s.
 *  - Trusted proxies are kept as 128-bit prefixes (IPv4 as IPv4-mapped
 *    IPv6), so one comparison covers both families.
 *  - The decision reaches the caller through its callback; this file keeps
 *    no state per request beyond the caller-owned guard_ratelimit_req.
 *
 * Threads: guard.h. The tier table and the proxy list are immutable after
 * create; metrics are atomic.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guard_int.h"

#define MAX_PROXIES 256
#define MAX_HOPS 64 /* X-Forwarded-For entries walked at most */
#define MINUTE_US INT64_C(60000000)

typedef struct proxy_net {
    unsigned char addr[16]; /* IPv6, or IPv4-mapped */
    int bits;               /* prefix length over the 128 bits */
} proxy_net;

struct guard_ratelimit {
    kv_store *store;
    guard_tier *tiers;
    size_t n_tiers;
    const guard_tier *default_tier, *anonymous_tier;
    proxy_net *proxies;
    size_t n_proxies;
    bool deny_on_failure;
    metric *allowed, *limited, *failed_open, *failed_closed;
    guard_collector *collector;
};

/* ---- addresses ---------------------------------------------------------- */

/* Parses an IPv4 or IPv6 address (text[0..n), not NUL-terminated) into
 * 16 bytes, IPv4 as ::ffff:a.b.c.d. Accepts "[v6]", "[v6]:port" and
 * "v4:port" as proxies write them. Returns 1, or 0 when it is not one. */
static int parse_address(const char *text, size_t n, unsigned char out[16]) {
    while (n && (*text == ' ' || *text == '\t'))
        text++, n--;
    while (n && (text[n - 1] == ' ' || text[n - 1] == '\t'))
        n--;
    if (n && text[0] == '[') {
        const char *close = memchr(text, ']', n);
        if (!close)
            return 0;
        text++;
        n = (size_t)(close - text);
    } else {
        const char *colon = memchr(text, ':', n);
        if (colon && memchr(text, '.', n) && !memchr(colon + 1, ':', n - (size_t)(colon + 1 - text)))
            n = (size_t)(colon - text); /* a.b.c.d:port */
    }
    char buf[INET6_ADDRSTRLEN + 1];
    if (n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, text, n);
    buf[n] = 0;
    unsigned char v4[4];
    if (inet_pton(AF_INET, buf, v4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, v4, 4);
        return 1;
    }
    return inet_pton(AF_INET6, buf, out) == 1;
}

static int is_v4_mapped(const unsigned char a[16]) {
    static const unsigned char prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, prefix, 12) == 0;
}

static int in_net(const unsigned char a[16], const proxy_net *net) {
    int full = net->bits / 8, rest = net->bits % 8;
    if (memcmp(a, net->addr, (size_t)full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[full] & mask) == (net->addr[full] & mask);
}

static int is_trusted(const guard_ratelimit *rl, const unsigned char a[16]) {
    for (size_t i = 0; i < rl->n_proxies; i++)
        if (in_net(a, &rl->proxies[i]))
            return 1;
    return 0;
}

/* The client's name: IPv4 as a.b.c.d, IPv6 as its /64. */
static void format_client(const unsigned char a[16], char *out, size_t cap) {
    char text[INET6_ADDRSTRLEN];
    if (is_v4_mapped(a)) {
        inet_ntop(AF_INET, a + 12, text, sizeof text);
        snprintf(out, cap, "%s", text);
        return;
    }
    unsigned char net[16] = {0};
    memcpy(net, a, 8);
    inet_ntop(AF_INET6, net, text, sizeof text);
    snprintf(out, cap, "%s/64", text);
}

static int parse_proxies(guard_ratelimit *rl, const char *list, guard_error *err) {
    if (!list || !*list)
        return 0;
    rl->proxies = calloc(MAX_PROXIES, sizeof *rl->proxies);
    if (!rl->proxies)
        return guard_set_error(err, GUARD_ENOMEM, "out of memory");
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        const char *slash = memchr(p, '/', n);
        size_t addr_len = slash ? (size_t)(slash - p) : n;
        proxy_net net = {{0}, 128};
        if (rl->n_proxies == MAX_PROXIES)
            return guard_set_error(err, GUARD_EINVAL, "more than %d trusted proxies", MAX_PROXIES);
        if (!parse_address(p, addr_len, net.addr))
            return guard_set_error(err, GUARD_EINVAL, "trusted proxy '%.*s' is not an IP address or CIDR block",
                                   (int)(n < 64 ? n : 64), p);
        int max_bits = is_v4_mapped(net.addr) ? 32 : 128;
        if (slash) {
            char digits[8];
            size_t dn = n - addr_len - 1;
            if (dn == 0 || dn >= sizeof digits)
                return guard_set_error(err, GUARD_EINVAL, "trusted proxy '%.*s': bad prefix length",
                                       (int)(n < 64 ? n : 64), p);
            memcpy(digits, slash + 1, dn);
            digits[dn] = 0;
            char *end;
            long bits = strtol(digits, &end, 10);
            if (*end || bits < 0 || bits > max_bits)
                return guard_set_error(err, GUARD_EINVAL, "trusted proxy '%.*s': prefix length must be 0..%d",
                                       (int)(n < 64 ? n : 64), p, max_bits);
            net.bits = (int)bits + (max_bits == 32 ? 96 : 0);
        }
        rl->proxies[rl->n_proxies++] = net;
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}

void guard_ratelimit_client(const guard_ratelimit *rl, const char *peer, const char *const *forwarded,
                            size_t n_forwarded, char *out, size_t cap) {
    unsigned char addr[16];
    if (!peer || !parse_address(peer, strlen(peer), addr)) {
        snprintf(out, cap, "%.*s", GUARD_CLIENT_MAX - 1, peer && *peer ? peer : "unknown");
        return;
    }
    int hops = 0;
    /* Right to left over the header values, and over the entries of each. */
    for (size_t v = n_forwarded; v-- > 0 && is_trusted(rl, addr) && hops < MAX_HOPS;) {
        const char *value = forwarded[v];
        size_t end = value ? strlen(value) : 0;
        while (end > 0 && is_trusted(rl, addr) && hops < MAX_HOPS) {
            size_t start = end;
            while (start > 0 && value[start - 1] != ',')
                start--;
            unsigned char hop[16];
            if (!parse_address(value + start, end - start, hop)) {
                /* Not an address (or a blank entry): whatever is left of it
                 * cannot be trusted either; the last good hop stands. */
                format_client(addr, out, cap);
                return;
            }
            memcpy(addr, hop, 16);
            hops++;
            end = start ? start - 1 : 0;
        }
    }
    format_client(addr, out, cap);
}

/* ---- the limiter ---------------------------------------------------------- */

static void collect_buckets(void *ud, kv_store *store, metric *const *series) {
    (void)ud;
    kv_stats st;
    kv_get_stats(store, &st);
    metric_set(series[0], (double)st.entries);
}

int guard_ratelimit_create(const guard_ratelimit_options *opts, metrics_registry *metrics,
                           guard_ratelimit **out, guard_error *err) {
    *out = NULL;
    if (!opts || !opts->store || !opts->tiers || opts->n_tiers == 0)
        return guard_set_error(err, GUARD_EINVAL, "the rate limiter needs a store and tiers");
    guard_ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl || !(rl->tiers = calloc(opts->n_tiers, sizeof *rl->tiers))) {
        free(rl);
        return guard_set_error(err, GUARD_ENOMEM, "out of memory");
    }
    rl->store = opts->store;
    rl->deny_on_failure = opts->deny_on_backend_failure;
    rl->n_tiers = opts->n_tiers;
    memcpy(rl->tiers, opts->tiers, opts->n_tiers * sizeof *rl->tiers);
    int rc = 0;
    for (size_t i = 0; i < rl->n_tiers && rc == 0; i++) {
        guard_tier *t = &rl->tiers[i];
        t->name[GUARD_NAME_MAX] = 0;
        if (!guard_name_is_valid(t->name) || t->requests_per_minute < 1 || t->burst < 1 ||
            t->requests_per_minute > 10000000 || t->burst > 10000000)
            rc = guard_set_error(err, GUARD_EINVAL, "rate-limit tier '%s': bad name or limits", t->name);
        if (strcmp(t->name, "default") == 0)
            rl->default_tier = t;
        if (strcmp(t->name, "anonymous") == 0)
            rl->anonymous_tier = t;
    }
    if (rc == 0 && (!rl->default_tier || !rl->anonymous_tier))
        rc = guard_set_error(err, GUARD_EINVAL, "rate-limit tiers must include \"default\" and \"anonymous\"");
    if (rc == 0)
        rc = parse_proxies(rl, opts->trusted_proxies, err);
    if (rc == 0 && metrics) {
        const char *result[] = {"result"};
        metric_family *f = metrics_counter(metrics, "aiserve_ratelimit_decisions_total",
                                           "Rate-limit decisions on the model endpoints: allowed, limited (429), "
                                           "or made without the backend (unreachable): failed_open (admitted) or "
                                           "failed_closed (503), as ratelimit.on_backend_failure says",
                                           1, result);
        rl->allowed = metric_get(f, "allowed", NULL);
        rl->limited = metric_get(f, "limited", NULL);
        rl->failed_open = metric_get(f, "failed_open", NULL);
        rl->failed_closed = metric_get(f, "failed_closed", NULL);
        f = metrics_gauge(metrics, "aiserve_ratelimit_buckets",
                          "Token buckets held (one per active API key or client address; idle ones expire)", 0,
                          NULL);
        metric *buckets = f ? metric_series(f, NULL) : NULL;
        rl->collector = guard_collector_attach(metrics, rl->store, collect_buckets, NULL, &buckets, 1);
        if (!rl->collector)
            rc = guard_set_error(err, GUARD_ENOMEM, "out of memory");
    }
    if (rc != 0) {
        guard_ratelimit_destroy(rl);
        return rc;
    }
    *out = rl;
    return 0;
}

void guard_ratelimit_destroy(guard_ratelimit *rl) {
    if (!rl)
        return;
    guard_collector_detach(rl->collector);
    free(rl->proxies);
    free(rl->tiers);
    free(rl);
}

const guard_tier *guard_ratelimit_tier(const guard_ratelimit *rl, const char *tier_name) {
    if (!tier_name)
        return rl->anonymous_tier;
    for (size_t i = 0; i < rl->n_tiers; i++)
        if (strcmp(rl->tiers[i].name, tier_name) == 0)
            return &rl->tiers[i];
    return rl->default_tier;
}

static int64_t ceil_seconds(int64_t us) { return us <= 0 ? 0 : (us + 999999) / 1000000; }

static void on_bucket(int status, const kv_bucket_result *r, void *ud) {
    guard_ratelimit_req *req = ud;
    guard_ratelimit *rl = req->rl;
    guard_ratelimit_result res = {.status = status, .tier = req->tier, .limit = req->tier->burst};
    if (status == KV_OK && r) {
        res.allowed = r->allowed;
        res.remaining = r->remaining;
        res.reset_s = ceil_seconds(r->reset_us);
        if (!r->allowed) {
            res.retry_after_s = ceil_seconds(r->retry_after_us);
            if (res.retry_after_s < 1)
                res.retry_after_s = 1;
        }
        metric_inc(res.allowed ? rl->allowed : rl->limited);
    } else {
        /* The backend could not decide. Fail open by default (an outage of
         * Redis must not take the service down with it), or closed when
         * configured so. */
        res.allowed = !rl->deny_on_failure;
        res.remaining = res.allowed ? req->tier->burst : 0;
        res.retry_after_s = res.allowed ? 0 : 1;
        metric_inc(res.allowed ? rl->failed_open : rl->failed_closed);
    }
    guard_ratelimit_cb cb = req->cb;
    void *cb_ud = req->ud;
    cb(&res, cb_ud); /* may free req */
}

void guard_ratelimit_check(guard_ratelimit *rl, struct event_base *base, const char *key_name,
                           const char *tier_name, const char *client, guard_ratelimit_req *req,
                           guard_ratelimit_cb cb, void *ud) {
    int keyed = key_name && *key_name;
    /* "rl:k:<key name>" or "rl:a:<client>", built without snprintf (this
     * runs on every limited request). */
    char key[8 + GUARD_NAME_MAX + GUARD_CLIENT_MAX];
    const char *who = keyed ? key_name : (client && *client ? client : "unknown");
    size_t who_len = strnlen(who, sizeof key - 6);
    memcpy(key, keyed ? "rl:k:" : "rl:a:", 5);
    memcpy(key + 5, who, who_len);
    key[5 + who_len] = '\0';
    int n = (int)(5 + who_len);
    req->rl = rl;
    req->tier = guard_ratelimit_tier(rl, keyed ? (tier_name ? tier_name : "default") : NULL);
    req->cb = cb;
    req->ud = ud;
    kv_bucket_params params = {
        .capacity = req->tier->burst,
        .refill = req->tier->requests_per_minute,
        .period_us = MINUTE_US,
        .cost = 1,
    };
    kv_bucket_take(rl->store, base, key, (size_t)n, &params, on_bucket, req);
}
