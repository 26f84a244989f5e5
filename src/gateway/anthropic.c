/*
 * anthropic.c - providers of kind `anthropic`: the chat-completions shape
 * translated to Anthropic's Messages API and back (gateway_int.h), so that
 * the rest of the gateway sees only OpenAI's wire format.
 *
 *   request   system and developer messages -> "system"; user and assistant
 *             messages -> "messages" (consecutive ones of a role merged;
 *             text parts kept, image parts as Anthropic image blocks from
 *             data: URLs); max_tokens (required there: the request's, else
 *             the configured default); temperature (capped at 1, Anthropic's
 *             range), top_p, stop -> stop_sequences, stream, user ->
 *             metadata.user_id. Tool messages, tools, response_format,
 *             logprobs and n > 1 are refused (422) rather than dropped:
 *             they are not translated yet.
 *   answer    content text blocks joined -> choices[0].message.content;
 *             stop_reason end_turn / stop_sequence -> "stop", max_tokens ->
 *             "length", tool_use -> "tool_calls"; usage input_tokens /
 *             output_tokens -> prompt_tokens / completion_tokens.
 *   stream    message_start -> the role chunk (and the prompt's tokens);
 *             content_block_delta text_delta -> content chunks;
 *             message_delta -> the finish_reason chunk (and the completion's
 *             tokens); message_stop -> the usage chunk, then the end; ping
 *             and block start/stop -> nothing; error -> a failed stream.
 *
 * Pure functions over bytes and jansson values; any thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gateway_int.h"

static int fail_set(gw_fail *fail, int status, const char *param, const char *message) {
    fail->status = status;
    snprintf(fail->param, sizeof fail->param, "%s", param);
    snprintf(fail->message, sizeof fail->message, "%s", message);
    return -1;
}

/* Appends a text block (or the string) to the role's content list. */
static int add_text(json_t *content, const char *text, size_t len) {
    return json_array_append_new(content, json_pack("{s:s, s:s%}", "type", "text", "text", text, len));
}

/* One OpenAI message's content as Anthropic blocks appended to `blocks`. */
static int add_content(json_t *blocks, json_t *content) {
    if (json_is_string(content))
        return json_string_length(content) ? add_text(blocks, json_string_value(content), json_string_length(content))
                                           : 0;
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        json_t *text = json_object_get(part, "text");
        if (type && strcmp(type, "text") == 0 && json_is_string(text)) {
            if (add_text(blocks, json_string_value(text), json_string_length(text)))
                return -1;
        } else if (type && strcmp(type, "image_url") == 0) {
            /* data:<media type>;base64,<data> becomes a base64 image block. */
            const char *url = json_string_value(json_object_get(json_object_get(part, "image_url"), "url"));
            const char *semi = url ? strstr(url, ";base64,") : NULL;
            if (!url || strncmp(url, "data:", 5) != 0 || !semi)
                return -2;
            json_t *img = json_pack("{s:s, s:{s:s, s:s%, s:s}}", "type", "image", "source", "type", "base64",
                                    "media_type", url + 5, (size_t)(semi - url - 5), "data", semi + 8);
            if (json_array_append_new(blocks, img))
                return -1;
        }
    }
    return 0;
}

/* Fields whose meaning does not survive the translation: refused rather
 * than dropped (an answer without the asked JSON format, or without tool
 * calls, would look like a success). */
static int untranslatable(const gw_chat *c, gw_fail *fail) {
    static const char *const fields[] = {"tools", "tool_choice", "functions", "function_call", "response_format",
                                         "logprobs", "top_logprobs"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        json_t *v = json_object_get(c->body, fields[i]);
        if (v && !json_is_null(v) && !json_is_false(v)) {
            char msg[160];
            snprintf(msg, sizeof msg, "%s is not translated for Anthropic models yet", fields[i]);
            fail_set(fail, GATEWAY_EINVAL, fields[i], msg);
            return 1;
        }
    }
    json_t *n = json_object_get(c->body, "n");
    if (json_is_integer(n) && json_integer_value(n) > 1) {
        fail_set(fail, GATEWAY_EINVAL, "n", "Anthropic models give one answer per request: n must be 1");
        return 1;
    }
    return 0;
}

