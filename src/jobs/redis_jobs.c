/*
 * redis_jobs.c - the Redis store of batch jobs: one queue that every
 * aiserve instance naming the same Redis shares (jobs.h has the model).
 *
 * Keys, after the prefix (redis.key_prefix, "aiserve:" by default):
 *   batch:job:{id}      hash: owner model kind total chunks chunk status
 *                       done version created_ms started_ms finished_ms error
 *   batch:in:{id}       hash: chunk number -> its inputs, a JSON list of
 *                       strings (a chunk's field goes once its results are
 *                       stored; the hash, once the job ends)
 *   batch:res:{id}      hash: chunk number -> its results, a JSON list of
 *                       [label, confidence], or [label, confidence, version]
 *                       for an input a cascade escalated to another version
 *                       than the job's; written with HSETNX, so once
 *   batch:queue         list of tasks "{id}:{chunk}", LPUSHed, RPOPed
 *   batch:leases        sorted set: task -> lease expiry (ms, Redis's clock)
 *   batch:owner:{key}   set: the owner's queued and running jobs
 *   batch:jobs:{key}    sorted set: every job of the owner, scored by the
 *                       order they were accepted (batch:seq), for listing
 *   batch:seq           counter: the last job accepted's number
 *   batch:expiring      sorted set: "{id}:{key}" of finished jobs by finish
 *                       time; once retention deleted a job, the sweep
 *                       takes it out of batch:jobs:{key}
 *   batch:active        set: every queued and running job (gauges)
 *   batch:ended:{state} sorted set: finished jobs by finish time (gauges)
 *
 * Every change is one Lua script, so it is atomic: a worker's claim pops a
 * task and leases it together (there is no moment a crash could lose it);
 * the commit stores the results with HSETNX and advances `done` together
 * (a chunk computed twice, by a worker whose lease had expired and by the
 * one that took it over, counts once). Any instance's worker reaps expired
 * leases once a second: the task goes back to the consuming end of the
 * queue. A job's keys expire `retention` after it ends.
 *
 * Listing reads batch:jobs:{key} newest first and skips (and removes) jobs
 * whose hash is gone, so an expired job is never listed even before the
 * sweep (any instance's worker, once a second, with the housekeeping)
 * removes it; the sweep keeps the set from growing with jobs that are gone
 * whether or not anyone lists.
 *
 * Inputs are written before the job exists (HSET in groups of chunks, with
 * a one-hour expiry); the submit script then checks the owner's limit,
 * makes the job, removes the expiry and queues every chunk: a job that is
 * visible is whole, and an upload cut short leaves nothing that lasts.
 *
 * Threads: each function runs on the thread that owns its link (jobs.c
 * gives the API, the reader and the worker a link each).
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "jobs_int.h"

#define INPUT_EXPIRY_MS "3600000" /* inputs of a job whose submission never finished */
#define CHUNKS_PER_HSET 64

#define LUA_PRELUDE                                                                          \
    "local P = ARGV[1]\n"                                                                    \
    "local function K(kind, id) return P .. 'batch:' .. kind .. ':' .. id end\n"             \
    "local function ms() local t = redis.call('TIME')\n"                                     \
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end\n"                 \
    "local function live(s) return s == 'queued' or s == 'running' end\n"                    \
    "local function finish(id, state, now, err, retention)\n"                                \
    "  local jk = K('job', id)\n"                                                            \
    "  local owner = redis.call('HGET', jk, 'owner') or ''\n"                                \
    "  redis.call('HSET', jk, 'status', state, 'finished_ms', now, 'error', err)\n"          \
    "  redis.call('SREM', K('owner', owner), id)\n"                                          \
    "  redis.call('SREM', P .. 'batch:active', id)\n"                                        \
    "  redis.call('ZADD', P .. 'batch:ended:' .. state, now, id)\n"                          \
    "  redis.call('ZADD', P .. 'batch:expiring', now, id .. ':' .. owner)\n"                 \
    "  redis.call('DEL', K('in', id))\n"                                                     \
    "  redis.call('PEXPIRE', jk, retention)\n"                                               \
    "  redis.call('PEXPIRE', K('res', id), retention)\n"                                     \
    "end\n"

/* ARGV: prefix, id, owner, model, kind, total, chunks, chunk, created_ms, max_active.
 * {1, active} made; {0, active} over the owner's limit. */
