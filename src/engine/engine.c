/*
 * engine.c - the public engine API (engine.h): loading a model directory
 * and running batches of texts (or text pairs) through tokenizer, encoder
 * and head.
 *
 * Load order, each step validating before the next relies on it:
 * config.json (+ tokenizer_config.json, sentence-transformers' files) ->
 * tokenizer (tokenizer.h picks the file as AutoTokenizer does) ->
 * vocabulary size against the config -> weights file (checkpoint_open:
 * model.safetensors, else pytorch_model.bin) ->
 * tensors against the config.
 *
 * A call tokenizes every text first (so bad input fails before any compute),
 * packs the ids (and, for pairs on a model with token types, each id's
 * type), then takes the model's run lock for the forward: one batch at a
 * time per model pool, never more compute threads than configured.
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

#include <utf8proc.h>

#include "bert.h"
#include "checkpoint.h"
#include "engine_int.h"
#include "kernels.h"
#include "model_config.h"
#include "safetensors.h"
#include "threadpool.h"
#include "tokenizer.h"

struct engine_model {
    model_config cfg;
    tokenizer *tokenizer;
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

const char *engine_problem_name(engine_problem p) {
    switch (p) {
    case ENGINE_PROBLEM_SINGLE_LABEL:
        return "single_label_classification";
    case ENGINE_PROBLEM_MULTI_LABEL:
        return "multi_label_classification";
    case ENGINE_PROBLEM_REGRESSION:
        return "regression";
    case ENGINE_PROBLEM_UNSET:
        break;
    }
    return NULL;
}

const char *engine_score_fn_name(engine_score_fn f) {
    switch (f) {
    case ENGINE_SCORE_SOFTMAX:
        return "softmax";
    case ENGINE_SCORE_SIGMOID:
        return "sigmoid";
    case ENGINE_SCORE_NONE:
        return "none";
    }
    return "?";
}

static const char *const pooling_names[] = {"mean", "cls", "max", "mean_sqrt_len", "last"};

const char *engine_pooling_name(engine_pooling p) {
    return (unsigned)p < sizeof pooling_names / sizeof *pooling_names ? pooling_names[p] : "?";
}

void engine_l2_normalize(float *v, size_t n) {
    double sq = 0;
    for (size_t j = 0; j < n; j++)
        sq += (double)v[j] * v[j];
    const double norm = sqrt(sq);
    const float inv = (float)(1.0 / (norm > 1e-12 ? norm : 1e-12));
    for (size_t j = 0; j < n; j++)
        v[j] *= inv;
}

int engine_pooling_parse(const char *name, engine_pooling *out, engine_error *err) {
    for (size_t i = 0; name && i < sizeof pooling_names / sizeof *pooling_names; i++)
        if (strcmp(name, pooling_names[i]) == 0) {
            *out = (engine_pooling)i;
            return 0;
        }
    return engine_error_set(err, ENGINE_EARG, "pooling must be mean, cls, max, mean_sqrt_len or last");
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
    info->problem_type = c->task == ENGINE_TASK_CLASSIFY ? c->problem : ENGINE_PROBLEM_UNSET;
    info->multi_label = info->problem_type == ENGINE_PROBLEM_MULTI_LABEL;
    /* transformers' TextClassificationPipeline: regression first, then
     * multi-label or one label, then softmax. */
    if (info->problem_type == ENGINE_PROBLEM_REGRESSION)
        info->score_fn = ENGINE_SCORE_NONE;
    else if (info->multi_label || info->n_labels == 1)
        info->score_fn = ENGINE_SCORE_SIGMOID;
    else
        info->score_fn = ENGINE_SCORE_SOFTMAX;
    info->do_lower_case = tokenizer_does_lower_case(m->tokenizer);
    info->tokenizer = tokenizer_kind_name(tokenizer_get_kind(m->tokenizer));
    info->st_lower_case = c->st_lower_case;
    info->pooling = c->pooling;
    info->normalize = c->normalize;
    info->n_prompts = c->n_prompts;
    info->prompt_names = (const char *const *)c->prompt_names;
    info->prompts = (const char *const *)c->prompts;
    info->default_prompt_name = c->default_prompt_name;
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

    tokenizer_options topts;
    tokenizer_options_init(&topts);
    topts.wordpiece.do_lower_case = m->cfg.do_lower_case;
    topts.wordpiece.strip_accents = m->cfg.strip_accents;
    topts.wordpiece.tokenize_chinese_chars = m->cfg.tokenize_chinese_chars;
    topts.add_prefix_space = m->cfg.add_prefix_space;
    if ((rc = tokenizer_load(dir, &topts, &m->tokenizer, err)))
        goto fail;
    if (tokenizer_vocab_size(m->tokenizer) > (size_t)m->cfg.vocab_size) {
        rc = engine_error_set(err, ENGINE_ECONFIG,
                              "%s: the vocabulary has %zu tokens but config.json vocab_size is %d",
                              tokenizer_path(m->tokenizer), tokenizer_vocab_size(m->tokenizer),
                              m->cfg.vocab_size);
        goto fail;
    }

    if ((rc = checkpoint_open(dir, &m->weights_file, err)))
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
    tokenizer_destroy(m->tokenizer);
    model_config_fini(&m->cfg);
    pthread_mutex_destroy(&m->run_lock);
    free(m);
}