char *gw_anthropic_request(const gw_chat *c, const char *upstream_model, long default_max_tokens, size_t *len,
                           gw_fail *fail) {
    if (untranslatable(c, fail))
        return NULL;
    json_t *body = json_object(), *messages = json_array();
    char *system = NULL;
    size_t system_len = 0;
    json_t *last = NULL;
    const char *last_role = "";
    json_t *in = json_object_get(c->body, "messages");
    size_t i;
    json_t *m;
    int rc = body && messages ? 0 : -1;
    json_array_foreach(in, i, m) {
        if (rc)
            break;
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            /* Joined with blank lines, in order. */
            json_t *blocks = json_array();
            if (!blocks || add_content(blocks, content) != 0) {
                json_decref(blocks);
                rc = -1;
                break;
            }
            size_t k;
            json_t *b;
            json_array_foreach(blocks, k, b) {
                const char *t = json_string_value(json_object_get(b, "text"));
                size_t n = t ? strlen(t) : 0;
                char *grown = realloc(system, system_len + n + 3);
                if (!grown) {
                    rc = -1;
                    break;
                }
                system = grown;
                if (system_len) {
                    memcpy(system + system_len, "\n\n", 2);
                    system_len += 2;
                }
                memcpy(system + system_len, t ? t : "", n);
                system_len += n;
                system[system_len] = 0;
            }
            json_decref(blocks);
            continue;
        }
        if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) {
            char param[64];
            snprintf(param, sizeof param, "messages[%zu].role", i);
            fail_set(fail, GATEWAY_EINVAL, param, "tool and function messages are not translated for Anthropic "
                                                  "models yet");
            rc = -2;
            break;
        }
        if (strcmp(role, last_role) != 0) { /* a new turn (Anthropic merges a role's consecutive messages) */
            last = json_pack("{s:s, s:[]}", "role", role, "content");
            if (!last || json_array_append_new(messages, last)) {
                rc = -1;
                break;
            }
            last_role = strcmp(role, "user") == 0 ? "user" : "assistant";
        }
        int added = add_content(json_object_get(last, "content"), content);
        if (added == -2) {
            char param[64];
            snprintf(param, sizeof param, "messages[%zu].content", i);
            fail_set(fail, GATEWAY_EINVAL, param, "images for Anthropic models must be data: URLs with base64 data");
            rc = -2;
        } else if (added) {
            rc = -1;
        }
    }
    char *out = NULL;
    if (rc == 0) {
        json_t *req = c->body;
        double temperature = json_number_value(json_object_get(req, "temperature"));
        json_object_set_new(body, "model", json_string(upstream_model));
        json_object_set_new(body, "max_tokens", json_integer(c->max_tokens > 0 ? c->max_tokens : default_max_tokens));
        json_object_set(body, "messages", messages);
        if (system)
            json_object_set_new(body, "system", json_string(system));
        if (json_is_number(json_object_get(req, "temperature")))
            json_object_set_new(body, "temperature", json_real(temperature > 1 ? 1 : temperature));
        if (json_is_number(json_object_get(req, "top_p")))
            json_object_set(body, "top_p", json_object_get(req, "top_p"));
        json_t *stop = json_object_get(req, "stop");
        if (json_is_string(stop))
            json_object_set_new(body, "stop_sequences", json_pack("[O]", stop));
        else if (json_is_array(stop))
            json_object_set(body, "stop_sequences", stop);
        if (c->stream)
            json_object_set_new(body, "stream", json_true());
        json_t *user = json_object_get(req, "user");
        if (json_is_string(user))
            json_object_set_new(body, "metadata", json_pack("{s:O}", "user_id", user));
        out = json_dumps(body, JSON_COMPACT);
        if (out)
            *len = strlen(out);
    }
    if (rc == -1 || (rc == 0 && !out))
        fail_set(fail, GATEWAY_ENOMEM, "", "out of memory");
    free(system);
    json_decref(messages);
    json_decref(body);
    return out;
}

static const char *finish_reason(const char *stop_reason) {
    if (!stop_reason)
        return NULL;
    if (strcmp(stop_reason, "max_tokens") == 0)
        return "length";
    if (strcmp(stop_reason, "tool_use") == 0)
        return "tool_calls";
    return "stop"; /* end_turn, stop_sequence, and anything newer */
}