static const char submit_script[] = LUA_PRELUDE
    "local id, owner = ARGV[2], ARGV[3]\n"
    "local ok = K('owner', owner)\n"
    "local active = 0\n"
    "for _, other in ipairs(redis.call('SMEMBERS', ok)) do\n"
    "  if live(redis.call('HGET', K('job', other), 'status')) then active = active + 1\n"
    "  else redis.call('SREM', ok, other) end\n"
    "end\n"
    "if active >= tonumber(ARGV[10]) then return {0, active} end\n"
    "redis.call('HSET', K('job', id), 'owner', owner, 'model', ARGV[4], 'kind', ARGV[5], 'total', ARGV[6],\n"
    "  'chunks', ARGV[7], 'chunk', ARGV[8], 'created_ms', ARGV[9], 'status', 'queued', 'done', '0',\n"
    "  'version', '0', 'started_ms', '0', 'finished_ms', '0', 'error', '')\n"
    "redis.call('PERSIST', K('in', id))\n"
    "redis.call('SADD', ok, id)\n"
    "redis.call('ZADD', K('jobs', owner), redis.call('INCR', P .. 'batch:seq'), id)\n"
    "redis.call('SADD', P .. 'batch:active', id)\n"
    "for c = 0, tonumber(ARGV[7]) - 1 do redis.call('LPUSH', P .. 'batch:queue', id .. ':' .. c) end\n"
    "return {1, active}\n";

/* ARGV: prefix, lease_ms, now_ms. The next live task, leased:
 * {task, id, chunk, model, version, total, chunk size, created_ms, inputs,
 * status before}; nil when the queue has none. */
static const char claim_script[] = LUA_PRELUDE
    "local now = ms()\n"
    "for i = 1, 1000 do\n"
    "  local task = redis.call('RPOP', P .. 'batch:queue')\n"
    "  if not task then return false end\n"
    "  local id, c = string.match(task, '^(.*):(%d+)$')\n"
    "  if id then\n"
    "    local jk = K('job', id)\n"
    "    local st = redis.call('HGET', jk, 'status')\n"
    "    if live(st) and redis.call('HEXISTS', K('res', id), c) == 0 then\n"
    "      if st == 'queued' then redis.call('HSET', jk, 'status', 'running', 'started_ms', ARGV[3]) end\n"
    "      redis.call('ZADD', P .. 'batch:leases', now + tonumber(ARGV[2]), task)\n"
    "      local f = redis.call('HMGET', jk, 'model', 'version', 'total', 'chunk', 'created_ms')\n"
    "      return {task, id, c, f[1] or '', f[2] or '0', f[3] or '0', f[4] or '0', f[5] or '0',\n"
    "              redis.call('HGET', K('in', id), c) or '', st}\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return false\n";

/* ARGV: prefix, task, lease_ms. 1: renewed; 0: the lease was lost. */
static const char renew_script[] = LUA_PRELUDE
    "if redis.call('ZSCORE', P .. 'batch:leases', ARGV[2]) then\n"
    "  redis.call('ZADD', P .. 'batch:leases', ms() + tonumber(ARGV[3]), ARGV[2]) return 1 end\n"
    "return 0\n";

/* ARGV: prefix, task, id, chunk, n, results, now_ms, retention_ms.
 * {stored, finished}. */
static const char commit_script[] = LUA_PRELUDE
    "redis.call('ZREM', P .. 'batch:leases', ARGV[2])\n"
    "local id = ARGV[3]\n"
    "local jk = K('job', id)\n"
    "if redis.call('HGET', jk, 'status') ~= 'running' then return {0, 0} end\n"
    "if redis.call('HSETNX', K('res', id), ARGV[4], ARGV[6]) == 0 then return {0, 0} end\n"
    "redis.call('HDEL', K('in', id), ARGV[4])\n"
    "local done = redis.call('HINCRBY', jk, 'done', ARGV[5])\n"
    "if done >= tonumber(redis.call('HGET', jk, 'total')) then\n"
    "  finish(id, 'completed', ARGV[7], '', ARGV[8]) return {1, 1} end\n"
    "return {1, 0}\n";

/* ARGV: prefix, id, error, now_ms, retention_ms. 1: failed it; 0: it had ended. */
static const char fail_script[] = LUA_PRELUDE
    "if live(redis.call('HGET', K('job', ARGV[2]), 'status')) then\n"
    "  finish(ARGV[2], 'failed', ARGV[4], ARGV[3], ARGV[5]) return 1 end\n"
    "return 0\n";

/* ARGV: prefix, id, owner, now_ms, retention_ms. 0, -2 (not this owner's), -7 (ended). */
static const char cancel_script[] = LUA_PRELUDE
    "local f = redis.call('HMGET', K('job', ARGV[2]), 'owner', 'status')\n"
    "if not f[1] or f[1] ~= ARGV[3] then return -2 end\n"
    "if not live(f[2]) then return -7 end\n"
    "finish(ARGV[2], 'cancelled', ARGV[4], '', ARGV[5])\n"
    "return 0\n";

/* ARGV: prefix, id, version. The job's version: this one if it had none. */
static const char pin_script[] = LUA_PRELUDE
    "local jk = K('job', ARGV[2])\n"
    "local v = redis.call('HGET', jk, 'version')\n"
    "if not v then return 0 end\n"
    "if v == '0' then redis.call('HSET', jk, 'version', ARGV[3]) return tonumber(ARGV[3]) end\n"
    "return tonumber(v)\n";

