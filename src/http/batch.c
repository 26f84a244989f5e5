/*
 * batch.c - the batch job endpoints: the seed's POST /batch_predict and
 * GET /batch_result/{task_id}, and POST /v1/batch, GET /v1/batch (the
 * caller's jobs, newest first, in pages), GET /v1/batch/{id},
 * GET /v1/batch/{id}/results, DELETE /v1/batch/{id} (docs/batch.md). Jobs
 * live in the jobs module (jobs.h); this file parses, checks and answers.
 *
 *  - Every endpoint needs the `batch` scope; a job belongs to the API key
 *    that made it (the key's name; "" without keys), and another key's job
 *    is 404, never its results; GET /v1/batch lists the caller's jobs only
 *    (both kinds), and an `after` that is not one of them is 422.
 *  - Inputs get /predict's checks (strings, not blank, within
 *    limits.max_text_length); an invalid job is refused whole (422) and
 *    nothing is stored.
 *  - A result equals /predict's answer for that input: {"label",
 *    "confidence", "model", "model_version"}, serialised the same way.
 *
 * Loop thread only. Every store operation runs on a jobs thread
 * (jobs_async: storing 100,000 inputs takes most of a second; with Redis
 * every read is a round trip) and the answer comes back through this
 * loop's done list, so the loop never waits.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "http_int.h"

static jobs *jobs_of(http_call *call) { return call->loop->server->opts.jobs; }

static int reply_jobs_error(http_call *call, int rc, const char *message) {
    switch (rc) {
    case JOBS_ENOTFOUND:
        message = "no batch job with this id";
        break;
    case JOBS_EFINISHED:
        message = "the batch job has already finished";
        break;
    case JOBS_EUNAVAILABLE:
        log_event(LOG_WARN, "batch_queue_unavailable", "error", json_string(message ? message : ""), "request_id",
                  json_string(call->request_id), NULL);
        http_add_header(call, "Retry-After", "1");
        message = "the batch job queue is unavailable; try again shortly";
        break;
    case JOBS_EINVAL:
    case JOBS_ENOMODEL:
    case JOBS_ELIMIT:
        if (!message || !message[0])
            message = jobs_status_message(rc);
        break;
    default:
        log_event(LOG_ERROR, "batch_store_error", "error", json_string(message ? message : jobs_status_message(rc)),
                  "request_id", json_string(call->request_id), NULL);
        message = "the batch job store failed";
        break;
    }
    http_reply_status(call, STATUS_MODULE_JOBS, rc, message);
    return -1;
}

/* ---- reading a job ---------------------------------------------------------- */

/* Checks and collects the texts of a JSON array (each a string, or an
 * object with "text"); field names the list in errors. */
static int collect(const http_limits *limits, json_t *list, const char *field, http_inputs *in, http_fail *fail) {
    size_t n = json_array_size(list);
    if (n == 0)
        return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST, "%s must not be empty", field);
    if (n > limits->max_inputs)
        return http_fail_set(fail, HTTP_ERR_TOO_MANY_INPUTS, "%s has %zu inputs; the limit is %zu", field, n,
                             limits->max_inputs);
    for (size_t i = 0; i < n; i++) { /* {"text": ...} items: their text */
        json_t *v = json_array_get(list, i);
        if (json_is_object(v) && json_object_get(v, "text"))
            json_array_set(list, i, json_object_get(v, "text"));
    }
    return http_inputs_collect(limits, NULL, list, field, in, fail);
}

static int is_jsonl(const char *content_type) {
    static const char *const types[] = {"application/jsonl", "application/x-ndjson", "application/x-jsonl",
                                        "application/jsonlines"};
    if (!content_type)
        return 0;
    size_t n = strcspn(content_type, ";, ");
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (n == strlen(types[i]) && strncasecmp(content_type, types[i], n) == 0)
            return 1;
    return 0;
}

/* JSON Lines (one string or {"text": ...} per line; blank lines skipped)
 * into a JSON array; NULL with fail. */
static json_t *parse_lines(const char *data, size_t len, http_fail *fail) {
    json_t *list = json_array();
    size_t line_no = 0;
    for (size_t at = 0; at < len;) {
        const char *nl = memchr(data + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - data) : len;
        line_no++;
        size_t a = at, b = end;
        while (a < b && (data[a] == ' ' || data[a] == '\t' || data[a] == '\r'))
            a++;
        while (b > a && (data[b - 1] == ' ' || data[b - 1] == '\t' || data[b - 1] == '\r'))
            b--;
        if (b > a) {
            json_error_t jerr;
            json_t *v = json_loadb(data + a, b - a, JSON_DECODE_ANY, &jerr);
            if (!v) {
                http_fail_set(fail,
                              json_error_code(&jerr) == json_error_invalid_utf8 ? HTTP_ERR_INVALID_UTF8
                                                                                 : HTTP_ERR_INVALID_JSON,
                              "JSON Lines body, line %zu: %s", line_no, jerr.text);
                json_decref(list);
                return NULL;
            }
            json_array_append_new(list, v);
        }
        at = end + 1;
    }
    return list;
}

