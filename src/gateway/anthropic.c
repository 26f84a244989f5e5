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
 *             metadata.user_id; tools -> tools (input_schema), tool_choice
 *             -> {type: auto | none | any | tool}, an assistant's tool_calls
 *             -> tool_use blocks, tool messages -> tool_result blocks in the
 *             user's turn. function messages, response_format, logprobs and
 *             n > 1 are refused (422) rather than dropped.
 *   answer    content text blocks joined -> choices[0].message.content,
 *             tool_use blocks -> message.tool_calls (input as JSON text);
 *             stop_reason end_turn / stop_sequence -> "stop", max_tokens ->
 *             "length", tool_use -> "tool_calls"; usage input_tokens /
 *             output_tokens -> prompt_tokens / completion_tokens.
 *   stream    message_start -> the role chunk (and the prompt's tokens);
 *             content_block_delta text_delta -> content chunks; a tool_use
 *             block's start and input_json_delta pieces -> tool_calls chunks;
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

/* tools: [{type: function, function: {name, description, parameters}}] as
 * Anthropic's [{name, description, input_schema}]. */
static json_t *translate_tools(json_t *tools) {
    json_t *out = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *f = json_object_get(t, "function");
        json_t *params = json_object_get(f, "parameters");
        json_t *tool = json_pack("{s:O, s:O}", "name", json_object_get(f, "name"), "input_schema",
                                 json_is_object(params) ? params : json_pack("{s:s}", "type", "object"));
        if (json_is_string(json_object_get(f, "description")))
            json_object_set(tool, "description", json_object_get(f, "description"));
        if (!tool || json_array_append_new(out, tool)) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* tool_choice: "auto", "none", "required" or {type: function, function:
 * {name}} as Anthropic's {type: auto | none | any | tool, name}. */
static json_t *translate_tool_choice(json_t *choice) {
    const char *s = json_string_value(choice);
    if (s)
        return json_pack("{s:s}", "type", strcmp(s, "required") == 0 ? "any" : strcmp(s, "none") == 0 ? "none" : "auto");
    json_t *name = json_object_get(json_object_get(choice, "function"), "name");
    return json_is_string(name) ? json_pack("{s:s, s:O}", "type", "tool", "name", name) : NULL;
}

/* An assistant message's tool_calls as tool_use blocks appended to blocks:
 * {id, name, input} with arguments (a JSON text) parsed. -2 when the
 * arguments are not a JSON object. */
static int add_tool_uses(json_t *blocks, json_t *calls) {
    size_t i;
    json_t *call;
    json_array_foreach(calls, i, call) {
        json_t *f = json_object_get(call, "function");
        const char *args = json_string_value(json_object_get(f, "arguments"));
        json_t *input = args && *args ? json_loads(args, 0, NULL) : json_object();
        if (!json_is_object(input)) {
            json_decref(input);
            return -2;
        }
        json_t *use = json_pack("{s:s, s:O, s:O, s:o}", "type", "tool_use", "id", json_object_get(call, "id"),
                                "name", json_object_get(f, "name"), "input", input);
        if (!use || json_array_append_new(blocks, use))
            return -1;
    }
    return 0;
}

/* Fields whose meaning does not survive the translation: refused rather
 * than dropped (an answer without the asked JSON format, or without tool
 * calls, would look like a success). */
static int untranslatable(const gw_chat *c, gw_fail *fail) {
    static const char *const fields[] = {"functions", "function_call", "response_format", "logprobs",
                                         "top_logprobs"};
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
        int is_tool = strcmp(role, "tool") == 0;
        if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0 && !is_tool) {
            char param[64];
            snprintf(param, sizeof param, "messages[%zu].role", i);
            fail_set(fail, GATEWAY_EINVAL, param, "function messages (the legacy form of tool results) are not "
                                                  "translated for Anthropic models; use tool messages");
            rc = -2;
            break;
        }
        const char *turn = is_tool ? "user" : role; /* a tool's result is the user's turn there */
        if (strcmp(turn, last_role) != 0) { /* a new turn (Anthropic merges a role's consecutive messages) */
            last = json_pack("{s:s, s:[]}", "role", turn, "content");
            if (!last || json_array_append_new(messages, last)) {
                rc = -1;
                break;
            }
            last_role = strcmp(turn, "user") == 0 ? "user" : "assistant";
        }
        json_t *blocks = json_object_get(last, "content");
        int added;
        if (is_tool) {
            json_t *result = json_array();
            added = result ? add_content(result, content) : -1;
            json_t *block = added == 0 ? json_pack("{s:s, s:O, s:O}", "type", "tool_result", "tool_use_id",
                                                   json_object_get(m, "tool_call_id"), "content", result)
                                       : NULL;
            json_decref(result);
            if (added == 0 && (!block || json_array_append_new(blocks, block)))
                added = -1;
        } else {
            added = add_content(blocks, content);
            if (added == 0 && json_is_array(json_object_get(m, "tool_calls")))
                added = add_tool_uses(blocks, json_object_get(m, "tool_calls"));
        }
        if (added == -2) {
            char param[64];
            snprintf(param, sizeof param, "messages[%zu].content", i);
            fail_set(fail, GATEWAY_EINVAL, param, "for Anthropic models, images must be data: URLs with base64 data "
                                                  "and tool call arguments JSON objects");
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
        json_t *tools = json_object_get(req, "tools");
        if (json_is_array(tools) && json_array_size(tools)) {
            json_t *t = translate_tools(tools);
            json_t *choice = json_object_get(req, "tool_choice");
            json_t *tc = choice && !json_is_null(choice) ? translate_tool_choice(choice) : NULL;
            if (!t || (choice && !json_is_null(choice) && !tc))
                rc = -1;
            json_object_set_new(body, "tools", t);
            if (tc)
                json_object_set_new(body, "tool_choice", tc);
        }
        json_t *user = json_object_get(req, "user");
        if (json_is_string(user))
            json_object_set_new(body, "metadata", json_pack("{s:O}", "user_id", user));
        out = rc == 0 ? json_dumps(body, JSON_COMPACT) : NULL;
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
    json_t *choice = json_array_get(json_object_get(*out, "choices"), 0);
    if (*out && fr)
        json_object_set_new(choice, "finish_reason", json_string(fr));
    /* tool_use blocks: the message's tool_calls (arguments as JSON text). */
    json_t *calls = json_array();
    json_array_foreach(content, i, b) {
        const char *type = json_string_value(json_object_get(b, "type"));
        if (!type || strcmp(type, "tool_use") != 0)
            continue;
        char *args = json_dumps(json_object_get(b, "input"), JSON_COMPACT | JSON_ENCODE_ANY);
        json_array_append_new(calls, json_pack("{s:O, s:s, s:{s:O, s:s}}", "id", json_object_get(b, "id"), "type",
                                               "function", "function", "name", json_object_get(b, "name"),
                                               "arguments", args ? args : "{}"));
        free(args);
    }
    if (*out && json_array_size(calls)) {
        json_t *msg = json_object_get(choice, "message");
        json_object_set(msg, "tool_calls", calls);
        if (at == 0)
            json_object_set_new(msg, "content", json_null());
    }
    json_decref(calls);
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
    } else if (strcmp(type, "content_block_start") == 0 &&
               strcmp(json_string_value(json_object_get(json_object_get(e, "content_block"), "type")) ?: "",
                      "tool_use") == 0) {
        /* A tool call starts: its id and name, arguments to follow. */
        json_t *b = json_object_get(e, "content_block");
        size_t block = (size_t)json_integer_value(json_object_get(e, "index"));
        if (block < sizeof s->tool_of_block / sizeof s->tool_of_block[0])
            s->tool_of_block[block] = s->n_tools + 1;
        json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:[{s:i, s:O, s:s, s:{s:O, s:s}}]}, s:n}]}", "id", s->id,
                              "object", "chat.completion.chunk", "created", (json_int_t)s->created, "model", model,
                              "choices", "index", 0, "delta", "tool_calls", "index", s->n_tools, "id",
                              json_object_get(b, "id"), "type", "function", "function", "name",
                              json_object_get(b, "name"), "arguments", "", "finish_reason");
        s->n_tools++;
        *out = c ? json_dumps(c, JSON_COMPACT) : NULL;
        *out_len = *out ? strlen(*out) : 0;
        json_decref(c);
    } else if (strcmp(type, "content_block_delta") == 0 &&
               json_is_string(json_object_get(json_object_get(e, "delta"), "partial_json"))) {
        /* A piece of a tool call's arguments. */
        size_t block = (size_t)json_integer_value(json_object_get(e, "index"));
        size_t tool = block < sizeof s->tool_of_block / sizeof s->tool_of_block[0] && s->tool_of_block[block]
                          ? s->tool_of_block[block] - 1 : 0;
        json_t *c = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:[{s:I, s:{s:O}}]}, s:n}]}", "id", s->id, "object",
                              "chat.completion.chunk", "created", (json_int_t)s->created, "model", model, "choices",
                              "index", 0, "delta", "tool_calls", "index", (json_int_t)tool, "function", "arguments",
                              json_object_get(json_object_get(e, "delta"), "partial_json"), "finish_reason");
        *out = c ? json_dumps(c, JSON_COMPACT) : NULL;
        *out_len = *out ? strlen(*out) : 0;
        json_decref(c);
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