/* ARGV: prefix, task. Gives a leased task back (this instance is stopping). */
static const char requeue_script[] = LUA_PRELUDE
    "if redis.call('ZREM', P .. 'batch:leases', ARGV[2]) == 1 then\n"
    "  redis.call('RPUSH', P .. 'batch:queue', ARGV[2]) return 1 end\n"
    "return 0\n";

/* ARGV: prefix. Expired leases back on the queue (taken next); their count. */
static const char reap_script[] = LUA_PRELUDE
    "local L = P .. 'batch:leases'\n"
    "local n = 0\n"
    "for _, task in ipairs(redis.call('ZRANGEBYSCORE', L, '-inf', ms(), 'LIMIT', 0, 1000)) do\n"
    "  redis.call('ZREM', L, task)\n"
    "  local id, c = string.match(task, '^(.*):(%d+)$')\n"
    "  if id and live(redis.call('HGET', K('job', id), 'status'))\n"
    "     and redis.call('HEXISTS', K('res', id), c) == 0 then\n"
    "    redis.call('RPUSH', P .. 'batch:queue', task) n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

/* ARGV: prefix, owner, after ('': from the newest), limit. false when after
 * is not a job of the owner's (or is gone); else {more, job, job, ...}, each
 * job its hash's fields and values (HGETALL) and then 'id', its id. */
static const char list_script[] = LUA_PRELUDE
    "local L = K('jobs', ARGV[2])\n"
    "local limit = tonumber(ARGV[4])\n"
    "local top = '+inf'\n"
    "if ARGV[3] ~= '' then\n"
    "  local s = redis.call('ZSCORE', L, ARGV[3])\n"
    "  if not s or redis.call('EXISTS', K('job', ARGV[3])) == 0 then return false end\n"
    "  top = '(' .. s\n"
    "end\n"
    "local out, n = {0}, 0\n"
    "while true do\n"
    "  local page = redis.call('ZREVRANGEBYSCORE', L, top, '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)\n"
    "  if #page == 0 then return out end\n"
    "  for i = 1, #page, 2 do\n"
    "    local f = redis.call('HGETALL', K('job', page[i]))\n"
    "    if #f == 0 then redis.call('ZREM', L, page[i])\n"
    "    elseif n == limit then out[1] = 1 return out\n"
    "    else f[#f + 1] = 'id' f[#f + 1] = page[i] n = n + 1 out[n + 1] = f end\n"
    "    top = '(' .. page[i + 1]\n"
    "  end\n"
    "end\n";

/* ARGV: prefix, cutoff_ms. Takes the jobs that finished before the cutoff
 * and are gone (retention) out of their owner's list. */
static const char sweep_script[] = LUA_PRELUDE
    "local E = P .. 'batch:expiring'\n"
    "for _, m in ipairs(redis.call('ZRANGEBYSCORE', E, '-inf', ARGV[2], 'LIMIT', 0, 1000)) do\n"
    "  local id, owner = string.match(m, '^([^:]*):(.*)$')\n"
    "  if not id or redis.call('EXISTS', K('job', id)) == 0 then\n"
    "    if id then redis.call('ZREM', K('jobs', owner), id) end\n"
    "    redis.call('ZREM', E, m)\n"
    "  end\n"
    "end\n"
    "return 0\n";

/* ARGV: prefix, cutoff_ms. {queued, running, completed, failed, cancelled, remaining inputs}. */
static const char gauges_script[] = LUA_PRELUDE
    "local q, r, rem = 0, 0, 0\n"
    "local A = P .. 'batch:active'\n"
    "for _, id in ipairs(redis.call('SMEMBERS', A)) do\n"
    "  local f = redis.call('HMGET', K('job', id), 'status', 'total', 'done')\n"
    "  if live(f[1]) then\n"
    "    if f[1] == 'queued' then q = q + 1 else r = r + 1 end\n"
    "    rem = rem + (tonumber(f[2]) or 0) - (tonumber(f[3]) or 0)\n"
    "  else redis.call('SREM', A, id) end\n"
    "end\n"
    "local out = {q, r}\n"
    "for _, s in ipairs({'completed', 'failed', 'cancelled'}) do\n"
    "  local z = P .. 'batch:ended:' .. s\n"
    "  redis.call('ZREMRANGEBYSCORE', z, '-inf', ARGV[2])\n"
    "  out[#out + 1] = redis.call('ZCARD', z)\n"
    "end\n"
    "out[#out + 1] = rem\n"
    "return out\n";

/* ---- calls ------------------------------------------------------------------ */

#define MAX_ARGS 12