int http_batch_parse(const http_limits *limits, const char *data, size_t len, int jsonl, jobs_kind kind,
                     http_inputs *in, http_fail *fail) {
    json_t *body = jsonl ? parse_lines(data, len, fail) : http_parse_json(data, len, fail);
    if (!body)
        return -1;
    in->body = body;
    const char *field = "inputs";
    json_t *list = NULL;
    if (jsonl) {
        list = body;
    } else if (kind == JOBS_KIND_SEED) {
        field = "texts";
        list = json_is_array(body) ? body : json_is_object(body) ? json_object_get(body, "texts") : NULL;
        if (!json_is_array(list))
            return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST,
                                 "the body must be a JSON list of texts, or {\"texts\": [...]}");
    } else {
        json_t *m = json_is_object(body) ? json_object_get(body, "model") : NULL;
        list = json_is_object(body) ? json_object_get(body, "inputs") : NULL;
        if (!json_is_array(list) || (m && !json_is_string(m)))
            return http_fail_set(fail, HTTP_ERR_INVALID_REQUEST,
                                 "the body must be {\"model\": NAME (optional), \"inputs\": [texts]}, or JSON Lines "
                                 "with Content-Type: application/jsonl");
        in->model = m ? json_string_value(m) : NULL;
    }
    return collect(limits, list, field, in, fail);
}

/* ---- answers ---------------------------------------------------------------- */

static json_t *iso_time(int64_t ms) {
    if (ms <= 0)
        return json_null();
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char buf[64];
    snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    return json_string(buf);
}

static json_t *job_json(const jobs_info *info) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:{s:I, s:I}}", "id", info->id, "object", "batch", "model",
                          info->model, "status", info->status, "progress", "done", (json_int_t)info->done,
                          "total", (json_int_t)info->total);
    char ver[32];
    snprintf(ver, sizeof ver, "%ld", info->version);
    json_object_set_new(o, "model_version", info->version ? json_string(ver) : json_null());
    json_object_set_new(o, "created_at", iso_time(info->created_ms));
    json_object_set_new(o, "started_at", iso_time(info->started_ms));
    json_object_set_new(o, "finished_at", iso_time(info->finished_ms));
    json_object_set_new(o, "error", info->error[0] ? json_string(info->error) : json_null());
    return o;
}

/* The versions one answer takes label names from, each acquired once for
 * the whole answer rather than once per result (a page holds up to 10,000):
 * the job's version, and the second versions of the cascades its chunks
 * took (usually one). */
typedef struct labeler {
    serving_repo *repo;
    const jobs_info *info;
    size_t n;
    struct held {
        long number;
        serving_version *version; /* NULL: that version is gone (no label) */
    } *held;
} labeler;

static labeler labeler_make(http_call *call, const jobs_info *info) {
    return (labeler){.repo = call->loop->server->repo, .info = info};
}

static void labeler_release(labeler *l) {
    for (size_t i = 0; i < l->n; i++)
        serving_version_release(l->held[i].version);
    free(l->held);
}

/* Label `id` of the job model's version `version`, or NULL. */
static const char *label_name(labeler *l, long version, int id) {
    size_t i = 0;
    while (i < l->n && l->held[i].number != version)
        i++;
    if (i == l->n) {
        struct held *more = realloc(l->held, (l->n + 1) * sizeof *more);
        if (!more)
            return NULL;
        l->held = more;
        serving_error serr;
        l->held[i].number = version;
        if (serving_acquire(l->repo, l->info->model, version, &l->held[i].version, &serr) != 0)
            l->held[i].version = NULL;
        l->n++;
    }
    return l->held[i].version ? serving_version_label(l->held[i].version, id) : NULL;
}

/* One input's result as /predict answers it (single text), or, with
 * brief, as an entry of /predict's "predictions" list. NULL label: none. */
