/*
 * engine.c - the public engine API (engine.h): loading a model directory
 * and running batches of texts through tokenizer, encoder and head.
 *
 * Load order, each step validating before the next relies on it:
 * config.json (+ tokenizer_config.json) -> tokenizer (tokenizer.json if
 * present, as AutoTokenizer prefers it, else vocab.txt) -> vocabulary size
 * against the config -> model.safetensors -> tensors against the config.
 *
 * A call tokenizes every text first (so bad input fails before any compute),
 * packs the ids, then takes the model's run lock for the forward: one batch
 * at a time per model pool, never more compute threads than configured.
 */
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "bert.h"
#include "engine_int.h"
#include "kernels.h"
#include "model_config.h"
#include "safetensors.h"
#include "threadpool.h"
#include "wordpiece.h"

struct engine_model {
    model_config cfg;
    wordpiece *tokenizer;
    safetensors *weights_file;
    bert_weights weights;
    threadpool *pool;
    pthread_mutex_t run_lock; /* one batch at a time on pool and scratch */
    void *scratch;            /* reused across calls: fresh pages cost a fault each */
    size_t scratch_bytes;
    const kernel_ops *ops;
    engine_model_info info;
    char quant_note[256];     /* info.quantization_note's text */
};

const char *engine_quantization_name(engine_quantization q) {
    switch (q) {
    case ENGINE_QUANT_NONE:
        return "none";
    case ENGINE_QUANT_BF16:
        return "bf16";
    case ENGINE_QUANT_INT8:
        return "int8";
    }
    return "?";
}

