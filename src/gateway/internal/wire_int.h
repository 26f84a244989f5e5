/*
 * wire_int.h - the OpenAI chat-completions wire format as the gateway reads
 * and writes it (wire.c), and the server-sent events parser (sse.c). Pure
 * functions over bytes and jansson values: no I/O, no globals; any thread.
 * Private to aiserve_gateway (tests link aiserve_gateway_internal).
 *
 * Requests (what a client sends to POST /v1/chat/completions):
 *   {"model": "...", "messages": [{"role": "system|developer|user|assistant|tool|function",
 *    "content": "..." | [{"type": "text", "text": "..."}, {"type": "image_url", ...}] | null,
 *    "name"?, "tool_calls"?, "tool_call_id"?}, ...],
 *    "stream"?: bool, "stream_options"?: {"include_usage": bool},
 *    "temperature"?, "top_p"?, "n"?, "max_tokens"? | "max_completion_tokens"?, "stop"?, "seed"?,
 *    "presence_penalty"?, "frequency_penalty"?, "logit_bias"?, "tools"?, "tool_choice"?,
 *    "response_format"?, "user"?, "metadata"?, ...}
 * Unknown fields are kept and forwarded; the checked ones must have the
 * types OpenAI documents (null counts as absent for the optional ones, as
 * OpenAI marks them nullable). Content is null or absent only in an
 * assistant message with tool_calls or function_call; a content array is
 * non-empty, each part an object with a string "type", a "text" part with
 * a string "text" (other parts are forwarded and hold no text). A "tool"
 * message needs a string tool_call_id, a "function" message a string name.
 * stream_options is only allowed with "stream": true.
 */
#ifndef AISERVE_GATEWAY_WIRE_INT_H
#define AISERVE_GATEWAY_WIRE_INT_H

#include <jansson.h>
#include <stddef.h>

#include "gateway.h"

/* What a chat request may hold (gateway.limits in the configuration). A
 * limit of 0 is no limit. */
typedef struct gw_limits {
    size_t max_messages;   /* messages per request */
    size_t max_chars;      /* code points of all message text together */
    size_t max_tokens;     /* estimated prompt tokens (gw_estimate_tokens) */
} gw_limits;

/* A refusal: the status (GATEWAY_EJSON, GATEWAY_EUTF8, GATEWAY_EINVAL,
 * GATEWAY_ETOOBIG), the request field at fault in OpenAI's "param" form
 * ("messages[2].role"; "" when none) and a message a user can act on. */
typedef struct gw_fail {
    int status;
    char param[64];
    char message[256];
} gw_fail;

/* A parsed, checked chat request. */
typedef struct gw_chat {
    json_t *body;          /* the request object (owned) */
    const char *model;     /* body.model, borrowed from body */
    int stream;            /* "stream": true */
    int include_usage;     /* stream_options.include_usage */
    int deterministic;     /* temperature given and 0, and n absent or 1: the same answer each time */
    long max_tokens;       /* max_completion_tokens, else max_tokens; -1 when neither is given */
    size_t n_messages;
    size_t text_chars;     /* code points of every message's text */
    size_t est_tokens;     /* gw_estimate_tokens of every message's text, plus 4 per message */
    char *routing_text;    /* malloc'd: the text of the last user message (routing rules read it) */
} gw_chat;

/* Parses and checks data[len] (the request body). 0 with out filled (free
 * with gw_chat_free), or -1 with fail and out zeroed: GATEWAY_EJSON (not
 * JSON), GATEWAY_EUTF8 (not UTF-8, wherever the first bad byte is),
 * GATEWAY_EINVAL (missing or mistyped field: model, messages, a message's
 * role or content, stream, temperature 0..2, top_p 0..1, n >= 1,
 * max_tokens >= 1, stop, ...; a body that is JSON but not an object),
 * GATEWAY_ETOOBIG (over a limit; the message says which and the numbers;
 * param "messages"), GATEWAY_ENOMEM. lim NULL: no limits. Text counted for
 * the limits is every content string and "text" part. */