static json_t *result_json(labeler *l, const jobs_result *r, int brief) {
    if (r->label < 0)
        return json_null();
    /* The version that answered: the job's, or the one a cascade escalated
     * the input to (its label ids are its own). */
    const long version = r->version ? r->version : l->info->version;
    const char *label = label_name(l, version, r->label);
    json_t *o = json_pack("{s:s, s:f}", "label", label ? label : "", "confidence", r->confidence);
    if (!brief) {
        char ver[24];
        json_object_set_new(o, "model", json_string(l->info->model));
        json_object_set_new(o, "model_version", json_string(http_format_int(version, ver)));
    }
    return o;
}

/* ---- handlers --------------------------------------------------------------- */

/* Every endpoint asks the jobs system through jobs_async and answers when
 * the reply comes back to this loop: no loop waits on the disk or on
 * Redis. */
typedef struct pending pending;
typedef void answer_fn(http_call *call, pending *p);
struct pending {
    jobs_req req;
    http_inputs in;   /* SUBMIT: the texts, owned until answered */
    http_call *call;
    answer_fn *answer;
    int jsonl;        /* RESULTS: JSON Lines instead of a page */
};

/* A jobs thread: hand the call back to its loop. */
static void on_answered_elsewhere(jobs_req *req) {
    pending *p = req->ud;
    http_post(p->call);
}

/* The call's loop. */
static void on_answered(http_call *call) {
    pending *p = call->posted_state;
    call->on_posted = NULL;
    call->posted_state = NULL;
    p->answer(call, p);
    free(p->req.results);
    free(p->req.jobs);
    http_inputs_free(&p->in);
    free(p);
}