/* One command; its outcome is what jobs_health reports. */
static redisReply *command(jobs *j, kv_redis_link *l, int argc, const char **argv, const size_t *lens, char *err,
                           size_t cap) {
    redisReply *r = kv_redis_link_command(l, argc, argv, lens, err, cap);
    bool was_down = atomic_load(&j->queue_down);
    if (!r || was_down) {
        pthread_mutex_lock(&j->health_lock);
        if (!r)
            snprintf(j->queue_error, sizeof j->queue_error, "%s", err);
        atomic_store(&j->queue_down, r == NULL);
        pthread_mutex_unlock(&j->health_lock);
    }
    return r;
}

/* EVAL script 0 prefix args...: the reply (caller frees) or NULL. */
static redisReply *eval(jobs *j, kv_redis_link *l, const char *script, int nargs, const char *const *args, char *err,
                        size_t cap) {
    const char *argv[MAX_ARGS + 4];
    size_t lens[MAX_ARGS + 4];
    int argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = script;
    argv[argc++] = "0";
    argv[argc++] = kv_redis_link_prefix(l);
    for (int i = 0; i < nargs && i < MAX_ARGS; i++)
        argv[argc++] = args[i];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return command(j, l, argc, argv, lens, err, cap);
}

static long long int_of(const redisReply *r) {
    if (!r)
        return 0;
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return strtoll(r->str, NULL, 10);
    return 0;
}

static const char *str_of(const redisReply *r) {
    return r && r->type == REDIS_REPLY_STRING ? r->str : "";
}

static int bad_reply(redisReply *r, char *err, size_t cap) {
    if (r)
        freeReplyObject(r);
    snprintf(err, cap, "the job queue (Redis) answered something unexpected");
    return JOBS_EUNAVAILABLE;
}

#define NUM(buf, v) (snprintf(buf, sizeof buf, "%lld", (long long)(v)), buf)

void rjobs_check(jobs *j) {
    char err[200];
    const char *argv[1] = {"PING"};
    redisReply *r = command(j, j->api.link, 1, argv, NULL, err, sizeof err);
    if (r)
        freeReplyObject(r);
    else
        log_event(LOG_WARN, "batch_queue_unavailable", "redis", json_string(kv_redis_link_endpoint(j->api.link)),
                  "error", json_string(err), "message",
                  json_string("batch jobs are refused (503) and chunks wait until Redis answers"), NULL);
}

/* ---- the API ----------------------------------------------------------------- */

static void key_of(char *out, size_t cap, kv_redis_link *l, const char *kind, const char *id) {
    snprintf(out, cap, "%sbatch:%s:%s", kv_redis_link_prefix(l), kind, id);
}

static char *chunk_json(const char *const *texts, const size_t *lens, size_t n) {
    json_t *list = json_array();
    for (size_t i = 0; list && i < n; i++) {
        json_t *s = json_stringn(texts[i], lens[i]);
        if (!s || json_array_append_new(list, s) != 0) {
            json_decref(list);
            return NULL;
        }
    }
    char *out = list ? json_dumps(list, JSON_COMPACT) : NULL;
    json_decref(list);
    return out;
}

/* Writes the inputs hash, CHUNKS_PER_HSET chunks per command. */
static int write_inputs(jobs *j, kv_redis_link *l, const char *in_key, const char *const *texts,
                        const size_t *lens, size_t n, char *err, size_t cap) {
    size_t cs = j->opts.chunk_size, chunks = (n + cs - 1) / cs;
    for (size_t c0 = 0; c0 < chunks; c0 += CHUNKS_PER_HSET) {
        size_t c1 = c0 + CHUNKS_PER_HSET < chunks ? c0 + CHUNKS_PER_HSET : chunks;
        const char *argv[2 + 2 * CHUNKS_PER_HSET];
        size_t alens[2 + 2 * CHUNKS_PER_HSET];
        char fields[CHUNKS_PER_HSET][24];
        char *blobs[CHUNKS_PER_HSET] = {0};
        int argc = 0, rc = JOBS_OK;
        argv[argc] = "HSET", alens[argc++] = 4;
        argv[argc] = in_key, alens[argc++] = strlen(in_key);
        for (size_t c = c0; c < c1; c++) {
            size_t from = c * cs, m = from + cs < n ? cs : n - from;
            snprintf(fields[c - c0], sizeof fields[0], "%zu", c);
            blobs[c - c0] = chunk_json(texts + from, lens + from, m);
            if (!blobs[c - c0]) {
                rc = JOBS_EINVAL;
                snprintf(err, cap, "an input in %zu..%zu is not valid UTF-8", from, from + m - 1);
                break;
            }
            argv[argc] = fields[c - c0], alens[argc++] = strlen(fields[c - c0]);
            argv[argc] = blobs[c - c0], alens[argc++] = strlen(blobs[c - c0]);
        }
        redisReply *r = rc == JOBS_OK ? command(j, l, argc, argv, alens, err, cap) : NULL;
        if (rc == JOBS_OK && !r)
            rc = JOBS_EUNAVAILABLE;
        if (r)
            freeReplyObject(r);
        for (size_t c = 0; c < CHUNKS_PER_HSET; c++)
            free(blobs[c]);
        if (rc == JOBS_OK && c0 == 0) {
            const char *ex[3] = {"PEXPIRE", in_key, INPUT_EXPIRY_MS};
            if (!(r = command(j, l, 3, ex, NULL, err, cap)))
                rc = JOBS_EUNAVAILABLE;
            else
                freeReplyObject(r);
        }
        if (rc != JOBS_OK)
            return rc;
    }
    return JOBS_OK;
}