const engine_model_info *engine_model_get_info(const engine_model *m) { return &m->info; }

const char *engine_model_prompt(const engine_model *m, const char *name) {
    for (int i = 0; name && i < m->cfg.n_prompts; i++)
        if (strcmp(m->cfg.prompt_names[i], name) == 0)
            return m->cfg.prompts[i];
    return NULL;
}

const char *engine_model_label(const engine_model *m, int id) {
    if (m->cfg.task != ENGINE_TASK_CLASSIFY || id < 0 || id >= m->cfg.n_labels)
        return NULL;
    return m->cfg.labels[id];
}

static void unpack(bert_batch *batch) {
    free((void *)batch->ids);
    free((void *)batch->types);
    free((void *)batch->offsets);
}

/* Unicode's Cased and Case_Ignorable (DerivedCoreProperties.txt), as
 * CPython's str.lower applies them in the Final_Sigma rule
 * (unicodeobject.c, handle_capital_sigma); utf8proc has the categories
 * only, so the rest is listed here.
 * Cased: Lu, Ll, Lt, and Other_Lowercase / Other_Uppercase. Those of the
 * latter in Lm or Mn are case-ignorable, which the rule checks first, so
 * only the others matter: ordinal indicators, Roman numerals, circled and
 * squared Latin letters. */
static int cp_cased(utf8proc_int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT || c == 0xAA ||
           c == 0xBA || (c >= 0x2160 && c <= 0x217F) || (c >= 0x24B6 && c <= 0x24E9) ||
           (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) || (c >= 0x1F170 && c <= 0x1F189);
}

/* Case_Ignorable: Mn, Me, Cf, Lm, Sk, and Word_Break MidLetter, MidNumLet
 * or Single_Quote (WordBreakProperty.txt). */
static int cp_case_ignorable(utf8proc_int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    if (k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_ME || k == UTF8PROC_CATEGORY_CF ||
        k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_SK)
        return 1;
    switch (c) {
    case '\'': case '.': case ':': case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018: case 0x2019:
    case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07: case 0xFF0E: case 0xFF1A:
        return 1;
    }
    return 0;
}

/* Whether U+03A3 at s[i] ends a word (Final_Sigma): a cased character
 * before it and none after it, case-ignorable characters skipped. */
static int final_sigma(const uint8_t *s, size_t len, size_t at, size_t after) {
    utf8proc_int32_t c;
    int before = 0;
    for (size_t i = 0; i < at;) { /* the last non-ignorable character before `at` */
        utf8proc_ssize_t n = utf8proc_iterate(s + i, (utf8proc_ssize_t)(len - i), &c);
        if (!cp_case_ignorable(c))
            before = cp_cased(c);
        i += (size_t)n;
    }
    if (!before)
        return 0;
    for (size_t i = after; i < len;) {
        utf8proc_ssize_t n = utf8proc_iterate(s + i, (utf8proc_ssize_t)(len - i), &c);
        if (!cp_case_ignorable(c))
            return !cp_cased(c);
        i += (size_t)n;
    }
    return 1;
}

