/*
 * bert.c - binding BERT/DistilBERT weights and the packed forward pass
 * (see bert.h for the computation).
 *
 * Parallel plan, per layer, each a region of the thread pool:
 *   QKV      three linear layers, each thread a slice of output columns
 *   attend   (sequence, head) items handed out by an atomic counter, so that
 *            long and short sequences balance; S = Q K^T / sqrt(d), softmax,
 *            C = S V, with per-thread score scratch
 *   proj     output projection, column slices
 *   norm     residual + LayerNorm, row slices
 *   ff1      linear + activation, column slices
 *   ff2      linear, column slices
 *   norm     residual + LayerNorm, row slices
 * Column slices are multiples of 16 so every thread's stores stay in its
 * own cache lines.
 */
#include "bert.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* ---- binding ------------------------------------------------------------ */

typedef struct binder {
    bert_weights *w;
    const safetensors *st;
    const char *prefix;
    engine_error *err;
} binder;

static int keep_owned(bert_weights *w, void *p) {
    if (w->n_owned == w->cap_owned) {
        int cap = w->cap_owned ? 2 * w->cap_owned : 64;
        void **grown = realloc(w->owned, (size_t)cap * sizeof *grown);
        if (!grown)
            return -1;
        w->owned = grown;
        w->cap_owned = cap;
    }
    w->owned[w->n_owned++] = p;
    return 0;
}

/* Returns F32 data for `name` with shape (d0) or (d0, d1) (d1 < 0: 1-D). */
static const float *bind(binder *b, const char *name, int d0, int d1, int *rc) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", b->prefix, name);
    const safetensors_tensor *t = safetensors_find(b->st, full);
    if (!t) { /* older checkpoints name LayerNorm parameters gamma/beta */
        char alt[256];
        size_t n = strlen(full);
        if (n > 7 && strcmp(full + n - 7, ".weight") == 0 && strstr(full, "LayerNorm"))
            snprintf(alt, sizeof alt, "%.*s.gamma", (int)(n - 7), full);
        else if (n > 5 && strcmp(full + n - 5, ".bias") == 0 && strstr(full, "LayerNorm"))
            snprintf(alt, sizeof alt, "%.*s.beta", (int)(n - 5), full);
        else
            alt[0] = 0;
        if (alt[0])
            t = safetensors_find(b->st, alt);
    }
    if (!t) {
        *rc = engine_error_set(b->err, ENGINE_ECONFIG, "%s: tensor '%s' is missing (needed by config.json)",
                               safetensors_path(b->st), full);
        return NULL;
    }
    int want_dims = d1 < 0 ? 1 : 2;
    if (t->n_dims != want_dims || t->shape[0] != d0 || (d1 >= 0 && t->shape[1] != d1)) {
        char got[96] = "", want[48];
        for (int i = 0; i < t->n_dims && strlen(got) < 64; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "",
                     (long long)t->shape[i]);
        if (d1 < 0)
            snprintf(want, sizeof want, "%d", d0);
        else
            snprintf(want, sizeof want, "%d, %d", d0, d1);
        *rc = engine_error_set(b->err, ENGINE_ECONFIG,
                               "%s: tensor '%s' has shape [%s] but config.json implies [%s]",
                               safetensors_path(b->st), t->name, got, want);
        return NULL;
    }
    b->w->dtype_mask |= 1 << t->dtype;
    if (t->dtype == ST_F32 && ((uintptr_t)t->data % sizeof(float)) == 0)
        return t->data; /* in place, from the mapping */
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        *rc = engine_error_set(b->err, ENGINE_EUNSUPPORTED,
                               "%s: tensor '%s' has dtype %s; the engine reads F32, F16 and BF16",
                               safetensors_path(b->st), t->name, t->dtype_name);
        return NULL;
    }
    float *out = aligned_alloc(64, ((size_t)t->n_elems * sizeof(float) + 63) / 64 * 64);
    if (!out || keep_owned(b->w, out)) {
        free(out);
        *rc = engine_error_set(b->err, ENGINE_ENOMEM, "%s: out of memory widening '%s'",
                               safetensors_path(b->st), t->name);
        return NULL;
    }
    if (t->dtype == ST_F16)
        kernels_f16_to_f32(t->data, out, t->n_elems);
    else if (t->dtype == ST_BF16)
        kernels_bf16_to_f32(t->data, out, t->n_elems);
    else
        memcpy(out, t->data, t->n_bytes);
    return out;
}