static void drop_key(jobs *j, kv_redis_link *l, const char *key) {
    char err[64];
    const char *argv[2] = {"DEL", key};
    redisReply *r = command(j, l, 2, argv, NULL, err, sizeof err);
    if (r)
        freeReplyObject(r);
}

int rjobs_submit(jobs *j, kv_redis_link *l, jobs_kind kind, const char *owner, const char *model_name,
                 const char *const *texts, const size_t *lens, size_t n, char id_out[JOBS_ID_MAX], char *err,
                 size_t cap) {
    jobs_new_id(id_out);
    char in_key[400];
    key_of(in_key, sizeof in_key, l, "in", id_out);
    int rc = write_inputs(j, l, in_key, texts, lens, n, err, cap);
    if (rc != JOBS_OK) {
        drop_key(j, l, in_key);
        return rc;
    }
    size_t cs = j->opts.chunk_size;
    char b_kind[24], b_total[24], b_chunks[24], b_cs[24], b_created[24], b_max[24];
    const char *args[] = {id_out, owner, model_name, NUM(b_kind, kind), NUM(b_total, n),
                          NUM(b_chunks, (n + cs - 1) / cs), NUM(b_cs, cs), NUM(b_created, jobs_now_ms()),
                          NUM(b_max, j->opts.max_active_per_owner)};
    redisReply *r = eval(j, l, submit_script, 9, args, err, cap);
    if (!r) {
        drop_key(j, l, in_key);
        return JOBS_EUNAVAILABLE;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        drop_key(j, l, in_key);
        return bad_reply(r, err, cap);
    }
    long long made = int_of(r->element[0]), active = int_of(r->element[1]);
    freeReplyObject(r);
    if (!made) {
        drop_key(j, l, in_key);
        snprintf(err, cap, "%lld jobs of this key are unfinished; the limit is %d (wait for one, or cancel one)",
                 active, j->opts.max_active_per_owner);
        return JOBS_ELIMIT;
    }
    return JOBS_OK;
}

/* Fills out (all of it) from a job hash's fields and values (HGETALL; an
 * 'id' field too, in list_script's answers). Whether owner owns the job. */
static bool info_from_fields(const redisReply *r, const char *owner, jobs_info *out) {
    memset(out, 0, sizeof *out);
    bool mine = false;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const char *k = str_of(r->element[i]), *v = str_of(r->element[i + 1]);
        long long x = strtoll(v, NULL, 10);
        if (strcmp(k, "owner") == 0)
            mine = strcmp(v, owner) == 0;
        else if (strcmp(k, "id") == 0)
            snprintf(out->id, sizeof out->id, "%s", v);
        else if (strcmp(k, "model") == 0)
            snprintf(out->model, sizeof out->model, "%s", v);
        else if (strcmp(k, "version") == 0)
            out->version = (long)x;
        else if (strcmp(k, "status") == 0)
            snprintf(out->status, sizeof out->status, "%s", v);
        else if (strcmp(k, "kind") == 0)
            out->kind = (jobs_kind)x;
        else if (strcmp(k, "total") == 0)
            out->total = (size_t)x;
        else if (strcmp(k, "done") == 0)
            out->done = (size_t)x;
        else if (strcmp(k, "created_ms") == 0)
            out->created_ms = x;
        else if (strcmp(k, "started_ms") == 0)
            out->started_ms = x;
        else if (strcmp(k, "finished_ms") == 0)
            out->finished_ms = x;
        else if (strcmp(k, "error") == 0)
            snprintf(out->error, sizeof out->error, "%s", v);
    }
    return mine && out->status[0];
}

int rjobs_get(jobs *j, kv_redis_link *l, const char *id, const char *owner, jobs_info *out, char *err,
              size_t cap) {
    char key[400];
    key_of(key, sizeof key, l, "job", id);
    const char *argv[2] = {"HGETALL", key};
    redisReply *r = command(j, l, 2, argv, NULL, err, cap);
    if (!r)
        return JOBS_EUNAVAILABLE;
    if (r->type != REDIS_REPLY_ARRAY)
        return bad_reply(r, err, cap);
    bool mine = info_from_fields(r, owner, out);
    snprintf(out->id, sizeof out->id, "%s", id);
    freeReplyObject(r);
    return mine ? JOBS_OK : JOBS_ENOTFOUND;
}