/* The text the tokenizer sees: with sentence_bert_config.json's
 * do_lower_case, lower-cased as sentence-transformers does (Python's
 * str.lower(): simple mappings, U+0130 to "i" + U+0307, final sigma) into
 * *buf (malloc'd; the caller frees it); else, or when the text is not
 * valid UTF-8 (the tokenizer reports that), the text itself. NULL when out
 * of memory. */
static const char *model_text(const engine_model *m, const char *text, size_t *len, char **buf) {
    *buf = NULL;
    if (!m->cfg.st_lower_case)
        return text;
    const uint8_t *s = (const uint8_t *)text;
    const size_t n = *len;
    if (n > SIZE_MAX / 2 - 8)
        return NULL;
    uint8_t *out = malloc(n * 3 / 2 + 8), *o = out; /* a character grows by at most half its bytes */
    if (!out)
        return NULL;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0) {
            free(out);
            return text;
        }
        if (c == 0x130) {
            o += utf8proc_encode_char('i', o);
            c = 0x307;
        } else if (c == 0x3A3) {
            c = final_sigma(s, n, i, i + (size_t)k) ? 0x3C2 : 0x3C3;
        } else {
            c = utf8proc_tolower(c);
        }
        o += utf8proc_encode_char(c, o);
        i += (size_t)k;
    }
    *len = (size_t)(o - out);
    *buf = (char *)out;
    return *buf;
}

/* The model's max_length, or a smaller one the caller asks for. */
static size_t length_limit(const engine_model *m, int max_length) {
    return max_length >= 2 && max_length < m->cfg.max_length ? (size_t)max_length : (size_t)m->cfg.max_length;
}

int engine_tokenize(const engine_model *m, const char *text, size_t len, int max_length,
                    int32_t *ids, size_t cap, size_t *n_ids, engine_error *err) {
    char *buf;
    const char *t = model_text(m, text, &len, &buf);
    int rc = t ? tokenizer_encode(m->tokenizer, t, len, length_limit(m, max_length), ids, cap, n_ids, err)
               : engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    free(buf);
    return rc;
}

int engine_tokenize_pair(const engine_model *m, const char *a, size_t a_len, const char *b, size_t b_len,
                         int max_length, int32_t *ids, uint8_t *types, size_t cap, size_t *n_ids,
                         engine_error *err) {
    char *abuf, *bbuf;
    const char *ta = model_text(m, a, &a_len, &abuf), *tb = model_text(m, b, &b_len, &bbuf);
    int rc = ta && tb ? tokenizer_encode_pair_types(m->tokenizer, ta, a_len, tb, b_len, length_limit(m, max_length),
                                                    ids, types, cap, n_ids, err)
                      : engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    free(abuf);
    free(bbuf);
    /* What the model is given: token types only where it has them (BERT). */
    if (!rc && types && m->cfg.arch != ENGINE_ARCH_BERT)
        memset(types, 0, *n_ids);
    return rc;
}

int engine_text_is_blank(const engine_model *m, const char *text, size_t len) {
    return tokenizer_is_blank(m->tokenizer, text, len);
}

const char *engine_token_text(const engine_model *m, int32_t id) {
    return tokenizer_token(m->tokenizer, id);
}

/* A call's inputs: texts a[i], or pairs (a[i], b[i]) when b is set. */
typedef struct batch_input {
    const char *const *a;
    const size_t *a_lens;
    const char *const *b; /* NULL: single texts */
    const size_t *b_lens;
    size_t n;
} batch_input;