int engine_quantization_parse(const char *name, engine_quantization *out, engine_error *err) {
    static const engine_quantization all[] = {ENGINE_QUANT_NONE, ENGINE_QUANT_BF16, ENGINE_QUANT_INT8};
    for (size_t i = 0; name && i < sizeof all / sizeof *all; i++)
        if (strcmp(name, engine_quantization_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return engine_error_set(err, ENGINE_EARG, "quantization '%s' is not one of none, bf16, int8",
                            name ? name : "(null)");
}

/* What runs when `asked` is asked for on the kernels `ops`; fills m's note
 * when that is not plainly what was asked. */
static engine_quantization choose_quantization(engine_model *m, engine_quantization asked) {
    const kernel_ops *ops = m->ops;
    m->info.kernels = ops->name;
    if (asked == ENGINE_QUANT_NONE)
        return asked;
    if (ops == kernels_scalar()) {
        /* The scalar references are for tests: on a CPU without AVX2
         * OpenBLAS's fp32 is much faster than they are. */
        snprintf(m->quant_note, sizeof m->quant_note,
                 "quantization %s needs AVX2 (kernels here: %s); running fp32 (none) instead",
                 engine_quantization_name(asked), ops->name);
        return ENGINE_QUANT_NONE;
    }
    if (asked == ENGINE_QUANT_INT8) {
        const kernel_q8_ops *q8 = kernels_q8_for(ops);
        m->info.kernels = q8->name;
        if (q8->weight_max < 127)
            snprintf(m->quant_note, sizeof m->quant_note,
                     "quantization int8: this CPU has no VNNI; weights are quantised to 7 bits for AVX2 "
                     "(%s), slightly less accurate than with VNNI",
                     q8->name);
        return asked;
    }
    const kernel_bf16_ops *bf16 = kernels_bf16_for(ops);
    m->info.kernels = bf16->name;
    if (bf16 != kernels_bf16_avx512())
        snprintf(m->quant_note, sizeof m->quant_note,
                 "quantization bf16: this CPU has no AVX512-BF16; bf16 weights are widened to fp32 "
                 "in the products (%s): half the memory, about fp32's speed",
                 bf16->name);
    return asked;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void fill_info(engine_model *m) {
    engine_model_info *info = &m->info;
    const model_config *c = &m->cfg;
    info->arch = c->arch;
    info->task = c->task;
    info->architecture = c->architecture;
    info->model_type = c->model_type;
    info->n_layers = c->n_layers;
    info->hidden = c->hidden;
    info->n_heads = c->n_heads;
    info->intermediate = c->intermediate;
    info->vocab_size = c->vocab_size;
    info->max_position = c->max_position;
    info->max_length = c->max_length;
    info->n_labels = c->task == ENGINE_TASK_CLASSIFY ? c->n_labels : 0;
    info->multi_label = c->multi_label;
    info->do_lower_case = wordpiece_does_lower_case(m->tokenizer);
    int mask = m->weights.dtype_mask;
    info->dtype = mask == (1 << ST_F32)    ? "F32"
                  : mask == (1 << ST_F16)  ? "F16"
                  : mask == (1 << ST_BF16) ? "BF16"
                                           : "mixed";
    for (size_t i = 0; i < safetensors_count(m->weights_file); i++) {
        const safetensors_tensor *t = safetensors_at(m->weights_file, i);
        info->n_params += t->n_elems;
        info->weight_bytes += t->n_bytes;
    }
    info->weight_memory_bytes = m->weights.memory_bytes;
    info->quantization = m->weights.quant;
    info->quantization_note = m->quant_note[0] ? m->quant_note : NULL;
}

int engine_model_load(const char *dir, const engine_options *opts, engine_model **out,
                      engine_error *err) {
    *out = NULL;
    if (!dir)
        return engine_error_set(err, ENGINE_EARG, "no model directory given");
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return engine_error_set(err, ENGINE_EIO, "%s: not a model directory: %s", dir,
                                stat(dir, &sb) != 0 ? strerror(errno) : "not a directory");
    engine_model *m = calloc(1, sizeof *m);
    if (!m)
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    pthread_mutex_init(&m->run_lock, NULL);
    int rc = model_config_load(dir, &m->cfg, err);
    if (rc)
        goto fail;

    char path[4096];
    wordpiece_options wopts;
    wordpiece_options_init(&wopts);
    wopts.do_lower_case = m->cfg.do_lower_case;
    wopts.strip_accents = m->cfg.strip_accents;
    wopts.tokenize_chinese_chars = m->cfg.tokenize_chinese_chars;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (file_exists(path)) {
        rc = wordpiece_load_json(path, &wopts, &m->tokenizer, err);
    } else {
        snprintf(path, sizeof path, "%s/vocab.txt", dir);
        if (!file_exists(path)) {
            rc = engine_error_set(err, ENGINE_EIO, "%s: no tokenizer: neither vocab.txt nor "
                                  "tokenizer.json is there", dir);
            goto fail;
        }
        rc = wordpiece_load_vocab(path, &wopts, &m->tokenizer, err);
    }
    if (rc)
        goto fail;
    if (wordpiece_vocab_size(m->tokenizer) > (size_t)m->cfg.vocab_size) {
        rc = engine_error_set(err, ENGINE_ECONFIG,
                              "%s: the vocabulary has %zu tokens but config.json vocab_size is %d",
                              path, wordpiece_vocab_size(m->tokenizer), m->cfg.vocab_size);
        goto fail;
    }

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!file_exists(path)) {
        char bin[4096];
        snprintf(bin, sizeof bin, "%s/pytorch_model.bin", dir);
        rc = engine_error_set(err, ENGINE_EIO,
                              file_exists(bin) ? "%s: missing; only pytorch_model.bin is there, "
                                                 "convert it to safetensors"
                                               : "%s: missing",
                              path);
        goto fail;
    }
    if ((rc = safetensors_open(path, &m->weights_file, err)))
        goto fail;
    m->ops = kernels_best();
    const engine_quantization quant = choose_quantization(m, opts ? opts->quantization : ENGINE_QUANT_NONE);
    if ((rc = bert_weights_bind_as(&m->weights, &m->cfg, m->weights_file, quant, m->ops, err)))
        goto fail;

    m->pool = threadpool_create(opts && opts->n_threads > 0 ? opts->n_threads : 1);
    if (!m->pool) {
        rc = engine_error_set(err, ENGINE_ENOMEM, "cannot start compute threads");
        goto fail;
    }
    fill_info(m);
    *out = m;
    return 0;
fail:
    engine_model_free(m);
    return rc;
}

void engine_model_free(engine_model *m) {
    if (!m)
        return;
    threadpool_destroy(m->pool);
    if (m->scratch)
        munmap(m->scratch, m->scratch_bytes);
    bert_weights_fini(&m->weights);
    safetensors_close(m->weights_file);
    wordpiece_destroy(m->tokenizer);
    model_config_fini(&m->cfg);
    pthread_mutex_destroy(&m->run_lock);
    free(m);
}

const engine_model_info *engine_model_get_info(const engine_model *m) { return &m->info; }

const char *engine_model_label(const engine_model *m, int id) {
    if (m->cfg.task != ENGINE_TASK_CLASSIFY || id < 0 || id >= m->cfg.n_labels)
        return NULL;
    return m->cfg.labels[id];
}

int engine_tokenize(const engine_model *m, const char *text, size_t len, int max_length,
                    int32_t *ids, size_t cap, size_t *n_ids, engine_error *err) {
    size_t limit = max_length >= 2 && max_length < m->cfg.max_length ? (size_t)max_length
                                                                      : (size_t)m->cfg.max_length;
    return wordpiece_encode(m->tokenizer, text, len, limit, ids, cap, n_ids, err);
}

int engine_text_is_blank(const engine_model *m, const char *text, size_t len) {
    return wordpiece_is_blank(m->tokenizer, text, len);
}

const char *engine_token_text(const engine_model *m, int32_t id) {
    return wordpiece_token(m->tokenizer, id);
}

/* Tokenizes all texts into one packed batch; on success the caller frees
 * batch->ids and batch->offsets. */
static int pack(engine_model *m, const char *const *texts, const size_t *lens, size_t n,
                bert_batch *batch, engine_error *err) {
    memset(batch, 0, sizeof *batch);
    if (n == 0 || n > (size_t)INT32_MAX / (size_t)m->cfg.max_length)
        return engine_error_set(err, ENGINE_EARG, "a batch needs 1 to %d texts",
                                INT32_MAX / m->cfg.max_length);
    const size_t max_len = (size_t)m->cfg.max_length;
    int32_t *ids = malloc(n * max_len * sizeof *ids);
    int *offsets = malloc((n + 1) * sizeof *offsets);
    if (!ids || !offsets) {
        free(ids);
        free(offsets);
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    }
    size_t total = 0;
    offsets[0] = 0;
    for (size_t i = 0; i < n; i++) {
        size_t got = 0;
        if (!texts[i]) {
            free(ids);
            free(offsets);
            return engine_error_set(err, ENGINE_EARG, "text %zu is NULL", i);
        }
        int rc = wordpiece_encode(m->tokenizer, texts[i], lens[i], max_len, ids + total,
                                  n * max_len - total, &got, err);
        if (rc) {
            free(ids);
            free(offsets);
            if (err) { /* name the text in the batch */
                char msg[sizeof err->message];
                snprintf(msg, sizeof msg, "text %zu: %.480s", i, err->message);
                memcpy(err->message, msg, sizeof msg);
            }
            return rc;
        }
        total += got;
        offsets[i + 1] = (int)total;
    }
    batch->ids = ids;
    batch->offsets = offsets;
    batch->n_seqs = (int)n;
    batch->n_tokens = (int)total;
    return 0;
}

static void unpack(bert_batch *batch) {
    free((void *)batch->ids);
    free((void *)batch->offsets);
}

/* Makes the model's scratch at least `bytes`; run lock held. The scratch
 * grows to the largest batch seen and is kept, on 2 MiB pages where the
 * kernel allows, so that a steady stream of batches pays no page faults. */
static int reserve_scratch(engine_model *m, size_t bytes, engine_error *err) {
    if (bytes <= m->scratch_bytes)
        return 0;
    const size_t huge = (size_t)2 << 20;
    bytes = (bytes + huge - 1) / huge * huge;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory for %zu MiB of batch scratch",
                                bytes >> 20);
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    if (m->scratch)
        munmap(m->scratch, m->scratch_bytes);
    m->scratch = p;
    m->scratch_bytes = bytes;
    return 0;
}

/* What a call does with the encoder's output, under the run lock. */
typedef struct head_job {
    enum { HEAD_CLASSIFY, HEAD_EMBED } kind;
    float *logits;          /* HEAD_CLASSIFY: n x n_labels */
    engine_pooling pooling; /* HEAD_EMBED */
    int normalize;
    float *out;             /* HEAD_EMBED: n x hidden */
} head_job;

static void pool_embeddings(const engine_model *m, const bert_batch *batch, const float *hidden,
                            const head_job *job) {
    const size_t H = (size_t)m->cfg.hidden;
    for (int s = 0; s < batch->n_seqs; s++) {
        float *v = job->out + (size_t)s * H;
        int t0 = batch->offsets[s], t1 = batch->offsets[s + 1];
        if (job->pooling == ENGINE_POOL_CLS) {
            memcpy(v, hidden + (size_t)t0 * H, H * sizeof(float));
        } else {
            memset(v, 0, H * sizeof(float));
            for (int t = t0; t < t1; t++)
                m->ops->add(v, hidden + (size_t)t * H, H);
            float inv = 1.0f / (float)(t1 - t0);
            for (size_t j = 0; j < H; j++)
                v[j] *= inv;
        }
        if (job->normalize) { /* as torch.nn.functional.normalize: x / max(||x||, 1e-12) */
            double sq = 0;
            for (size_t j = 0; j < H; j++)
                sq += (double)v[j] * v[j];
            double norm = sqrt(sq);
            float inv = (float)(1.0 / (norm > 1e-12 ? norm : 1e-12));
            for (size_t j = 0; j < H; j++)
                v[j] *= inv;
        }
    }
}

/* Tokenizes and packs the texts, then runs encoder and head under the run
 * lock in the model's scratch. */
static int run_batch(engine_model *m, const char *const *texts, const size_t *lens, size_t n,
                     const head_job *job, engine_stats *stats, engine_error *err) {
    bert_batch batch;
    int rc = pack(m, texts, lens, n, &batch, err);
    if (rc)
        return rc;
    if (stats)
        stats->n_tokens = (size_t)batch.n_tokens;
    const size_t hidden_floats = ((size_t)batch.n_tokens * m->cfg.hidden + 15) / 16 * 16;
    const size_t work_floats = bert_scratch_floats(&m->cfg, &batch, threadpool_size(m->pool)) +
                               bert_scratch_lowp_floats(&m->weights, &m->cfg, &batch);
    pthread_mutex_lock(&m->run_lock);
    rc = reserve_scratch(m, (hidden_floats + work_floats) * sizeof(float), err);
    if (!rc) {
        float *hidden = m->scratch;
        bert_encode(&m->weights, &m->cfg, &batch, m->pool, m->ops, hidden, hidden + hidden_floats);
        if (job->kind == HEAD_CLASSIFY)
            rc = bert_classify_head(&m->weights, &m->cfg, &batch, hidden, m->ops, job->logits, err);
        else
            pool_embeddings(m, &batch, hidden, job);
    }
    pthread_mutex_unlock(&m->run_lock);
    unpack(&batch);
    return rc;
}

int engine_classify(engine_model *m, const char *const *texts, const size_t *lens, size_t n,
                    float *logits, float *probs, engine_error *err) {
    return engine_classify_stats(m, texts, lens, n, logits, probs, NULL, err);
}

int engine_classify_stats(engine_model *m, const char *const *texts, const size_t *lens, size_t n,
                          float *logits, float *probs, engine_stats *stats, engine_error *err) {
    if (m->cfg.task != ENGINE_TASK_CLASSIFY)
        return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                "%s is an embedding model (no classification head)",
                                m->cfg.architecture);
    const int K = m->cfg.n_labels;
    float *out = logits ? logits : malloc((n ? n : 1) * (size_t)K * sizeof(float));
    if (!out)
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    head_job job = {.kind = HEAD_CLASSIFY, .logits = out};
    int rc = run_batch(m, texts, lens, n, &job, stats, err);
    if (!rc && probs) {
        memcpy(probs, out, n * (size_t)K * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            float *p = probs + i * K;
            if (m->cfg.multi_label)
                for (int j = 0; j < K; j++)
                    p[j] = 1.0f / (1.0f + expf(-p[j]));
            else
                kernels_scalar()->softmax(p, (size_t)K);
        }
    }
    if (out != logits)
        free(out);
    return rc;
}

int engine_embed(engine_model *m, const char *const *texts, const size_t *lens, size_t n,
                 engine_pooling pooling, int normalize, float *out, engine_error *err) {
    if (!out)
        return engine_error_set(err, ENGINE_EARG, "no output buffer");
    head_job job = {.kind = HEAD_EMBED, .pooling = pooling, .normalize = normalize, .out = out};
    return run_batch(m, texts, lens, n, &job, NULL, err);
}