int rjobs_list(jobs *j, kv_redis_link *l, const char *owner, const char *after, size_t limit, jobs_info **out,
               size_t *n, bool *more, char *err, size_t cap) {
    char b_limit[24];
    const char *args[] = {owner, after, NUM(b_limit, limit)};
    redisReply *r = eval(j, l, list_script, 3, args, err, cap);
    if (!r)
        return JOBS_EUNAVAILABLE;
    if (r->type == REDIS_REPLY_NIL) {
        freeReplyObject(r);
        return snprintf(err, cap, "no job %s of this owner", after), JOBS_ENOTFOUND;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->elements - 1 > limit)
        return bad_reply(r, err, cap);
    *more = int_of(r->element[0]) != 0;
    *out = r->elements > 1 ? malloc((r->elements - 1) * sizeof **out) : NULL;
    if (r->elements > 1 && !*out) {
        freeReplyObject(r);
        return snprintf(err, cap, "out of memory"), JOBS_ENOMEM;
    }
    for (size_t i = 1; i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_ARRAY && info_from_fields(r->element[i], owner, &(*out)[*n]))
            (*n)++;
    freeReplyObject(r);
    return JOBS_OK;
}

/* Fills r from one chunk's results blob. */
static void take_chunk(const char *blob, size_t len, size_t first_index, size_t offset, size_t limit,
                       jobs_result *r) {
    json_t *list = json_loadb(blob, len, 0, NULL);
    size_t k;
    json_t *item;
    json_array_foreach(list, k, item) {
        size_t idx = first_index + k;
        size_t size = json_is_array(item) ? json_array_size(item) : 0;
        if (idx >= offset && idx < offset + limit && (size == 2 || size == 3))
            r[idx - offset] = (jobs_result){.label = (int)json_integer_value(json_array_get(item, 0)),
                                            .confidence = json_number_value(json_array_get(item, 1)),
                                            .version = (long)json_integer_value(json_array_get(item, 2))};
    }
    json_decref(list);
}

int rjobs_results(jobs *j, kv_redis_link *l, const jobs_info *info, size_t offset, size_t limit, jobs_result *r,
                  char *err, size_t cap) {
    char job_key[400], res_key[400];
    key_of(job_key, sizeof job_key, l, "job", info->id);
    key_of(res_key, sizeof res_key, l, "res", info->id);
    const char *hget[3] = {"HGET", job_key, "chunk"};
    redisReply *rep = command(j, l, 3, hget, NULL, err, cap);
    if (!rep)
        return JOBS_EUNAVAILABLE;
    size_t cs = (size_t)int_of(rep);
    freeReplyObject(rep);
    if (cs == 0)
        return JOBS_OK; /* ended and expired meanwhile: nothing to show */
    enum { PER_CALL = 256 };
    size_t first = offset / cs, last = (offset + limit - 1) / cs;
    for (size_t c0 = first; c0 <= last; c0 += PER_CALL) {
        size_t c1 = c0 + PER_CALL - 1 < last ? c0 + PER_CALL - 1 : last;
        const char *argv[2 + PER_CALL];
        char fields[PER_CALL][24];
        int argc = 0;
        argv[argc++] = "HMGET";
        argv[argc++] = res_key;
        for (size_t c = c0; c <= c1; c++) {
            snprintf(fields[c - c0], sizeof fields[0], "%zu", c);
            argv[argc++] = fields[c - c0];
        }
        rep = command(j, l, argc, argv, NULL, err, cap);
        if (!rep)
            return JOBS_EUNAVAILABLE;
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != c1 - c0 + 1)
            return bad_reply(rep, err, cap);
        for (size_t c = c0; c <= c1; c++) {
            const redisReply *e = rep->element[c - c0];
            if (e->type == REDIS_REPLY_STRING)
                take_chunk(e->str, e->len, c * cs, offset, limit, r);
        }
        freeReplyObject(rep);
    }
    return JOBS_OK;
}

int rjobs_cancel(jobs *j, kv_redis_link *l, const char *id, const char *owner, char *err, size_t cap) {
    char b_now[24], b_ret[24];
    const char *args[] = {id, owner, NUM(b_now, jobs_now_ms()), NUM(b_ret, j->opts.retention_us / 1000)};
    redisReply *r = eval(j, l, cancel_script, 4, args, err, cap);
    if (!r)
        return JOBS_EUNAVAILABLE;
    if (r->type != REDIS_REPLY_INTEGER)
        return bad_reply(r, err, cap);
    long long v = r->integer;
    freeReplyObject(r);
    return v == 0 ? JOBS_OK : v == -7 ? JOBS_EFINISHED : JOBS_ENOTFOUND;
}

/* ---- the worker ------------------------------------------------------------------ */

typedef struct claim {
    char task[64], id[JOBS_ID_MAX], model[256];
    size_t chunk, total, chunk_size;
    long version;
    int64_t created_ms;
    bool first; /* this claim started the job */
    json_t *inputs;
} claim;

typedef struct worker {
    jobs *j;
    kv_redis_link *l;
    bool down; /* Redis is unreachable (logged once, and once when it is back) */
    char err[200];
} worker;