static pending *pending_new(http_call *call, jobs_op op, const char *id, answer_fn *answer) {
    pending *p = calloc(1, sizeof *p);
    if (!p) {
        http_reply_error(call, HTTP_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    p->req.op = op;
    if (id)
        http_copy(p->req.id, sizeof p->req.id, id);
    p->answer = answer;
    return p;
}

static void ask(http_call *call, pending *p) {
    p->call = call;
    p->req.owner = call->key_name;
    p->req.cb = on_answered_elsewhere;
    p->req.ud = p;
    call->on_posted = on_answered;
    call->posted_state = p;
    atomic_fetch_add(&call->loop->server->pending_jobs, 1);
    jobs_async(jobs_of(call), &p->req);
}

static void answer_submit(http_call *call, pending *p) {
    if (p->req.status != JOBS_OK) {
        reply_jobs_error(call, p->req.status, p->req.error);
        return;
    }
    const char *id = p->req.id;
    log_event(LOG_INFO, "batch_job_queued", "id", json_string(id), "inputs", json_integer((json_int_t)p->in.n),
              "key", json_string(call->key_name), "request_id", json_string(call->request_id), NULL);
    if (p->req.kind == JOBS_KIND_SEED) { /* 200, as the seed service answered */
        http_reply_json(call, 200, json_pack("{s:s, s:s}", "task_id", id, "status", "pending"));
        return;
    }
    char location[64];
    snprintf(location, sizeof location, "/v1/batch/%s", id);
    http_add_header(call, "Location", location);
    http_reply_json(call, 202, job_json(&p->req.info)); /* as stored: queued, nothing done */
}

static void submit_job(http_call *call, jobs_kind kind) {
    http_server *s = call->loop->server;
    int jsonl = kind == JOBS_KIND_V1 && is_jsonl(http_header(call, "Content-Type"));
    struct evbuffer *buf = evhttp_request_get_input_buffer(call->req);
    size_t len = evbuffer_get_length(buf);
    if (len > s->opts.max_body_bytes) {
        http_reply_error(call, HTTP_ERR_BODY_TOO_LARGE, "request body is %zu bytes; the limit is %zu", len,
                         s->opts.max_body_bytes);
        return;
    }
    http_inputs in = {0};
    http_fail why;
    int bad = http_batch_parse(&s->batch_limits, len ? (const char *)evbuffer_pullup(buf, -1) : "", len, jsonl, kind, &in, &why);
    /* Blank for the model's newest version now (while the model is still
     * loading there is no tokenizer to ask, and the texts are taken as
     * they are). */
    serving_version *v = NULL;
    serving_error serr;
    if (!bad && serving_acquire(s->repo, in.model, 0, &v, &serr) == 0) {
        bad = http_check_blank(&in, v, &why);
        serving_version_release(v);
    }
    if (bad) {
        http_inputs_free(&in);
        http_reply_fail(call, &why);
        return;
    }
    pending *p = pending_new(call, JOBS_OP_SUBMIT, NULL, answer_submit);
    if (!p) {
        http_inputs_free(&in);
        return;
    }
    p->in = in;
    p->req.kind = kind;
    p->req.model = in.model;
    p->req.texts = in.texts;
    p->req.lens = in.lens;
    p->req.n = in.n;
    ask(call, p);
}

static void answer_seed_results(http_call *call, pending *p) {
    if (p->req.status != JOBS_OK) {
        reply_jobs_error(call, p->req.status, p->req.error);
        return;
    }
    labeler l = labeler_make(call, &p->req.info);
    json_t *list = json_array();
    for (size_t i = 0; i < p->req.n_results; i++)
        json_array_append_new(list, result_json(&l, &p->req.results[i], 1));
    labeler_release(&l);
    http_reply_json(call, 200, json_pack("{s:s, s:o}", "status", "completed", "results", list));
}

static void answer_seed_status(http_call *call, pending *p) {
    const jobs_info *info = &p->req.info;
    if (p->req.status != JOBS_OK) {
        reply_jobs_error(call, p->req.status, p->req.error);
        return;
    }
    if (strcmp(info->status, "completed") == 0 && !call->discard) { /* then its results: a second ask */
        pending *next = pending_new(call, JOBS_OP_RESULTS, info->id, answer_seed_results);
        if (next) {
            next->req.limit = info->total;
            ask(call, next);
        }
        return;
    }
    const char *status =
        strcmp(info->status, "queued") == 0 || strcmp(info->status, "running") == 0 ? "pending" : info->status;
    json_t *o = json_pack("{s:s}", "status", status);
    if (info->error[0])
        json_object_set_new(o, "error", json_string(info->error));
    http_reply_json(call, 200, o);
}

static void answer_results(http_call *call, pending *p) {
    const jobs_info *info = &p->req.info;
    if (p->req.status != JOBS_OK) {
        reply_jobs_error(call, p->req.status, p->req.error);
        return;
    }
    size_t offset = p->req.offset, n = p->req.n_results;
    labeler l = labeler_make(call, info);
    if (p->jsonl) { /* every result from offset, one per line */
        struct evbuffer *out = evbuffer_new();
        for (size_t i = 0; out && i < n; i++) {
            json_t *o = result_json(&l, &p->req.results[i], 0);
            json_t *line = json_pack("{s:I, s:o}", "index", (json_int_t)(offset + i), "result", o);
            char *text = http_json_text(line);
            if (text) {
                evbuffer_add(out, text, strlen(text));
                evbuffer_add(out, "\n", 1);
            }
            free(text);
        }
        labeler_release(&l);
        size_t len = out ? evbuffer_get_length(out) : 0;
        const char *data = len ? (const char *)evbuffer_pullup(out, -1) : "";
        http_reply_text(call, 200, "application/jsonl", data, len);
        if (out)
            evbuffer_free(out);
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, json_pack("{s:I, s:o}", "index", (json_int_t)(offset + i), "result",
                                              result_json(&l, &p->req.results[i], 0)));
    labeler_release(&l);
    http_reply_json(call, 200,
                    json_pack("{s:s, s:s, s:s, s:o, s:I, s:I, s:I, s:b}", "object", "list", "id", info->id, "status",
                              info->status, "data", data, "offset", (json_int_t)offset, "limit",
                              (json_int_t)p->req.limit, "total", (json_int_t)info->total, "has_more",
                              offset + n < info->total));
}

static void v1_results(http_call *call, const char *id) {
    struct evkeyvalq params;
    int bad = http_query_parse(call, &params);
    size_t offset = http_query_number(&params, "offset", 0, 1ull << 40, &bad);
    size_t limit = http_query_number(&params, "limit", HTTP_RESULTS_PAGE_DEFAULT, 1ull << 40, &bad);
    evhttp_clear_headers(&params);
    int jsonl = is_jsonl(http_header(call, "Accept"));
    if (bad || (!jsonl && (limit < 1 || limit > HTTP_RESULTS_PAGE_MAX))) {
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                         "offset must be a whole number and limit one from 1 to %d", HTTP_RESULTS_PAGE_MAX);
        return;
    }
    pending *p = pending_new(call, JOBS_OP_RESULTS, id, answer_results);
    if (!p)
        return;
    p->jsonl = jsonl;
    p->req.offset = offset;
    p->req.limit = jsonl ? SIZE_MAX : limit;
    ask(call, p);
}

static void answer_job(http_call *call, pending *p) {
    if (p->req.status != JOBS_OK) {
        reply_jobs_error(call, p->req.status, p->req.error);
        return;
    }
    if (p->req.op == JOBS_OP_CANCEL)
        log_event(LOG_INFO, "batch_job_cancelled", "id", json_string(p->req.id), "request_id",
                  json_string(call->request_id), NULL);
    http_reply_json(call, 200, job_json(&p->req.info));
}

static void ask_about(http_call *call, jobs_op op, const char *id, answer_fn *answer) {
    if (!id[0]) {
        http_reply_error(call, HTTP_ERR_JOB_NOT_FOUND, "no batch job with this id");
        return;
    }
    pending *p = pending_new(call, op, id, answer);
    if (p)
        ask(call, p);
}

/* Whether id could be a job id: [a-z0-9_], shorter than JOBS_ID_MAX. */
static int job_id_like(const char *id) {
    for (const char *c = id; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_') || c - id >= JOBS_ID_MAX - 1)
            return 0;
    return 1;
}

/* The job id of the path: "" unless it looks like one (then 404). */
static const char *path_id(http_call *call) { return job_id_like(call->params.id) ? call->params.id : ""; }

/* An `after` that is not one of the caller's jobs. */
static void reply_bad_after(http_call *call) {
    http_reply_error(call, HTTP_ERR_INVALID_REQUEST,
                     "after must be the id of one of your batch jobs (this one is unknown, another key's, or "
                     "deleted by retention)");
}

static void answer_list(http_call *call, pending *p) {
    if (p->req.status == JOBS_ENOTFOUND) { /* the after job */
        reply_bad_after(call);
        return;
    }
    if (p->req.status != JOBS_OK) {
        reply_jobs_error(call, p->req.status, p->req.error);
        return;
    }
    size_t n = p->req.n_jobs;
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, job_json(&p->req.jobs[i]));
    http_reply_json(call, 200,
                    json_pack("{s:s, s:o, s:o, s:o, s:b}", "object", "list", "data", data, "first_id",
                              n ? json_string(p->req.jobs[0].id) : json_null(), "last_id",
                              n ? json_string(p->req.jobs[n - 1].id) : json_null(), "has_more", p->req.more));
}

/* GET /v1/batch?limit=&after=: the caller's jobs, newest first. */
static void list_jobs(http_call *call) {
    struct evkeyvalq params;
    int unparsed = http_query_parse(call, &params), bad = 0;
    size_t limit = http_query_number(&params, "limit", HTTP_JOBS_PAGE_DEFAULT, 1ull << 40, &bad);
    const char *v = evhttp_find_header(&params, "after");
    char after[JOBS_ID_MAX] = "";
    int after_ok = !v || job_id_like(v);
    if (v && after_ok)
        http_copy(after, sizeof after, v);
    evhttp_clear_headers(&params);
    if (unparsed) {
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "the query must be name=value pairs (limit, after)");
        return;
    }
    if (bad || limit < 1 || limit > HTTP_JOBS_PAGE_MAX) {
        http_reply_error(call, HTTP_ERR_INVALID_REQUEST, "limit must be a whole number from 1 to %d",
                         HTTP_JOBS_PAGE_MAX);
        return;
    }
    if (!after_ok) {
        reply_bad_after(call);
        return;
    }
    pending *p = pending_new(call, JOBS_OP_LIST, after, answer_list);
    if (!p)
        return;
    p->req.limit = limit;
    ask(call, p);
}