int gw_anthropic_completion(const char *data, size_t len, const char *model, json_t **out, gw_usage *usage,
                            gw_fail *fail) {
    *out = NULL;
    json_t *m = json_loadb(data, len, 0, NULL);
    json_t *content = json_object_get(m, "content");
    if (!json_is_object(m) || !json_is_array(content)) {
        json_decref(m);
        return fail_set(fail, GATEWAY_EUPSTREAM, "", "the answer is not an Anthropic message");
    }
    /* The text blocks, joined. */
    size_t total = 0, i;
    json_t *b;
    json_array_foreach(content, i, b) total += json_string_length(json_object_get(b, "text"));
    char *text = malloc(total + 1);
    size_t at = 0;
    json_array_foreach(content, i, b) {
        json_t *t = json_object_get(b, "text");
        if (text && json_is_string(t)) {
            memcpy(text + at, json_string_value(t), json_string_length(t));
            at += json_string_length(t);
        }
    }
    if (text)
        text[at] = 0;
    json_t *u = json_object_get(m, "usage");
    *usage = (gw_usage){.known = json_is_object(u),
                        .prompt_tokens = (long)json_integer_value(json_object_get(u, "input_tokens")),
                        .completion_tokens = (long)json_integer_value(json_object_get(u, "output_tokens"))};
    const char *id = json_string_value(json_object_get(m, "id"));
    *out = text ? gw_completion_make(id ? id : "msg", (long)time(NULL), model, text, usage->known ? usage : NULL)
                : NULL;
    const char *fr = finish_reason(json_string_value(json_object_get(m, "stop_reason")));
    if (*out && fr)
        json_object_set_new(json_array_get(json_object_get(*out, "choices"), 0), "finish_reason", json_string(fr));
    free(text);
    json_decref(m);
    return *out ? 0 : fail_set(fail, GATEWAY_ENOMEM, "", "out of memory");
}

int gw_anthropic_event(gw_anthropic_stream *s, const char *model, const char *event, const char *data, size_t len,
                       char **out, size_t *out_len, gw_fail *fail) {
    *out = NULL;
    *out_len = 0;
    json_t *e = json_loadb(data, len, 0, NULL);
    const char *type = json_string_value(json_object_get(e, "type"));
    if (!type)
        type = event;
    int rc = 0;
    if (!json_is_object(e)) {
        rc = fail_set(fail, GATEWAY_EUPSTREAM, "", "the stream sent an event that is not JSON");
    } else if (strcmp(type, "message_start") == 0) {
        json_t *msg = json_object_get(e, "message");
        const char *id = json_string_value(json_object_get(msg, "id"));
        snprintf(s->id, sizeof s->id, "%s", id ? id : "msg");
        s->created = (long)time(NULL);
        s->usage.prompt_tokens = (long)json_integer_value(json_object_get(json_object_get(msg, "usage"), "input_tokens"));
        *out = gw_chunk_make(s->id, s->created, model, "", NULL, NULL, out_len);
    } else if (strcmp(type, "content_block_delta") == 0) {
        json_t *d = json_object_get(e, "delta");
        json_t *t = json_object_get(d, "text");
        if (json_is_string(t)) {
            /* A chunk with only this delta's text (no role). */
            json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s%}, s:n}]}", "id", s->id, "object",
                                  "chat.completion.chunk", "created", (json_int_t)s->created, "model", model,
                                  "choices", "index", 0, "delta", "content", json_string_value(t),
                                  json_string_length(t), "finish_reason");
            *out = c ? json_dumps(c, JSON_COMPACT) : NULL;
            *out_len = *out ? strlen(*out) : 0;
            json_decref(c);
        }
    } else if (strcmp(type, "message_delta") == 0) {
        json_t *u = json_object_get(e, "usage");
        if (json_is_object(u)) {
            s->usage.completion_tokens = (long)json_integer_value(json_object_get(u, "output_tokens"));
            s->usage.known = 1;
        }
        const char *fr = finish_reason(json_string_value(json_object_get(json_object_get(e, "delta"), "stop_reason")));
        if (fr)
            *out = gw_chunk_make(s->id, s->created, model, NULL, fr, NULL, out_len);
    } else if (strcmp(type, "message_stop") == 0) {
        if (s->usage.known)
            *out = gw_chunk_make(s->id, s->created, model, NULL, NULL, &s->usage, out_len);
        rc = 1;
    } else if (strcmp(type, "error") == 0) {
        char msg[200];
        const char *m = json_string_value(json_object_get(json_object_get(e, "error"), "message"));
        snprintf(msg, sizeof msg, "the stream sent an error: %.150s", m ? m : "(no message)");
        rc = fail_set(fail, GATEWAY_EUPSTREAM, "", msg);
    }
    /* ping, content_block_start, content_block_stop: nothing to pass on. */
    json_decref(e);
    return rc;
}