/* A script's integer answer, or -1 when Redis failed. */
static long long eval_int(worker *w, const char *script, int nargs, const char *const *args) {
    redisReply *r = eval(w->j, w->l, script, nargs, args, w->err, sizeof w->err);
    if (!r)
        return -1;
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static void note_redis(worker *w, bool ok) {
    if (!ok && !w->down)
        log_event(LOG_WARN, "batch_queue_unavailable", "error", json_string(w->err), "message",
                  json_string("batch chunks wait until Redis answers again"), NULL);
    else if (ok && w->down)
        log_event(LOG_INFO, "batch_queue_available", NULL);
    w->down = !ok;
}

/* 1: claimed; 0: the queue is empty; -1: Redis failed. */
static int take_task(worker *w, claim *c) {
    char b_lease[24], b_now[24];
    const char *args[] = {NUM(b_lease, w->j->opts.lease_us / 1000), NUM(b_now, jobs_now_ms())};
    redisReply *r = eval(w->j, w->l, claim_script, 2, args, w->err, sizeof w->err);
    if (!r)
        return -1;
    if (r->type == REDIS_REPLY_NIL) {
        freeReplyObject(r);
        return 0;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 10) {
        snprintf(w->err, sizeof w->err, "the claim script answered something unexpected");
        freeReplyObject(r);
        return -1;
    }
    memset(c, 0, sizeof *c);
    snprintf(c->task, sizeof c->task, "%s", str_of(r->element[0]));
    snprintf(c->id, sizeof c->id, "%s", str_of(r->element[1]));
    c->chunk = (size_t)int_of(r->element[2]);
    snprintf(c->model, sizeof c->model, "%s", str_of(r->element[3]));
    c->version = (long)int_of(r->element[4]);
    c->total = (size_t)int_of(r->element[5]);
    c->chunk_size = (size_t)int_of(r->element[6]);
    c->created_ms = int_of(r->element[7]);
    const redisReply *in = r->element[8];
    c->inputs = in->type == REDIS_REPLY_STRING ? json_loadb(in->str, in->len, 0, NULL) : NULL;
    c->first = strcmp(str_of(r->element[9]), "queued") == 0;
    freeReplyObject(r);
    return 1;
}

static void fail_task(worker *w, const claim *c, const char *why) {
    char b_now[24], b_ret[24];
    const char *args[] = {c->id, why, NUM(b_now, jobs_now_ms()), NUM(b_ret, w->j->opts.retention_us / 1000)};
    if (eval_int(w, fail_script, 4, args) == 1)
        jobs_count_finished(w->j, "failed", 0, 0);
    log_event(LOG_ERROR, "batch_job_failed", "id", json_string(c->id), "error", json_string(why), NULL);
}

static void give_back(worker *w, const claim *c) {
    const char *args[] = {c->task};
    eval_int(w, requeue_script, 1, args);
}

typedef struct renewal {
    worker *w;
    const claim *c;
} renewal;

static void renew_lease(void *ud) {
    renewal *rn = ud;
    char b_lease[24];
    const char *args[] = {rn->c->task, NUM(b_lease, rn->w->j->opts.lease_us / 1000)};
    if (eval_int(rn->w, renew_script, 2, args) == 0)
        log_event(LOG_WARN, "batch_lease_lost", "id", json_string(rn->c->id), "chunk",
                  json_integer((json_int_t)rn->c->chunk), "message",
                  json_string("another instance may compute this chunk too; its results are stored once"), NULL);
}

/* The request the chunk runs as (r: initialised; the caller finishes it),
 * on the job's version: pinned by the first claim of any instance. */
static int job_request(worker *w, claim *c, serving_request *r, char *why, size_t cap) {
    serving_error serr = {0};
    int rc = jobs_resolve(w->j, c->id, c->model, c->version, r, &serr);
    if (rc == 0 && c->version == 0) {
        char b_v[24];
        long mine = serving_version_number(r->first);
        const char *args[] = {c->id, NUM(b_v, mine)};
        long long pinned = eval_int(w, pin_script, 2, args);
        if (pinned < 0)
            return SERVING_ENOTREADY; /* Redis failed: the lease expires, the chunk comes back */
        c->version = (long)pinned;
        if (pinned != mine) { /* another instance pinned first */
            serving_request_fini(r);
            serving_request_init(r);
            rc = jobs_resolve(w->j, c->id, c->model, c->version, r, &serr);
        }
    }
    if (rc != 0)
        snprintf(why, cap, "%.190s", serr.message[0] ? serr.message : "the model version is gone");
    return rc;
}

static char *results_json(const jobs_result *res, size_t n) {
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(list, res[i].version ? json_pack("[i, f, I]", res[i].label, res[i].confidence,
                                                               (json_int_t)res[i].version)
                                                   : json_pack("[i, f]", res[i].label, res[i].confidence));
    char *out = json_dumps(list, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(list);
    return out;
}

/* Runs a claimed chunk. 1: done with it (stored, failed or given back);
 * 0: the worker should wait a little (models loading, stopping). */
static int run_task(worker *w, claim *c) {
    jobs *j = w->j;
    serving_request req;
    serving_request_init(&req);
    char why[200];
    int rc = job_request(w, c, &req, why, sizeof why);
    int did = 1;
    if (rc == SERVING_ENOTREADY) {
        give_back(w, c);
        serving_request_fini(&req);
        return 0;
    }
    if (rc != 0) {
        fail_task(w, c, why);
        serving_request_fini(&req);
        return 1;
    }
    if (c->first)
        log_event(LOG_INFO, "batch_job_started", "id", json_string(c->id), "model", json_string(c->model),
                  "version", json_integer(c->version), "inputs", json_integer((json_int_t)c->total), NULL);
    size_t n = json_array_size(c->inputs);
    char **texts = calloc(n ? n : 1, sizeof *texts);
    size_t *lens = calloc(n ? n : 1, sizeof *lens);
    jobs_result *res = calloc(n ? n : 1, sizeof *res);
    if (!texts || !lens || !res) {
        give_back(w, c);
        did = 0;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(c->inputs, i);
        texts[i] = (char *)json_string_value(s);
        lens[i] = json_string_length(s);
    }
    if (n == 0 || c->chunk * c->chunk_size + n > c->total) {
        fail_task(w, c, "the job's inputs are missing from Redis");
        goto out;
    }
    renewal rn = {.w = w, .c = c};
    int period_ms = (int)(j->opts.lease_us / 3000);
    rc = jobs_compute(j, &req, texts, lens, n, res, renew_lease, &rn, period_ms > 0 ? period_ms : 1, why, sizeof why);
    if (rc == 1) {
        give_back(w, c);
        did = 0;
    } else if (rc != 0) {
        fail_task(w, c, why);
    } else {
        char *blob = results_json(res, n);
        char b_chunk[24], b_n[24], b_now[24], b_ret[24];
        int64_t t = jobs_now_ms();
        const char *args[] = {c->task, c->id, NUM(b_chunk, c->chunk), NUM(b_n, n), blob ? blob : "[]",
                              NUM(b_now, t), NUM(b_ret, j->opts.retention_us / 1000)};
        redisReply *r = blob ? eval(w->j, w->l, commit_script, 7, args, w->err, sizeof w->err) : NULL;
        free(blob);
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            if (int_of(r->element[0]))
                metric_add(j->inputs_processed, (double)n);
            if (int_of(r->element[1])) {
                jobs_count_finished(j, "completed", c->created_ms, t);
                log_event(LOG_INFO, "batch_job_completed", "id", json_string(c->id), "inputs",
                          json_integer((json_int_t)c->total), "seconds",
                          json_real((double)(t - c->created_ms) / 1000.0), NULL);
            }
        } else if (!r) { /* the lease expires and the chunk is computed again */
            note_redis(w, false);
        }
        if (r)
            freeReplyObject(r);
    }
out:
    free(texts), free(lens), free(res);
    serving_request_fini(&req);
    return did;
}

static void housekeeping(worker *w) {
    long long n = eval_int(w, reap_script, 0, NULL);
    if (n > 0) {
        metric_add(w->j->lease_expiries, (double)n);
        log_event(LOG_WARN, "batch_leases_expired", "chunks", json_integer(n), "message",
                  json_string("chunks whose instance stopped renewing them are back on the queue"), NULL);
    }
    char b_cut[24];
    const char *args[] = {NUM(b_cut, jobs_now_ms() - (int64_t)(w->j->opts.retention_us / 1000))};
    eval_int(w, sweep_script, 1, args);
    redisReply *r = eval(w->j, w->l, gauges_script, 1, args, w->err, sizeof w->err);
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 6) {
        double count[5];
        for (int i = 0; i < 5; i++)
            count[i] = (double)int_of(r->element[i]);
        jobs_set_gauges(w->j, count, (double)int_of(r->element[5]));
    }
    if (r)
        freeReplyObject(r);
}

void *rjobs_worker_main(void *arg) {
    worker w = {.j = arg, .l = ((jobs *)arg)->work.link};
    uint64_t last_housekeeping = 0;
    while (!jobs_is_stopping(w.j)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
        if (now - last_housekeeping >= 1000) {
            housekeeping(&w);
            last_housekeeping = now;
        }
        claim c;
        int got = take_task(&w, &c);
        note_redis(&w, got >= 0);
        if (got < 0) {
            jobs_nap(w.j, 1000);
            continue;
        }
        if (got == 0) {
            jobs_nap(w.j, 200);
            continue;
        }
        int did = run_task(&w, &c);
        json_decref(c.inputs);
        if (!did)
            jobs_nap(w.j, 200);
    }
    return NULL;
}