/* 0 when batch jobs are on; else answers 503. */
static int disabled(http_call *call) {
    if (jobs_of(call))
        return 0;
    http_reply_error(call, HTTP_ERR_BATCH_DISABLED, "batch jobs are turned off on this server (batch.enabled)");
    return 1;
}

void http_batch_seed_submit(http_call *call) {
    if (!disabled(call))
        submit_job(call, JOBS_KIND_SEED);
}

void http_batch_submit(http_call *call) {
    if (!disabled(call))
        submit_job(call, JOBS_KIND_V1);
}

void http_batch_seed_result(http_call *call) {
    if (!disabled(call))
        ask_about(call, JOBS_OP_GET, path_id(call), answer_seed_status);
}

void http_batch_list(http_call *call) {
    if (!disabled(call))
        list_jobs(call);
}

void http_batch_get(http_call *call) {
    if (!disabled(call))
        ask_about(call, JOBS_OP_GET, path_id(call), answer_job);
}

void http_batch_cancel(http_call *call) {
    if (!disabled(call))
        ask_about(call, JOBS_OP_CANCEL, path_id(call), answer_job);
}

void http_batch_results(http_call *call) {
    if (disabled(call))
        return;
    const char *id = path_id(call);
    if (id[0])
        v1_results(call, id);
    else
        ask_about(call, JOBS_OP_GET, id, answer_job);
}