int gw_chat_parse(const char *data, size_t len, const gw_limits *lim, gw_chat *out, gw_fail *fail);
void gw_chat_free(gw_chat *c);

/* The body to send to an OpenAI-compatible upstream: the client's request
 * with "model" set to upstream_model, and, when streaming,
 * stream_options.include_usage true (the gateway counts cost from it; the
 * usage chunk is passed on only when the client asked). Compact JSON text,
 * malloc'd (*len set), NULL when out of memory. */
char *gw_chat_upstream_body(const gw_chat *c, const char *upstream_model, size_t *len);

/* What decides the answer, as canonical bytes for the exact cache's key:
 * target (the model or route the client named), the messages, and every
 * sampling field that changes the answer (temperature, top_p, n,
 * max_tokens / max_completion_tokens, stop, seed, presence_penalty,
 * frequency_penalty, logit_bias, tools, tool_choice, response_format, ...),
 * with object keys sorted; "stream", "stream_options", "user" and
 * "metadata" left out (a streamed and a plain request share answers).
 * malloc'd, NULL when out of memory. */
char *gw_chat_cache_material(const gw_chat *c, const char *target, size_t *len);

/* The gateway's token estimate for text the upstream did not count: about
 * one token per 4 bytes of English (ceil(len / 4)), at least one per word. */
size_t gw_estimate_tokens(const char *text, size_t len);

/* ---- upstream answers --------------------------------------------------- */

typedef struct gw_usage {
    int known;                 /* the upstream reported usage */
    long prompt_tokens, completion_tokens;
} gw_usage;

/* A non-streamed upstream answer: a JSON object with a "choices" array.
 * 0 with *out (owned) and *usage filled; -1 when it is not one (fail has
 * GATEWAY_EUPSTREAM and why). */
int gw_completion_parse(const char *data, size_t len, json_t **out, gw_usage *usage, gw_fail *fail);

/* The text of every choices[i].message.content string of a completion,
 * for the output filter: calls fn for each (i = the position in choices,
 * text[len], which may hold NUL bytes); fn may replace it by returning a
 * malloc'd NUL-terminated UTF-8 string (taken: freed here), or NULL to
 * keep it. Returns 0, or -1 when out of memory or a replacement is not
 * UTF-8 (the choices before it are replaced). */
int gw_completion_map_content(json_t *completion, char *(*fn)(void *ud, size_t choice, const char *text, size_t len),
                              void *ud);

/* A chat.completion the gateway answers itself (a cached or default
 * reply): {"id": id, "object": "chat.completion", "created": created,
 * "model": model, "choices": [{"index": 0, "message": {"role":
 * "assistant", "content": content}, "finish_reason": "stop"}], "usage":
 * {prompt_tokens, completion_tokens, total_tokens}} (usage NULL: zeros).
 * Strings are NUL-terminated UTF-8. Owned; NULL when out of memory or a
 * string is not UTF-8. */
json_t *gw_completion_make(const char *id, long created, const char *model, const char *content,
                           const gw_usage *usage);

/* One "data:" payload of a streamed answer (a chat.completion.chunk). */
typedef struct gw_chunk {
    json_t *obj;               /* the chunk (owned; free with gw_chunk_free) */
    const char *content;       /* choices[0].delta.content, borrowed; NULL when absent */
    size_t content_len;
    const char *finish_reason; /* choices[0].finish_reason when a string; else NULL */
    gw_usage usage;            /* "usage" when the chunk carries it */
    int has_choices;           /* the chunk has a non-empty choices array */
} gw_chunk;

/* 0 with out filled, or -1 (out zeroed) when data is not a JSON object
 * ("[DONE]" included). usage.known needs integer prompt_tokens and
 * completion_tokens. */