static int bind_linear(binder *b, const char *name, int n_out, int n_in, bert_linear *lin) {
    char key[200];
    int rc = 0;
    snprintf(key, sizeof key, "%s.weight", name);
    lin->w = bind(b, key, n_out, n_in, &rc);
    if (rc)
        return rc;
    snprintf(key, sizeof key, "%s.bias", name);
    lin->b = bind(b, key, n_out, -1, &rc);
    lin->n_out = n_out;
    lin->n_in = n_in;
    return rc;
}

static int bind_norm(binder *b, const char *name, int n, bert_norm *norm) {
    char key[200];
    int rc = 0;
    snprintf(key, sizeof key, "%s.weight", name);
    norm->gamma = bind(b, key, n, -1, &rc);
    if (rc)
        return rc;
    snprintf(key, sizeof key, "%s.bias", name);
    norm->beta = bind(b, key, n, -1, &rc);
    return rc;
}

int bert_weights_bind(bert_weights *w, const model_config *cfg, const safetensors *st,
                      engine_error *err) {
    memset(w, 0, sizeof *w);
    const int is_bert = cfg->arch == ENGINE_ARCH_BERT;
    binder b = {.w = w, .st = st, .prefix = "", .err = err};
    const char *base = is_bert ? "bert." : "distilbert.";
    char probe[64];
    snprintf(probe, sizeof probe, "%sembeddings.word_embeddings.weight", base);
    if (safetensors_find(st, probe))
        b.prefix = base;
    const int H = cfg->hidden, F = cfg->intermediate;
    int rc = 0;
    if (!(w->word = bind(&b, "embeddings.word_embeddings.weight", cfg->vocab_size, H, &rc)) ||
        !(w->pos = bind(&b, "embeddings.position_embeddings.weight", cfg->max_position, H, &rc)))
        return rc;
    if (is_bert && !(w->type = bind(&b, "embeddings.token_type_embeddings.weight",
                                     cfg->type_vocab_size, H, &rc)))
        return rc;
    if ((rc = bind_norm(&b, "embeddings.LayerNorm", H, &w->emb_norm)))
        return rc;
    w->layers = calloc((size_t)cfg->n_layers, sizeof *w->layers);
    if (!w->layers)
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    for (int l = 0; l < cfg->n_layers; l++) {
        bert_layer *L = &w->layers[l];
        char p[128], n[200];
#define BIND_LIN(field, suffix, o, i)                      \
    snprintf(n, sizeof n, "%s%s", p, suffix);              \
    if ((rc = bind_linear(&b, n, o, i, &L->field)))        \
        return rc;
#define BIND_NORM(field, suffix)                           \
    snprintf(n, sizeof n, "%s%s", p, suffix);              \
    if ((rc = bind_norm(&b, n, H, &L->field)))             \
        return rc;
        if (is_bert) {
            snprintf(p, sizeof p, "encoder.layer.%d.", l);
            BIND_LIN(q, "attention.self.query", H, H)
            BIND_LIN(k, "attention.self.key", H, H)
            BIND_LIN(v, "attention.self.value", H, H)
            BIND_LIN(o, "attention.output.dense", H, H)
            BIND_NORM(attn_norm, "attention.output.LayerNorm")
            BIND_LIN(ff1, "intermediate.dense", F, H)
            BIND_LIN(ff2, "output.dense", H, F)
            BIND_NORM(out_norm, "output.LayerNorm")
        } else {
            snprintf(p, sizeof p, "transformer.layer.%d.", l);
            BIND_LIN(q, "attention.q_lin", H, H)
            BIND_LIN(k, "attention.k_lin", H, H)
            BIND_LIN(v, "attention.v_lin", H, H)
            BIND_LIN(o, "attention.out_lin", H, H)
            BIND_NORM(attn_norm, "sa_layer_norm")
            BIND_LIN(ff1, "ffn.lin1", F, H)
            BIND_LIN(ff2, "ffn.lin2", H, F)
            BIND_NORM(out_norm, "output_layer_norm")
        }
#undef BIND_LIN
#undef BIND_NORM
    }
    if (cfg->task != ENGINE_TASK_CLASSIFY)
        return 0;
    /* The head lives outside the encoder prefix. */
    b.prefix = is_bert ? b.prefix : "";
    if ((rc = bind_linear(&b, is_bert ? "pooler.dense" : "pre_classifier", H, H, &w->pre)))
        return rc;
    b.prefix = "";
    const safetensors_tensor *ct = safetensors_find(st, "classifier.weight");
    if (ct && ct->n_dims == 2 && ct->shape[0] != cfg->n_labels)
        return engine_error_set(err, ENGINE_ECONFIG,
                                "%s: tensor 'classifier.weight' has %lld rows but config.json has %d "
                                "labels (id2label)",
                                safetensors_path(st), (long long)ct->shape[0], cfg->n_labels);
    if ((rc = bind_linear(&b, "classifier", cfg->n_labels, H, &w->classifier)))
        return rc;
    w->has_head = 1;
    return 0;
}