/* Prefixes err's message with "text I: " or "pair I: ". */
static int name_input(const batch_input *in, size_t i, int rc, engine_error *err) {
    if (err) {
        char msg[sizeof err->message];
        snprintf(msg, sizeof msg, "%s %zu: %.480s", in->b ? "pair" : "text", i, err->message);
        memcpy(err->message, msg, sizeof msg);
    }
    return rc;
}

/* Tokenizes all inputs into one packed batch; on success the caller frees
 * it with unpack. Pairs on BERT carry token types (0 for [CLS] A [SEP], 1
 * for B [SEP]); the other architectures take type 0 everywhere, as
 * transformers' tokenizers give them no token_type_ids. */
static int pack(engine_model *m, const batch_input *in, bert_batch *batch, engine_error *err) {
    memset(batch, 0, sizeof *batch);
    const size_t n = in->n;
    if (n == 0 || n > (size_t)INT32_MAX / (size_t)m->cfg.max_length)
        return engine_error_set(err, ENGINE_EARG, "a batch needs 1 to %d %s", INT32_MAX / m->cfg.max_length,
                                in->b ? "pairs" : "texts");
    const size_t max_len = (size_t)m->cfg.max_length, cap = n * max_len;
    const int with_types = in->b && m->cfg.arch == ENGINE_ARCH_BERT;
    int32_t *ids = malloc(cap * sizeof *ids);
    uint8_t *types = with_types ? malloc(cap) : NULL;
    int *offsets = malloc((n + 1) * sizeof *offsets);
    batch->ids = ids;
    batch->types = types;
    batch->offsets = offsets;
    if (!ids || !offsets || (with_types && !types)) {
        unpack(batch);
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    }
    size_t total = 0;
    offsets[0] = 0;
    for (size_t i = 0; i < n; i++) {
        size_t got = 0;
        int rc;
        if (!in->a[i] || (in->b && !in->b[i])) {
            unpack(batch);
            return engine_error_set(err, ENGINE_EARG, "%s %zu is NULL", in->b ? "pair" : "text", i);
        }
        char *abuf, *bbuf = NULL;
        size_t a_len = in->a_lens[i], b_len = in->b ? in->b_lens[i] : 0;
        const char *a = model_text(m, in->a[i], &a_len, &abuf);
        const char *b = in->b ? model_text(m, in->b[i], &b_len, &bbuf) : NULL;
        if (!a || (in->b && !b))
            rc = engine_error_set(err, ENGINE_ENOMEM, "out of memory");
        else if (in->b)
            rc = tokenizer_encode_pair_types(m->tokenizer, a, a_len, b, b_len, max_len, ids + total,
                                             types ? types + total : NULL, cap - total, &got, err);
        else
            rc = tokenizer_encode(m->tokenizer, a, a_len, max_len, ids + total, cap - total, &got, err);
        free(abuf);
        free(bbuf);
        for (size_t t = total; !rc && types && t < total + got; t++)
            if (types[t] >= m->cfg.type_vocab_size)
                rc = engine_error_set(err, ENGINE_ECONFIG,
                                      "%s gives the second text token type %d but config.json type_vocab_size "
                                      "is %d", tokenizer_path(m->tokenizer), types[t], m->cfg.type_vocab_size);
        if (rc) {
            unpack(batch);
            return name_input(in, i, rc, err);
        }
        total += got;
        offsets[i + 1] = (int)total;
    }
    batch->n_seqs = (int)n;
    batch->n_tokens = (int)total;
    return 0;
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
        switch (job->pooling) {
        case ENGINE_POOL_CLS:
        case ENGINE_POOL_LAST:
            memcpy(v, hidden + (size_t)(job->pooling == ENGINE_POOL_CLS ? t0 : t1 - 1) * H, H * sizeof(float));
            break;
        case ENGINE_POOL_MAX:
            memcpy(v, hidden + (size_t)t0 * H, H * sizeof(float));
            for (int t = t0 + 1; t < t1; t++) {
                const float *row = hidden + (size_t)t * H;
                for (size_t j = 0; j < H; j++)
                    v[j] = row[j] > v[j] ? row[j] : v[j];
            }
            break;
        case ENGINE_POOL_MEAN:
        case ENGINE_POOL_MEAN_SQRT_LEN: {
            memset(v, 0, H * sizeof(float));
            for (int t = t0; t < t1; t++)
                m->ops->add(v, hidden + (size_t)t * H, H);
            /* sentence-transformers divides the sum by the count, or by its square root */
            float inv = job->pooling == ENGINE_POOL_MEAN ? 1.0f / (float)(t1 - t0) : 1.0f / sqrtf((float)(t1 - t0));
            for (size_t j = 0; j < H; j++)
                v[j] *= inv;
            break;
        }
        }
        if (job->normalize)
            engine_l2_normalize(v, H);
    }
}