int gw_chunk_parse(const char *data, size_t len, gw_chunk *out);
void gw_chunk_free(gw_chunk *c);
/* The chunk with choices[0].delta.content replaced by content[len] (and
 * "model" by model when not NULL), as compact JSON text (malloc'd, *out_len
 * set); c is left as it was. content NULL, or a chunk whose choices[0] is
 * not an object (the usage chunk): only the model changes. NULL when out
 * of memory or content is not UTF-8. */
char *gw_chunk_rewrite(const gw_chunk *c, const char *model, const char *content, size_t len, size_t *out_len);
/* A chunk the gateway makes itself: {"id","object":"chat.completion.chunk",
 * "created","model","choices":[{"index":0,"delta":{...},"finish_reason":...}]}
 * with delta {"role":"assistant","content":content} (content NULL: {}),
 * finish_reason NULL or a string; usage (not NULL) adds "usage" and an
 * empty choices array instead (content and finish_reason unused). Compact
 * JSON text, malloc'd; NULL when out of memory or a string is not UTF-8. */
char *gw_chunk_make(const char *id, long created, const char *model, const char *content,
                    const char *finish_reason, const gw_usage *usage, size_t *out_len);

/* An upstream's error answer (status >= 400, body as sent): 1 when it says
 * the prompt is longer than the model's context window (OpenAI's
 * "context_length_exceeded" code, or a message about the maximum context
 * length, as vLLM, llama.cpp and others write it: llama.cpp's
 * "exceed_context_size_error" type, or error.message (or a non-JSON body)
 * naming the context length/size/window with "exceed" or "maximum", or
 * "prompt is too long"), else 0. */
int gw_error_is_context_length(int http_status, const char *body, size_t len);
/* The upstream error's message for logs and in-band errors: the
 * error.message string when the body is OpenAI-shaped (else "error",
 * "message" or "detail" when a string; control characters made spaces,
 * cut at a character boundary), else the first 200 bytes with bytes
 * outside printable ASCII made '?', or "(empty body)"; written into
 * buf[cap], NUL-terminated (nothing when cap is 0). */
void gw_error_message(const char *body, size_t len, char *buf, size_t cap);

/* ---- server-sent events (sse.c) -----------------------------------------
 *
 * The text/event-stream format as the WHATWG HTML standard defines it:
 * lines end in \r\n, \n or \r (a \r\n split across feeds is one ending);
 * "field: value" (one space after the colon dropped), "field" alone, ":"
 * comments ignored; "data" lines of one event are joined with \n; an empty
 * line dispatches the event (none when it has no data); "event" names it
 * ("" when absent); "id" and "retry" are read and ignored. A UTF-8 BOM at
 * the very start is skipped. */

typedef struct gw_sse gw_sse;

/* Called per event with its name and data (data[len], NUL-terminated;
 * both borrowed until the callback returns). A non-zero return stops the
 * parser and gw_sse_feed returns that value. It must not free the parser. */
typedef int (*gw_sse_event_fn)(void *ud, const char *event, const char *data, size_t len);

/* max_event_bytes bounds one event's data (lines joined with \n) plus
 * the raw line being read, field name included (an endless line or event
 * is an error, not unbounded memory); how the bytes are split into feeds
 * never changes the events or the error. NULL when out of memory. */
gw_sse *gw_sse_new(size_t max_event_bytes, gw_sse_event_fn fn, void *ud);
/* Feeds bytes. 0; GW_SSE_ETOOBIG when an event or line passed the bound;
 * GW_SSE_ENOMEM; or the callback's non-zero return. After an error the
 * parser takes no more input: later feeds return the same value. */
int gw_sse_feed(gw_sse *p, const char *buf, size_t len);
/* The stream ended: 1 when it ended in the middle of an event or line
 * (data that never got its blank line: not dispatched), else 0. */
int gw_sse_truncated(const gw_sse *p);
void gw_sse_free(gw_sse *p);

#define GW_SSE_ETOOBIG (-1001)
#define GW_SSE_ENOMEM (-1002)

#endif /* AISERVE_GATEWAY_WIRE_INT_H */