void bert_weights_fini(bert_weights *w) {
    for (int i = 0; i < w->n_owned; i++)
        free(w->owned[i]);
    free(w->owned);
    free(w->layers);
    memset(w, 0, sizeof *w);
}

/* ---- forward ------------------------------------------------------------ */

typedef enum stage {
    STAGE_EMBED,
    STAGE_QKV,
    STAGE_ATTEND,
    STAGE_PROJ,
    STAGE_NORM_ATTN,
    STAGE_FF1,
    STAGE_FF2,
    STAGE_NORM_OUT,
} stage;

typedef struct forward {
    const bert_weights *w;
    const model_config *cfg;
    const bert_batch *batch;
    const kernel_ops *ops;
    const bert_layer *layer;
    stage stage;
    float *x, *q, *k, *v, *ctx, *tmp, *ff;
    float *scores;      /* per thread: max_len * max_len */
    int max_len;
    atomic_int next_item;
} forward;

static void run_attend(forward *f, int thread) {
    const int H = f->cfg->hidden, n_heads = f->cfg->n_heads, d = H / n_heads;
    const float scale = 1.0f / sqrtf((float)d);
    float *S = f->scores + (size_t)thread * f->max_len * f->max_len;
    const int n_items = f->batch->n_seqs * n_heads;
    for (;;) {
        int item = atomic_fetch_add_explicit(&f->next_item, 1, memory_order_relaxed);
        if (item >= n_items)
            break;
        int s = item / n_heads, h = item % n_heads;
        int t0 = f->batch->offsets[s], L = f->batch->offsets[s + 1] - t0;
        size_t base = (size_t)t0 * H + (size_t)h * d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, d, scale, f->q + base, H,
                    f->k + base, H, 0.0f, S, L);
        for (int r = 0; r < L; r++)
            f->ops->softmax(S + (size_t)r * L, (size_t)L);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, d, L, 1.0f, S, L, f->v + base, H,
                    0.0f, f->ctx + base, H);
    }
}

static void run_embed(forward *f, int r0, int r1) {
    const int H = f->cfg->hidden;
    const bert_batch *bt = f->batch;
    int s = 0;
    while (s + 1 < bt->n_seqs && bt->offsets[s + 1] <= r0)
        s++;
    for (int t = r0; t < r1; t++) {
        while (bt->offsets[s + 1] <= t)
            s++;
        int pos = t - bt->offsets[s];
        float *row = f->x + (size_t)t * H;
        memcpy(row, f->w->word + (size_t)bt->ids[t] * H, (size_t)H * sizeof(float));
        f->ops->add(row, f->w->pos + (size_t)pos * H, (size_t)H);
        if (f->w->type)
            f->ops->add(row, f->w->type, (size_t)H); /* token_type_ids are all 0 */
        f->ops->layernorm(row, NULL, f->w->emb_norm.gamma, f->w->emb_norm.beta, (size_t)H,
                          f->cfg->layer_norm_eps);
    }
}

static void activate(forward *f, float *y, size_t n) {
    switch (f->cfg->act) {
    case ACT_GELU:
        f->ops->gelu(y, n);
        break;
    case ACT_GELU_TANH:
        f->ops->gelu_tanh(y, n);
        break;
    case ACT_RELU:
        for (size_t i = 0; i < n; i++)
            y[i] = y[i] > 0 ? y[i] : 0;
        break;
    }
}