/* Tokenizes and packs the texts, then runs encoder and head under the run
 * lock in the model's scratch. */
static int run_batch(engine_model *m, const batch_input *in, const head_job *job, engine_stats *stats,
                     engine_error *err) {
    bert_batch batch;
    int rc = pack(m, in, &batch, err);
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

/* Logits (and scores) for the inputs: info.score_fn of the logits (softmax
 * over the labels; a sigmoid per label for multi-label and one-label models,
 * a reranker's score; the logits themselves for regression), as
 * transformers' text-classification pipeline gives them. */
static int classify(engine_model *m, const batch_input *in, float *logits, float *probs, engine_stats *stats,
                    engine_error *err) {
    if (m->cfg.task != ENGINE_TASK_CLASSIFY)
        return engine_error_set(err, ENGINE_EUNSUPPORTED,
                                "%s is an embedding model (no classification head)",
                                m->cfg.architecture);
    const size_t n = in->n;
    const int K = m->cfg.n_labels;
    float *out = logits ? logits : malloc((n ? n : 1) * (size_t)K * sizeof(float));
    if (!out)
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    head_job job = {.kind = HEAD_CLASSIFY, .logits = out};
    int rc = run_batch(m, in, &job, stats, err);
    if (!rc && probs) {
        memcpy(probs, out, n * (size_t)K * sizeof(float));
        for (size_t i = 0; i < n && m->info.score_fn != ENGINE_SCORE_NONE; i++) {
            float *p = probs + i * K;
            if (m->info.score_fn == ENGINE_SCORE_SIGMOID)
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

int engine_classify(engine_model *m, const char *const *texts, const size_t *lens, size_t n,
                    float *logits, float *probs, engine_error *err) {
    return engine_classify_stats(m, texts, lens, n, logits, probs, NULL, err);
}

int engine_classify_stats(engine_model *m, const char *const *texts, const size_t *lens, size_t n,
                          float *logits, float *probs, engine_stats *stats, engine_error *err) {
    batch_input in = {.a = texts, .a_lens = lens, .n = n};
    return classify(m, &in, logits, probs, stats, err);
}

int engine_classify_pairs(engine_model *m, const char *const *a, const size_t *a_lens, const char *const *b,
                          const size_t *b_lens, size_t n, float *logits, float *probs, engine_stats *stats,
                          engine_error *err) {
    if (!a || !a_lens || !b || !b_lens)
        return engine_error_set(err, ENGINE_EARG, "engine_classify_pairs: NULL argument");
    batch_input in = {.a = a, .a_lens = a_lens, .b = b, .b_lens = b_lens, .n = n};
    return classify(m, &in, logits, probs, stats, err);
}

int engine_embed(engine_model *m, const char *const *texts, const size_t *lens, size_t n,
                 engine_pooling pooling, int normalize, float *out, engine_error *err) {
    if (!out)
        return engine_error_set(err, ENGINE_EARG, "no output buffer");
    if ((unsigned)pooling > ENGINE_POOL_LAST)
        return engine_error_set(err, ENGINE_EARG, "unknown pooling %d", (int)pooling);
    head_job job = {.kind = HEAD_EMBED, .pooling = pooling, .normalize = normalize, .out = out};
    batch_input in = {.a = texts, .a_lens = lens, .n = n};
    return run_batch(m, &in, &job, NULL, err);
}
