/*
 * bert.c - binding BERT, DistilBERT, RoBERTa and MPNet weights and the
 * packed forward pass (see bert.h for the computation).
 *
 * Parallel plan, per layer, each a region of the thread pool made of
 * chunks that threads claim (threadpool.h):
 *   QKV      three linear layers, chunks of output columns
 *   attend   one chunk per (sequence, head): S = Q K^T / sqrt(d) (+ MPNet's
 *            relative bias), softmax, C = S V, with per-thread scratch for
 *            the scores and the head's keys transposed
 *   proj     output projection, chunks of columns
 *   norm     residual + LayerNorm, chunks of rows
 *   ff1      linear + activation, chunks of columns
 *   ff2      linear, chunks of columns
 *   norm     residual + LayerNorm, chunks of rows
 * Column chunks are multiples of 16 floats so that no two threads write the
 * same cache line; about three chunks per thread keep them balanced.
 * With many tokens (ROW_SPLIT_MIN_TOKENS) linear layers are split by rows
 * instead: each thread keeps its own rows of activations in cache and runs
 * the residual LayerNorm on them right after the projection, so the two
 * norm regions disappear.
 *
 * Reduced-precision layers read their input quantised (int8) or rounded
 * (bf16) once, by rows, into one shared buffer (`prep`): the embedding and
 * norm stages prepare the rows they have just written (the inputs of QKV
 * and FFN up); the attention output and the activation, written by column
 * or (sequence, head) chunks, get a region of their own (prep ctx, prep ff)
 * before the projection that reads them. With the row split each thread
 * prepares its own rows before its products, and no region is added.
 */
#include "bert.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine_int.h"

/* ---- binding ------------------------------------------------------------ */

typedef struct binder {
    bert_weights *w;
    const safetensors *st;
    const char *prefix;
    engine_error *err;
    int pack;   /* linear layers are packed as w->quant says (the encoder's, not the heads') */
    int q8_max; /* int8 weights' largest |q|: the int8 kernels' weight_max */
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

/* Finds `name` and checks its shape (d0) or (d0, d1) (d1 < 0: 1-D) and
 * dtype. */
static const safetensors_tensor *find_checked(binder *b, const char *name, int d0, int d1, int *rc) {
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
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        *rc = engine_error_set(b->err, ENGINE_EUNSUPPORTED,
                               "%s: tensor '%s' has dtype %s; the engine reads F32, F16 and BF16",
                               safetensors_path(b->st), t->name, t->dtype_name);
        return NULL;
    }
    b->w->dtype_mask |= 1 << t->dtype;
    return t;
}

/* F32 data of t: in place from the mapping when it is F32 and aligned, else
 * a widened copy in `out` (kernels_weights_alloc'd; *out NULL when in place).
 * NULL when out of memory. */
static const float *as_f32(const safetensors_tensor *t, float **out) {
    *out = NULL;
    if (t->dtype == ST_F32 && ((uintptr_t)t->data % sizeof(float)) == 0)
        return t->data;
    if (!(*out = kernels_weights_alloc((size_t)t->n_elems * sizeof(float))))
        return NULL;
    if (t->dtype == ST_F16)
        kernels_f16_to_f32(t->data, *out, t->n_elems);
    else if (t->dtype == ST_BF16)
        kernels_bf16_to_f32(t->data, *out, t->n_elems);
    else
        memcpy(*out, t->data, t->n_bytes);
    return *out;
}

static int out_of_memory(binder *b, const safetensors_tensor *t) {
    return engine_error_set(b->err, ENGINE_ENOMEM, "%s: out of memory converting '%s'",
                            safetensors_path(b->st), t->name);
}

/* Returns F32 data for `name` with shape (d0) or (d0, d1) (d1 < 0: 1-D). */
static const float *bind(binder *b, const char *name, int d0, int d1, int *rc) {
    const safetensors_tensor *t = find_checked(b, name, d0, d1, rc);
    if (!t)
        return NULL;
    float *copy;
    const float *data = as_f32(t, &copy);
    if (!data || (copy && keep_owned(b->w, copy))) {
        free(copy);
        *rc = out_of_memory(b, t);
        return NULL;
    }
    b->w->memory_bytes += copy ? (uint64_t)t->n_elems * sizeof(float) : t->n_bytes;
    return data;
}

/* Gives the mapping's pages under [p, p + n) back to the kernel: the data
 * lives on in a packed copy. (Whole pages only; reading them again would
 * fault them back in from the file.) */