static void run_stage(void *arg, int thread, int n_threads) {
    forward *f = arg;
    const int T = f->batch->n_tokens, H = f->cfg->hidden, F = f->cfg->intermediate;
    const bert_layer *L = f->layer;
    int b, e;
    switch (f->stage) {
    case STAGE_EMBED:
        threadpool_split(T, 1, thread, n_threads, &b, &e);
        run_embed(f, b, e);
        break;
    case STAGE_QKV:
        threadpool_split(H, 16, thread, n_threads, &b, &e);
        kernels_linear(f->x, T, H, L->q.w, L->q.b, H, f->q, b, e, f->ops);
        kernels_linear(f->x, T, H, L->k.w, L->k.b, H, f->k, b, e, f->ops);
        kernels_linear(f->x, T, H, L->v.w, L->v.b, H, f->v, b, e, f->ops);
        break;
    case STAGE_ATTEND:
        run_attend(f, thread);
        break;
    case STAGE_PROJ:
        threadpool_split(H, 16, thread, n_threads, &b, &e);
        kernels_linear(f->ctx, T, H, L->o.w, L->o.b, H, f->tmp, b, e, f->ops);
        break;
    case STAGE_NORM_ATTN:
    case STAGE_NORM_OUT: {
        const bert_norm *norm = f->stage == STAGE_NORM_ATTN ? &L->attn_norm : &L->out_norm;
        threadpool_split(T, 1, thread, n_threads, &b, &e);
        for (int t = b; t < e; t++)
            f->ops->layernorm(f->tmp + (size_t)t * H, f->x + (size_t)t * H, norm->gamma, norm->beta,
                              (size_t)H, f->cfg->layer_norm_eps);
        break;
    }
    case STAGE_FF1:
        threadpool_split(F, 16, thread, n_threads, &b, &e);
        kernels_linear(f->x, T, H, L->ff1.w, L->ff1.b, F, f->ff, b, e, f->ops);
        for (int t = 0; t < T && e > b; t++)
            activate(f, f->ff + (size_t)t * F + b, (size_t)(e - b));
        break;
    case STAGE_FF2:
        threadpool_split(H, 16, thread, n_threads, &b, &e);
        kernels_linear(f->ff, T, F, L->ff2.w, L->ff2.b, H, f->tmp, b, e, f->ops);
        break;
    }
}

static void run(forward *f, threadpool *pool, stage s) {
    f->stage = s;
    threadpool_run(pool, run_stage, f);
}

static void swap(float **a, float **b) {
    float *t = *a;
    *a = *b;
    *b = t;
}

int bert_encode(const bert_weights *w, const model_config *cfg, const bert_batch *batch,
                threadpool *pool, const kernel_ops *ops, float *hidden, engine_error *err) {
    const size_t T = (size_t)batch->n_tokens, H = (size_t)cfg->hidden, F = (size_t)cfg->intermediate;
    forward f = {.w = w, .cfg = cfg, .batch = batch, .ops = ops};
    for (int s = 0; s < batch->n_seqs; s++) {
        int len = batch->offsets[s + 1] - batch->offsets[s];
        f.max_len = len > f.max_len ? len : f.max_len;
    }
    const int n_threads = threadpool_size(pool);
    /* One allocation for all scratch; x ping-pongs with tmp across norms. */
    size_t n_floats = 5 * T * H + T * F + (size_t)n_threads * f.max_len * f.max_len;
    float *scratch = aligned_alloc(64, (n_floats * sizeof(float) + 63) / 64 * 64);
    if (!scratch)
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory for a batch of %zu tokens", T);
    f.x = hidden;
    f.q = scratch;
    f.k = f.q + T * H;
    f.v = f.k + T * H;
    f.ctx = f.v + T * H;
    f.tmp = f.ctx + T * H;
    f.ff = f.tmp + T * H;
    f.scores = f.ff + T * F;

    run(&f, pool, STAGE_EMBED);
    for (int l = 0; l < cfg->n_layers; l++) {
        f.layer = &w->layers[l];
        run(&f, pool, STAGE_QKV);
        atomic_store(&f.next_item, 0);
        run(&f, pool, STAGE_ATTEND);
        run(&f, pool, STAGE_PROJ);
        run(&f, pool, STAGE_NORM_ATTN); /* tmp = LN(tmp + x) */
        swap(&f.x, &f.tmp);
        run(&f, pool, STAGE_FF1);
        run(&f, pool, STAGE_FF2);
        run(&f, pool, STAGE_NORM_OUT);
        swap(&f.x, &f.tmp);
    }
    if (f.x != hidden)
        memcpy(hidden, f.x, T * H * sizeof(float));
    free(scratch);
    return 0;
}

int bert_classify_head(const bert_weights *w, const model_config *cfg, const bert_batch *batch,
                       const float *hidden, const kernel_ops *ops, float *logits, engine_error *err) {
    const int H = cfg->hidden, n = batch->n_seqs;
    float *cls = malloc((size_t)n * H * 2 * sizeof(float));
    if (!cls)
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    float *pre = cls + (size_t)n * H;
    for (int s = 0; s < n; s++)
        memcpy(cls + (size_t)s * H, hidden + (size_t)batch->offsets[s] * H, (size_t)H * sizeof(float));
    kernels_linear(cls, n, H, w->pre.w, w->pre.b, H, pre, 0, H, ops);
    for (size_t i = 0; i < (size_t)n * H; i++)
        pre[i] = cfg->arch == ENGINE_ARCH_BERT ? tanhf(pre[i]) : (pre[i] > 0 ? pre[i] : 0);
    kernels_linear(pre, n, H, w->classifier.w, w->classifier.b, cfg->n_labels, logits, 0,
                   cfg->n_labels, ops);
    free(cls);
    return 0;
}
