/*
 * budgets.c - GET /v1/gateway/budgets: what the LLM gateway's budgets
 * have left (docs/gateway.md, "Budgets left"), for the caller's own API
 * key, or with scope admin for every key of the budgets section and for
 * requests without a key.
 *
 *   gateway? (404 gateway_not_configured) -> gateway_budgets_read on this
 *   loop (the counters, in memory or Redis) -> the list as JSON, or 503
 *   budgets_unavailable when the store cannot be reached
 *
 * The call waits for the store like a rate-limited call does: nothing is
 * cancelled when the client leaves (the reads are short, and a store that
 * goes away fails them), and the answer to a gone client is only counted.
 *
 * Threads: the call's loop only.
 */
#include <stdio.h>

#include "http_int.h"

static json_t *usd_json(int has, const gateway_budget_usd *u) {
    if (!has)
        return json_null();
    return json_pack("{s:f, s:f, s:f, s:I}", "limit_usd", u->limit_usd, "spent_usd", u->spent_usd, "left_usd",
                     u->left_usd, "resets_in_s", (json_int_t)u->resets_in_s);
}

static void on_read(void *ud, int status, const char *why, const gateway_budget_left *left, size_t n) {
    http_call *call = ud;
    if (status != GATEWAY_OK) {
        char message[384];
        snprintf(message, sizeof message, "the store that counts the gateway's budgets cannot be reached (%s)",
                 why ? why : gateway_status_message(status));
        http_add_header(call, "Retry-After", "1");
        http_reply_status(call, STATUS_MODULE_GATEWAY, status, message);
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++) {
        const gateway_budget_left *e = &left[i];
        const gateway_budget_tokens *t = &e->tokens_per_minute;
        json_t *tokens = e->has_tokens ? json_pack("{s:I, s:I, s:I, s:I}", "limit", (json_int_t)t->limit, "used",
                                                   (json_int_t)t->used, "left", (json_int_t)t->left, "resets_in_s",
                                                   (json_int_t)t->resets_in_s)
                                       : json_null();
        json_array_append_new(data, json_pack("{s:o, s:s, s:o, s:o, s:o}", "key",
                                              e->key[0] ? json_string(e->key) : json_null(), "budget",
                                              e->own ? "keys" : "default", "daily", usd_json(e->has_daily, &e->daily),
                                              "monthly", usd_json(e->has_monthly, &e->monthly),
                                              "tokens_per_minute", tokens));
    }
    http_reply_json(call, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

void http_gateway_budgets(http_call *call) {
    if (!http_gateway_present(call))
        return;
    /* Scope admin (or no keys at all): every key the configuration names. */
    int all = (call->key_scopes & GUARD_SCOPE_ADMIN) != 0;
    const char *mine = call->key_name;
    if (gateway_budgets_read(call->loop->gateway, all ? NULL : &mine, all ? 0 : 1, on_read, call) != 0)
        http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory");
    /* call may be gone here (answered from inside): not touched again */
}