static void release_pages(const void *p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo = ((uintptr_t)p + page - 1) / page * page,
                    hi = ((uintptr_t)p + n) / page * page;
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Packs the weight `name` (n_out x n_in) as b->w->quant says. */
static int bind_packed(binder *b, const char *name, int n_out, int n_in, kernel_packed *out) {
    int rc = 0;
    const safetensors_tensor *t = find_checked(b, name, n_out, n_in, &rc);
    if (!t)
        return rc;
    float *copy;
    const float *f32 = as_f32(t, &copy);
    if (!f32)
        return out_of_memory(b, t);
    rc = b->w->quant == ENGINE_QUANT_INT8 ? kernels_pack_q8(f32, n_out, n_in, b->q8_max, out)
                                          : kernels_pack_bf16(f32, n_out, n_in, out);
    free(copy);
    if (rc)
        return out_of_memory(b, t);
    release_pages(t->data, t->n_bytes);
    b->w->memory_bytes += kernels_packed_bytes(out);
    return 0;
}

/* An embedding table: F16 and BF16 in place when the linear layers are in
 * reduced precision (widened per row in the forward), else F32 as bind. */
static int bind_table(binder *b, const char *name, int d0, int d1, bert_table *table) {
    int rc = 0;
    if (b->w->quant != ENGINE_QUANT_NONE) {
        const safetensors_tensor *t = find_checked(b, name, d0, d1, &rc);
        if (!t)
            return rc;
        if (t->dtype == ST_F16 || t->dtype == ST_BF16) {
            table->data = t->data;
            table->dtype = t->dtype;
            b->w->memory_bytes += t->n_bytes;
            return 0;
        }
    }
    table->data = bind(b, name, d0, d1, &rc);
    table->dtype = ST_F32;
    return rc;
}

static int bind_linear(binder *b, const char *name, int n_out, int n_in, bert_linear *lin) {
    char key[200];
    int rc = 0;
    snprintf(key, sizeof key, "%s.weight", name);
    if (b->pack)
        rc = bind_packed(b, key, n_out, n_in, &lin->packed);
    else
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

/* Tensor names by architecture: BERT's (also RoBERTa's, whose modules are
 * BERT's), DistilBERT's, MPNet's. */
enum { NAMES_BERT, NAMES_DISTILBERT, NAMES_MPNET, N_NAMINGS };

/* The tensors of one encoder layer under each naming scheme. */
typedef struct layer_tensor {
    size_t offset;             /* of the bert_linear / bert_norm in bert_layer */
    const char *name[N_NAMINGS];
    int is_norm, out_is_ff, in_is_ff; /* shapes: hidden, or intermediate where set */
} layer_tensor;

static const layer_tensor layer_tensors[] = {
    {offsetof(bert_layer, q), {"attention.self.query", "attention.q_lin", "attention.attn.q"}, 0, 0, 0},
    {offsetof(bert_layer, k), {"attention.self.key", "attention.k_lin", "attention.attn.k"}, 0, 0, 0},
    {offsetof(bert_layer, v), {"attention.self.value", "attention.v_lin", "attention.attn.v"}, 0, 0, 0},
    {offsetof(bert_layer, o), {"attention.output.dense", "attention.out_lin", "attention.attn.o"}, 0, 0, 0},
    {offsetof(bert_layer, attn_norm),
     {"attention.output.LayerNorm", "sa_layer_norm", "attention.LayerNorm"}, 1, 0, 0},
    {offsetof(bert_layer, ff1), {"intermediate.dense", "ffn.lin1", "intermediate.dense"}, 0, 1, 0},
    {offsetof(bert_layer, ff2), {"output.dense", "ffn.lin2", "output.dense"}, 0, 0, 1},
    {offsetof(bert_layer, out_norm), {"output.LayerNorm", "output_layer_norm", "output.LayerNorm"}, 1, 0, 0},
};

/* What differs between the architectures in their checkpoints' names. */
typedef struct arch_names {
    const char *base;              /* the encoder's prefix in task checkpoints */
    const char *layer;             /* format of a layer's prefix */
    int naming;                    /* column of layer_tensors */
    const char *pre, *classifier;  /* the head's two linear layers */
    int pre_under_base;            /* the first head layer lives under `base` (BERT's pooler) */
} arch_names;

static const arch_names *names_of(engine_arch arch) {
    static const arch_names bert = {"bert.", "encoder.layer.%d.", NAMES_BERT, "pooler.dense", "classifier", 1};
    static const arch_names distilbert = {"distilbert.", "transformer.layer.%d.", NAMES_DISTILBERT,
                                          "pre_classifier", "classifier", 0};
    static const arch_names roberta = {"roberta.", "encoder.layer.%d.", NAMES_BERT, "classifier.dense",
                                       "classifier.out_proj", 0};
    static const arch_names mpnet = {"mpnet.", "encoder.layer.%d.", NAMES_MPNET, "classifier.dense",
                                     "classifier.out_proj", 0};
    switch (arch) {
    case ENGINE_ARCH_DISTILBERT:
        return &distilbert;
    case ENGINE_ARCH_ROBERTA:
        return &roberta;
    case ENGINE_ARCH_MPNET:
        return &mpnet;
    case ENGINE_ARCH_BERT:
        break;
    }
    return &bert;
}

int bert_weights_bind(bert_weights *w, const model_config *cfg, const safetensors *st,
                      engine_error *err) {
    return bert_weights_bind_as(w, cfg, st, ENGINE_QUANT_NONE, kernels_scalar(), err);
}

int bert_weights_bind_as(bert_weights *w, const model_config *cfg, const safetensors *st,
                         engine_quantization quant, const kernel_ops *ops, engine_error *err) {
    memset(w, 0, sizeof *w);
    w->quant = quant;
    const arch_names *an = names_of(cfg->arch);
    binder b = {.w = w, .st = st, .prefix = "", .err = err, .q8_max = kernels_q8_for(ops)->weight_max};
    char probe[64];
    snprintf(probe, sizeof probe, "%sembeddings.word_embeddings.weight", an->base);
    if (safetensors_find(st, probe))
        b.prefix = an->base;
    const int H = cfg->hidden, F = cfg->intermediate;
    int rc;
    if ((rc = bind_table(&b, "embeddings.word_embeddings.weight", cfg->vocab_size, H, &w->word)) ||
        (rc = bind_table(&b, "embeddings.position_embeddings.weight", cfg->max_position, H, &w->pos)))
        return rc;
    if (cfg->type_vocab_size > 0 && (rc = bind_table(&b, "embeddings.token_type_embeddings.weight",
                                                     cfg->type_vocab_size, H, &w->type)))
        return rc;
    if ((rc = bind_norm(&b, "embeddings.LayerNorm", H, &w->emb_norm)))
        return rc;
    if (cfg->arch == ENGINE_ARCH_MPNET &&
        !(w->rel_bias = bind(&b, "encoder.relative_attention_bias.weight", cfg->rel_buckets, cfg->n_heads, &rc)))
        return rc;
    w->layers = calloc((size_t)cfg->n_layers, sizeof *w->layers);
    if (!w->layers)
        return engine_error_set(err, ENGINE_ENOMEM, "out of memory");
    w->n_layers = cfg->n_layers;
    b.pack = quant != ENGINE_QUANT_NONE;
    for (int l = 0; l < cfg->n_layers; l++) {
        char prefix[64], name[200];
        snprintf(prefix, sizeof prefix, an->layer, l);
        for (size_t i = 0; i < sizeof layer_tensors / sizeof *layer_tensors; i++) {
            const layer_tensor *t = &layer_tensors[i];
            char *field = (char *)&w->layers[l] + t->offset;
            snprintf(name, sizeof name, "%s%s", prefix, t->name[an->naming]);
            if (t->is_norm)
                rc = bind_norm(&b, name, H, (bert_norm *)field);
            else
                rc = bind_linear(&b, name, t->out_is_ff ? F : H, t->in_is_ff ? F : H, (bert_linear *)field);
            if (rc)
                return rc;
        }
    }
    b.pack = 0; /* the heads stay fp32: a few rows, and the logits' last step */
    if (cfg->task != ENGINE_TASK_CLASSIFY)
        return 0;
    /* The head lives outside the encoder prefix (BERT's pooler inside it). */
    b.prefix = an->pre_under_base ? b.prefix : "";
    if ((rc = bind_linear(&b, an->pre, H, H, &w->pre)))
        return rc;
    b.prefix = "";
    char out_name[64];
    snprintf(out_name, sizeof out_name, "%s.weight", an->classifier);
    const safetensors_tensor *ct = safetensors_find(st, out_name);
    if (ct && ct->n_dims == 2 && ct->shape[0] != cfg->n_labels)
        return engine_error_set(err, ENGINE_ECONFIG,
                                "%s: tensor '%s' has %lld rows but config.json has %d labels (id2label)",
                                safetensors_path(st), out_name, (long long)ct->shape[0], cfg->n_labels);
    return bind_linear(&b, an->classifier, cfg->n_labels, H, &w->classifier);
}

void bert_weights_fini(bert_weights *w) {
    for (int l = 0; w->layers && l < w->n_layers; l++) {
        bert_layer *layer = &w->layers[l];
        bert_linear *lins[] = {&layer->q, &layer->k, &layer->v, &layer->o, &layer->ff1, &layer->ff2};
        for (size_t i = 0; i < sizeof lins / sizeof *lins; i++)
            kernels_packed_fini(&lins[i]->packed);
    }
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
    STAGE_PREP_CTX, /* reduced precision, column split: the projection's input */
    STAGE_PROJ,
    STAGE_NORM_ATTN,
    STAGE_FF1,
    STAGE_PREP_FF,  /* reduced precision, column split: FFN down's input */
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
    float *scores;      /* per thread: attend_floats (scores, and K transposed) */
    float *rel;         /* MPNet: per head, 2 max_len - 1 biases by key - query; else NULL */
    int max_len;
    int rows_per_chunk; /* row stages */
    int row_split;      /* linear layers split by rows (many tokens) instead of columns */
    int gemm_rows;      /* rows per linear-layer chunk when row_split */
    int h_width, f_width; /* column stages: chunk widths over hidden / intermediate */
    int is_last_layer;
    /* Reduced precision: the kernels, and the prepared input of the linear
     * layer that runs next (rows of k_pad values of its input width). */
    engine_quantization quant;
    const kernel_q8_ops *q8;
    const kernel_bf16_ops *bf16;
    void *prep;           /* u8 (int8) or bf16 rows */
    float *prep_scale;    /* int8: per row */
    int32_t *prep_zero;   /* int8: per row */
} forward;

/* Input width k padded as the packed weights pad it. */
static int pad_k(engine_quantization quant, int k) {
    return quant == ENGINE_QUANT_INT8 ? (k + 3) / 4 * 4 : (k + 1) / 2 * 2;
}

/* Prepares rows [r0, r1) of `in` (rows of k floats) as the input of the next
 * reduced-precision linear layer. */
static void prep_rows(forward *f, const float *in, int k, int r0, int r1) {
    const int kp = pad_k(f->quant, k);
    if (r1 <= r0)
        return;
    if (f->quant == ENGINE_QUANT_INT8)
        f->q8->quantize(in + (size_t)r0 * k, r1 - r0, k, k, (uint8_t *)f->prep + (size_t)r0 * kp, kp, kp,
                        f->prep_scale + r0, f->prep_zero + r0);
    else
        f->bf16->round(in + (size_t)r0 * k, r1 - r0, k, k, (uint16_t *)f->prep + (size_t)r0 * kp, kp, kp);
}

/* out[r0:r1, n0:n1] = in[r0:r1] . W[n0:n1]^T + b, for a layer stored in any
 * precision (in rows of lin->n_in floats; reduced precision reads the
 * prepared rows instead). */
static void linear(const forward *f, const bert_linear *lin, const float *in, int r0, int r1, float *out,
                   int n0, int n1) {
    const int k = lin->n_in, n = lin->n_out, kp = pad_k(f->quant, k);
    if (r1 <= r0 || n1 <= n0)
        return;
    switch (f->quant) {
    case ENGINE_QUANT_NONE:
        kernels_linear(in + (size_t)r0 * k, r1 - r0, k, lin->w, lin->b, n, out + (size_t)r0 * n, n0, n1,
                       f->ops);
        break;
    case ENGINE_QUANT_INT8:
        f->q8->gemm(r1 - r0, (const uint8_t *)f->prep + (size_t)r0 * kp, kp, f->prep_scale + r0,
                    f->prep_zero + r0, &lin->packed, n0, n1, lin->b, out + (size_t)r0 * n, n);
        break;
    case ENGINE_QUANT_BF16:
        f->bf16->gemm(r1 - r0, (const uint16_t *)f->prep + (size_t)r0 * kp, kp, &lin->packed, n0, n1, lin->b,
                      out + (size_t)r0 * n, n);
        break;
    }
}

/* Score rows are padded to whole vectors of 16 (the padding columns hold
 * zeros that no one reads). */
static size_t pad16(size_t n) { return (n + 15) / 16 * 16; }

/* A thread's attention scratch for sequences of up to L tokens: the scores
 * (L rows of pad16(L)) and one head's keys transposed (d rows of pad16(L)). */
static size_t attend_floats(const model_config *cfg, size_t L) {
    return (L + (size_t)(cfg->hidden / cfg->n_heads)) * pad16(L);
}

/* S = Q K^T / sqrt(d). Where the kernel set transposes, as Q times the
 * head's keys transposed and scaled: then both products of attention
 * broadcast A's values over rows of B (gemm_nn) instead of reducing a dot
 * product's lanes for every score (gemm_nt), which at a head's 64 values
 * cost as much as the products. */
static void run_attend(forward *f, int item, int thread) {
    const int H = f->cfg->hidden, n_heads = f->cfg->n_heads, d = H / n_heads;
    const float scale = 1.0f / sqrtf((float)d);
    float *S = f->scores + (size_t)thread * attend_floats(f->cfg, (size_t)f->max_len);
    int s = item / n_heads, h = item % n_heads;
    int t0 = f->batch->offsets[s], L = f->batch->offsets[s + 1] - t0;
    const int Lp = f->ops->transpose ? (int)pad16((size_t)L) : L; /* a score row's stride */
    size_t base = (size_t)t0 * H + (size_t)h * d;
    if (f->ops->transpose) {
        float *Kt = S + (size_t)L * Lp;
        f->ops->transpose(f->k + base, L, d, H, scale, Kt, Lp);
        f->ops->gemm_nn(L, Lp, d, f->q + base, H, Kt, Lp, S, Lp);
    } else {
        f->ops->gemm_nt(L, L, d, scale, f->q + base, H, f->k + base, H, NULL, S, L);
    }
    /* MPNet: row r gets bias[c - r] at column c */
    const float *bias = f->rel ? f->rel + (size_t)h * (2 * f->max_len - 1) + f->max_len - 1 : NULL;
    for (int r = 0; r < L; r++) {
        if (bias)
            f->ops->add(S + (size_t)r * Lp, bias - r, (size_t)L);
        f->ops->softmax(S + (size_t)r * Lp, (size_t)L);
    }
    f->ops->gemm_nn(L, d, L, S, Lp, f->v + base, H, f->ctx + base, H);
}

/* row = table[i] (add 0) or row += table[i] (add 1), widening F16 / BF16
 * rows a piece at a time. */
static void table_row(const forward *f, const bert_table *table, int i, int add, float *row) {
    const size_t H = (size_t)f->cfg->hidden;
    if (table->dtype == ST_F32) {
        const float *src = (const float *)table->data + (size_t)i * H;
        if (add)
            f->ops->add(row, src, H);
        else
            memcpy(row, src, H * sizeof(float));
        return;
    }
    const uint8_t *src = (const uint8_t *)table->data + (size_t)i * H * 2; /* 2 bytes a value */
    float piece[256];
    for (size_t j = 0; j < H; j += 256) {
        const size_t n = H - j < 256 ? H - j : 256;
        float *dst = add ? piece : row + j;
        if (table->dtype == ST_F16)
            kernels_f16_to_f32(src + 2 * j, dst, n);
        else
            kernels_bf16_to_f32(src + 2 * j, dst, n);
        if (add)
            f->ops->add(row + j, piece, n);
    }
}

static void run_embed(forward *f, int r0, int r1) {
    const int H = f->cfg->hidden, pad = f->cfg->position_pad;
    const bert_batch *bt = f->batch;
    int s = 0;
    while (s + 1 < bt->n_seqs && bt->offsets[s + 1] <= r0)
        s++;
    /* RoBERTa-style positions count the sequence's tokens that are not the
     * padding id, from its start (which may lie before this chunk). */
    int counted = 0;
    for (int t = bt->offsets[s]; pad >= 0 && t < r0; t++)
        counted += bt->ids[t] != pad;
    for (int t = r0; t < r1; t++) {
        while (bt->offsets[s + 1] <= t) {
            s++;
            counted = 0;
        }
        int pos = t - bt->offsets[s];
        if (pad >= 0)
            pos = bt->ids[t] == pad ? pad : pad + ++counted;
        float *row = f->x + (size_t)t * H;
        table_row(f, &f->w->word, bt->ids[t], 0, row);
        table_row(f, &f->w->pos, pos, 1, row);
        if (f->w->type.data)
            table_row(f, &f->w->type, bt->types ? bt->types[t] : 0, 1, row);
        f->ops->layernorm(row, NULL, f->w->emb_norm.gamma, f->w->emb_norm.beta, (size_t)H,
                          f->cfg->layer_norm_eps);
    }
    if (f->quant != ENGINE_QUANT_NONE && !f->row_split)
        prep_rows(f, f->x, H, r0, r1); /* the first layer's QKV input */
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

static int min_int(int a, int b) { return a < b ? a : b; }

/* Measured on the DistilBERT-base shape, 2 threads: columns win at 512
 * tokens, rows at 1024 and above. */
#define ROW_SPLIT_MIN_TOKENS 768

/* Row-split linear stages: a chunk is a block of rows through all output
 * columns, so the residual LayerNorm of those rows follows at once, while
 * they are in cache (the separate norm stages are skipped). */
static void run_rows(forward *f, int chunk) {
    const int T = f->batch->n_tokens, H = f->cfg->hidden, F = f->cfg->intermediate;
    const bert_layer *L = f->layer;
    const int r0 = chunk * f->gemm_rows, r1 = min_int(T, r0 + f->gemm_rows), n = r1 - r0;
    const size_t of = (size_t)r0 * F;
    const bert_norm *norm = NULL;
    const int lowp = f->quant != ENGINE_QUANT_NONE;
    switch (f->stage) {
    case STAGE_QKV:
        if (lowp)
            prep_rows(f, f->x, H, r0, r1);
        linear(f, &L->q, f->x, r0, r1, f->q, 0, H);
        linear(f, &L->k, f->x, r0, r1, f->k, 0, H);
        linear(f, &L->v, f->x, r0, r1, f->v, 0, H);
        return;
    case STAGE_PROJ:
        if (lowp)
            prep_rows(f, f->ctx, H, r0, r1);
        linear(f, &L->o, f->ctx, r0, r1, f->tmp, 0, H);
        norm = &L->attn_norm;
        break;
    case STAGE_FF1:
        if (lowp)
            prep_rows(f, f->x, H, r0, r1);
        linear(f, &L->ff1, f->x, r0, r1, f->ff, 0, F);
        activate(f, f->ff + of, (size_t)n * F);
        return;
    case STAGE_FF2:
        if (lowp)
            prep_rows(f, f->ff, F, r0, r1);
        linear(f, &L->ff2, f->ff, r0, r1, f->tmp, 0, H);
        norm = &L->out_norm;
        break;
    default:
        return;
    }
    for (int t = r0; t < r1; t++)
        f->ops->layernorm(f->tmp + (size_t)t * H, f->x + (size_t)t * H, norm->gamma, norm->beta, (size_t)H,
                          f->cfg->layer_norm_eps);
}

static void run_chunk(void *arg, int chunk, int thread) {
    forward *f = arg;
    const int T = f->batch->n_tokens, H = f->cfg->hidden, F = f->cfg->intermediate;
    const bert_layer *L = f->layer;
    const int r0 = chunk * f->rows_per_chunk, r1 = min_int(T, r0 + f->rows_per_chunk);
    const int h0 = chunk * f->h_width, h1 = min_int(H, h0 + f->h_width);
    if (f->row_split && f->stage != STAGE_EMBED && f->stage != STAGE_ATTEND) {
        run_rows(f, chunk);
        return;
    }
    switch (f->stage) {
    case STAGE_EMBED:
        run_embed(f, r0, r1);
        break;
    case STAGE_QKV: {
        const int per = (H + f->h_width - 1) / f->h_width, m = chunk / per;
        const bert_linear *lin = m == 0 ? &L->q : m == 1 ? &L->k : &L->v;
        float *out = m == 0 ? f->q : m == 1 ? f->k : f->v;
        const int c0 = (chunk % per) * f->h_width;
        linear(f, lin, f->x, 0, T, out, c0, min_int(H, c0 + f->h_width));
        break;
    }
    case STAGE_ATTEND:
        run_attend(f, chunk, thread);
        break;
    case STAGE_PREP_CTX:
        prep_rows(f, f->ctx, H, r0, r1);
        break;
    case STAGE_PROJ:
        linear(f, &L->o, f->ctx, 0, T, f->tmp, h0, h1);
        break;
    case STAGE_NORM_ATTN:
    case STAGE_NORM_OUT: {
        const bert_norm *norm = f->stage == STAGE_NORM_ATTN ? &L->attn_norm : &L->out_norm;
        for (int t = r0; t < r1; t++)
            f->ops->layernorm(f->tmp + (size_t)t * H, f->x + (size_t)t * H, norm->gamma, norm->beta,
                              (size_t)H, f->cfg->layer_norm_eps);
        /* tmp becomes x: FFN up's input, or the next layer's QKV input */
        if (f->quant != ENGINE_QUANT_NONE && (f->stage == STAGE_NORM_ATTN || !f->is_last_layer))
            prep_rows(f, f->tmp, H, r0, r1);
        break;
    }
    case STAGE_FF1: {
        const int c0 = chunk * f->f_width, c1 = min_int(F, c0 + f->f_width);
        linear(f, &L->ff1, f->x, 0, T, f->ff, c0, c1);
        for (int t = 0; t < T; t++)
            activate(f, f->ff + (size_t)t * F + c0, (size_t)(c1 - c0));
        break;
    }
    case STAGE_PREP_FF:
        prep_rows(f, f->ff, F, r0, r1);
        break;
    case STAGE_FF2:
        linear(f, &L->ff2, f->ff, 0, T, f->tmp, h0, h1);
        break;
    }
}

static void run(forward *f, threadpool *pool, stage s) {
    const int T = f->batch->n_tokens, H = f->cfg->hidden, F = f->cfg->intermediate;
    int n_chunks = 0;
    switch (s) {
    case STAGE_PREP_CTX:
    case STAGE_PREP_FF:
        if (f->quant == ENGINE_QUANT_NONE || f->row_split)
            return; /* nothing to prepare, or each row chunk prepares its own */
        /* fall through */
    case STAGE_EMBED:
    case STAGE_NORM_ATTN:
    case STAGE_NORM_OUT:
        n_chunks = (T + f->rows_per_chunk - 1) / f->rows_per_chunk;
        break;
    case STAGE_QKV:
        n_chunks = 3 * ((H + f->h_width - 1) / f->h_width);
        break;
    case STAGE_ATTEND:
        n_chunks = f->batch->n_seqs * f->cfg->n_heads;
        break;
    case STAGE_PROJ:
    case STAGE_FF2:
        n_chunks = (H + f->h_width - 1) / f->h_width;
        break;
    case STAGE_FF1:
        n_chunks = (F + f->f_width - 1) / f->f_width;
        break;
    }
    if (f->row_split && s != STAGE_EMBED && s != STAGE_ATTEND) {
        if (s == STAGE_NORM_ATTN || s == STAGE_NORM_OUT)
            return; /* done with the projection's rows */
        n_chunks = (T + f->gemm_rows - 1) / f->gemm_rows;
    }
    f->stage = s;
    threadpool_run(pool, n_chunks, run_chunk, f);
}

/* Column chunk width: about three chunks per thread, a multiple of 16
 * floats (whole cache lines per thread), at least 32. */
static int column_width(int n, int n_threads) {
    int w = (n + 3 * n_threads - 1) / (3 * n_threads);
    w = (w + 15) / 16 * 16;
    return w < 32 ? 32 : w;
}

static void swap(float **a, float **b) {
    float *t = *a;
    *a = *b;
    *b = t;
}

static int max_seq_len(const bert_batch *batch) {
    int max_len = 0;
    for (int s = 0; s < batch->n_seqs; s++) {
        int len = batch->offsets[s + 1] - batch->offsets[s];
        max_len = len > max_len ? len : max_len;
    }
    return max_len;
}

/* Floats of MPNet's relative bias table for sequences of up to L tokens. */
static size_t rel_floats(const model_config *cfg, size_t L) {
    return cfg->arch == ENGINE_ARCH_MPNET ? ((size_t)cfg->n_heads * (2 * L - 1) + 15) / 16 * 16 : 0;
}

size_t bert_scratch_floats(const model_config *cfg, const bert_batch *batch, int n_threads) {
    const size_t T = (size_t)batch->n_tokens, L = (size_t)max_seq_len(batch);
    /* q, k, v, ctx, tmp (T x H each), ff (T x F), per-thread attention scratch,
     * MPNet's bias table; each part rounded up to whole cache lines. */
    return 5 * ((T * cfg->hidden + 15) / 16 * 16) + (T * cfg->intermediate + 15) / 16 * 16 +
           (size_t)n_threads * attend_floats(cfg, L) + rel_floats(cfg, L);
}

/* transformers' MPNetEncoder.relative_position_bucket(key - query) with 32
 * buckets and max distance 128: half for each direction, 8 exact distances,
 * then logarithmic up to 128. The logarithm is float32 arithmetic as torch
 * computes it (n.float() / 8, log, / log(16), * 8, truncated), so the
 * bucket boundaries agree. */
static int mpnet_bucket(int key_minus_query) {
    const int half = MODEL_MPNET_BUCKETS / 2, exact = half / 2;
    int n = -key_minus_query, ret = 0;
    if (n < 0) {
        ret = half;
        n = -n;
    }
    if (n < exact)
        return ret + n;
    const float scaled = logf((float)n / (float)exact) / (float)log(128.0 / exact) * (float)(half - exact);
    const int large = exact + (int)scaled;
    return ret + (large < half - 1 ? large : half - 1);
}

/* MPNet's bias for every key - query distance of sequences up to max_len
 * tokens, head by head (compute_position_bias, shared by all layers). */
static void fill_rel_bias(forward *f) {
    const int heads = f->cfg->n_heads, span = 2 * f->max_len - 1;
    for (int d = -(f->max_len - 1); d < f->max_len; d++) {
        const float *row = f->w->rel_bias + (size_t)mpnet_bucket(d) * heads;
        for (int h = 0; h < heads; h++)
            f->rel[(size_t)h * span + d + f->max_len - 1] = row[h];
    }
}

/* The prepared inputs: rows of the wider input (hidden or intermediate),
 * padded, in bytes; then per-row scales and zero points for int8. */
static size_t prep_bytes(engine_quantization quant, const model_config *cfg, size_t T) {
    const int kp = pad_k(quant, cfg->hidden > cfg->intermediate ? cfg->hidden : cfg->intermediate);
    return (T * (size_t)kp * (quant == ENGINE_QUANT_INT8 ? 1 : 2) + 63) / 64 * 64;
}

size_t bert_scratch_lowp_floats(const bert_weights *w, const model_config *cfg, const bert_batch *batch) {
    if (w->quant == ENGINE_QUANT_NONE)
        return 0;
    const size_t T = (size_t)batch->n_tokens, per_row = (T + 15) / 16 * 16;
    return prep_bytes(w->quant, cfg, T) / sizeof(float) + (w->quant == ENGINE_QUANT_INT8 ? 2 * per_row : 0);
}

void bert_encode(const bert_weights *w, const model_config *cfg, const bert_batch *batch,
                 threadpool *pool, const kernel_ops *ops, float *hidden, float *scratch) {
    const size_t T = (size_t)batch->n_tokens, H = (size_t)cfg->hidden, F = (size_t)cfg->intermediate;
    forward f = {.w = w, .cfg = cfg, .batch = batch, .ops = ops};
    f.max_len = max_seq_len(batch);
    const int n_threads = threadpool_size(pool);
    f.rows_per_chunk = (int)((T + 4 * (size_t)n_threads - 1) / (4 * (size_t)n_threads));
    f.rows_per_chunk = f.rows_per_chunk < 1 ? 1 : f.rows_per_chunk;
    f.h_width = column_width(cfg->hidden, n_threads);
    /* Many tokens: split linear layers by rows (each thread its own rows of
     * activations, all of W); few tokens: by columns (each thread its own
     * part of W, which then dominates the traffic). */
    f.row_split = n_threads > 1 && T >= ROW_SPLIT_MIN_TOKENS;
    f.gemm_rows = (int)((T + 3 * (size_t)n_threads - 1) / (3 * (size_t)n_threads));
    f.gemm_rows = (f.gemm_rows + 5) / 6 * 6;
    f.f_width = column_width(cfg->intermediate, n_threads);
    const size_t th = (T * H + 15) / 16 * 16, tf = (T * F + 15) / 16 * 16;
    f.x = hidden;
    f.q = scratch;
    f.k = f.q + th;
    f.v = f.k + th;
    f.ctx = f.v + th;
    f.tmp = f.ctx + th;
    f.ff = f.tmp + th;
    f.scores = f.ff + tf;
    if (w->rel_bias) {
        f.rel = f.scores + (size_t)n_threads * attend_floats(cfg, (size_t)f.max_len);
        fill_rel_bias(&f);
    }
    f.quant = w->quant;
    if (f.quant != ENGINE_QUANT_NONE) {
        f.q8 = kernels_q8_for(ops);
        /* Weights packed for 8-bit kernels would saturate 7-bit ones (plain
         * AVX2): such a mix, which engine.c never makes, runs on the
         * reference. */
        if (f.quant == ENGINE_QUANT_INT8 && w->layers[0].q.packed.qmax > f.q8->weight_max)
            f.q8 = kernels_q8_scalar();
        f.bf16 = kernels_bf16_for(ops);
        f.prep = scratch + bert_scratch_floats(cfg, batch, n_threads);
        f.prep_scale = (float *)((char *)f.prep + prep_bytes(f.quant, cfg, T));
        f.prep_zero = (int32_t *)(f.prep_scale + (T + 15) / 16 * 16);
    }

    run(&f, pool, STAGE_EMBED);
    for (int l = 0; l < cfg->n_layers; l++) {
        f.layer = &w->layers[l];
        f.is_last_layer = l == cfg->n_layers - 1;
        run(&f, pool, STAGE_QKV);
        run(&f, pool, STAGE_ATTEND);
        run(&f, pool, STAGE_PREP_CTX);
        run(&f, pool, STAGE_PROJ);
        run(&f, pool, STAGE_NORM_ATTN); /* tmp = LN(tmp + x) */
        swap(&f.x, &f.tmp);
        run(&f, pool, STAGE_FF1);
        run(&f, pool, STAGE_PREP_FF);
        run(&f, pool, STAGE_FF2);
        run(&f, pool, STAGE_NORM_OUT);
        swap(&f.x, &f.tmp);
    }
    if (f.x != hidden)
        memcpy(hidden, f.x, T * H * sizeof(float));
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
        pre[i] = cfg->arch == ENGINE_ARCH_DISTILBERT ? (pre[i] > 0 ? pre[i] : 0) : tanhf(pre[i]);
    kernels_linear(pre, n, H, w->classifier.w, w->classifier.b, cfg->n_labels, logits, 0,
                   cfg->n_labels, ops);
    free(cls);
    return 0;
}
