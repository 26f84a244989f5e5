/*
 * torchbin.c - PyTorch zip checkpoint reader (format in torchbin.h).
 *
 * Order of checks, each before anything depends on it:
 *  1. libzip opens the archive with ZIP_CHECKCONS (central and local
 *     headers agree, names unique); no entry name is absolute or has a ".."
 *     component; exactly one "<p>/data.pkl" names the top folder <p>;
 *  2. <p>/byteorder, when present, says "little";
 *  3. data.pkl (at most TORCHBIN_MAX_PICKLE_BYTES) runs through the
 *     restricted unpickler below and must yield a dict of name -> tensor;
 *  4. persistent ids naming one storage key agree on type and numel; each
 *     storage a tensor uses is <p>/data/<key>, exactly numel * element size
 *     bytes, read through libzip (CRC checked at the end of every entry);
 *     the compressed bytes of all entries read fit in the file (entries do
 *     not overlap) and deflated ones inflate within
 *     TORCHBIN_MAX_INFLATE_RATIO;
 *  5. per tensor: shape and stride agree, the stride is contiguous, and
 *     storage_offset + numel lies inside the storage; no name repeats.
 *
 * The unpickler is a loop over opcodes with an explicit value stack: it
 * never recurses, so nesting cannot exhaust the C stack, and every byte it
 * allocates is charged against TORCHBIN_MAX_UNPICKLE_BYTES. Values live in
 * an arena freed in one go; strings point into data.pkl. Globals are
 * looked up in a fixed table and become tags, never code: REDUCE on a tag
 * builds an empty dict (OrderedDict) or records a tensor's arguments.
 */
#include "torchbin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include "engine_int.h"

/* ---- the accepted globals ------------------------------------------------ */

typedef enum global_kind { G_ORDERED_DICT, G_REBUILD_TENSOR, G_REBUILD_PARAMETER, G_STORAGE } global_kind;

typedef struct global_def {
    const char *module, *name;
    global_kind kind;
    safetensors_dtype dtype; /* G_STORAGE: the element type, its name and size */
    const char *dtype_name;
    int elem_size;
} global_def;

/* Storage types are type tags in a state dict (never constructed); the
 * integer and F64 ones appear as buffers (BERT's position_ids is int64). */
static const global_def globals[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT, 0, NULL, 0},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR, 0, NULL, 0},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER, 0, NULL, 0},
    {"torch", "FloatStorage", G_STORAGE, ST_F32, "F32", 4},
    {"torch", "HalfStorage", G_STORAGE, ST_F16, "F16", 2},
    {"torch", "BFloat16Storage", G_STORAGE, ST_BF16, "BF16", 2},
    {"torch", "DoubleStorage", G_STORAGE, ST_F64, "F64", 8},
    {"torch", "LongStorage", G_STORAGE, ST_I64, "I64", 8},
    {"torch", "IntStorage", G_STORAGE, ST_I32, "I32", 4},
    {"torch", "ShortStorage", G_STORAGE, ST_I16, "I16", 2},
    {"torch", "CharStorage", G_STORAGE, ST_I8, "I8", 1},
    {"torch", "ByteStorage", G_STORAGE, ST_U8, "U8", 1},
    {"torch", "BoolStorage", G_STORAGE, ST_BOOL, "BOOL", 1},
};

/* Names of every pickle opcode (protocols 0-5), for refusal messages. */
static const char *const opcode_names[256] = {
    ['('] = "MARK", ['.'] = "STOP", ['0'] = "POP", ['1'] = "POP_MARK", ['2'] = "DUP",
    ['F'] = "FLOAT", ['I'] = "INT", ['J'] = "BININT", ['K'] = "BININT1", ['L'] = "LONG",
    ['M'] = "BININT2", ['N'] = "NONE", ['P'] = "PERSID", ['Q'] = "BINPERSID", ['R'] = "REDUCE",
    ['S'] = "STRING", ['T'] = "BINSTRING", ['U'] = "SHORT_BINSTRING", ['V'] = "UNICODE",
    ['X'] = "BINUNICODE", ['a'] = "APPEND", ['b'] = "BUILD", ['c'] = "GLOBAL", ['d'] = "DICT",
    ['}'] = "EMPTY_DICT", ['e'] = "APPENDS", ['g'] = "GET", ['h'] = "BINGET", ['i'] = "INST",
    ['j'] = "LONG_BINGET", ['l'] = "LIST", [']'] = "EMPTY_LIST", ['o'] = "OBJ", ['p'] = "PUT",
    ['q'] = "BINPUT", ['r'] = "LONG_BINPUT", ['s'] = "SETITEM", ['t'] = "TUPLE",
    [')'] = "EMPTY_TUPLE", ['u'] = "SETITEMS", ['G'] = "BINFLOAT", ['B'] = "BINBYTES",
    ['C'] = "SHORT_BINBYTES", [0x80] = "PROTO", [0x81] = "NEWOBJ", [0x82] = "EXT1",
    [0x83] = "EXT2", [0x84] = "EXT4", [0x85] = "TUPLE1", [0x86] = "TUPLE2", [0x87] = "TUPLE3",
    [0x88] = "NEWTRUE", [0x89] = "NEWFALSE", [0x8a] = "LONG1", [0x8b] = "LONG4",
    [0x8c] = "SHORT_BINUNICODE", [0x8d] = "BINUNICODE8", [0x8e] = "BINBYTES8",
    [0x8f] = "EMPTY_SET", [0x90] = "ADDITEMS", [0x91] = "FROZENSET", [0x92] = "NEWOBJ_EX",
    [0x93] = "STACK_GLOBAL", [0x94] = "MEMOIZE", [0x95] = "FRAME", [0x96] = "BYTEARRAY8",
    [0x97] = "NEXT_BUFFER", [0x98] = "READONLY_BUFFER",
};

/* ---- pickled values ------------------------------------------------------ */

typedef enum value_kind {
    V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE, V_TENSOR,
} value_kind;

static const char *const kind_names[] = {"None", "bool", "int", "float", "str", "tuple",
                                         "list", "dict", "global", "storage", "tensor"};

/* _rebuild_tensor_v2's arguments, checked against the storage later, when
 * the tensor's name is known. */
typedef struct tensor_args {
    uint32_t pid; /* index into unpickler.pids */
    int n_dims;
    int64_t offset;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    int64_t stride[SAFETENSORS_MAX_DIMS];
} tensor_args;

typedef struct value value;
struct value {
    uint8_t kind;
    uint8_t depth; /* 1 + the deepest value it held when built */
    uint32_t n;    /* str: bytes; tuple/list: items; dict: 2 per pair (key, value) */
    union {
        int64_t i;
        const char *s; /* inside data.pkl, not NUL-terminated */
        struct {
            value **items;
            uint32_t cap;
        } seq;
        const global_def *global;
        uint32_t pid;
        tensor_args *tensor;
    } u;
};

/* A persistent id: ('storage', type, key, location, numel). */
typedef struct pid_rec {
    const char *key;
    uint32_t key_len;
    const global_def *type;
    uint64_t numel;
    uint32_t storage; /* after dedup_storages: index of the storage it names */
} pid_rec;

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} chunk;

typedef struct unpickler {
    const char *label;
    const uint8_t *start, *p, *end;
    engine_error *err;
    size_t charged; /* bytes against TORCHBIN_MAX_UNPICKLE_BYTES */
    chunk *chunks;
    value **stack;
    size_t n_stack, cap_stack;
    size_t marks[TORCHBIN_MAX_DEPTH];
    int n_marks;
    value **memo;
    size_t n_memo, cap_memo;
    pid_rec *pids;
    size_t n_pids, cap_pids;
} unpickler;

/* Copies at most 80 bytes of s into out (>= 84 bytes) with anything but
 * printable ASCII as '?', so that hostile names cannot garble a log line. */
static const char *printable(char *out, const char *s, size_t n) {
    size_t k = 0;
    for (; k < n && k < 80; k++)
        out[k] = s[k] >= 0x20 && s[k] < 0x7f ? s[k] : '?';
    if (k < n)
        out[k++] = '.', out[k++] = '.', out[k++] = '.';
    out[k] = 0;
    return out;
}

static int fail(unpickler *u, const char *fmt, ...) ENGINE_PRINTF(2, 3);
static int fail(unpickler *u, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return engine_error_set(u->err, ENGINE_EFORMAT, "%s: data.pkl at byte %zu: %s", u->label,
                            (size_t)(u->p - u->start), msg);
}

static int charge(unpickler *u, size_t bytes) {
    if (bytes > TORCHBIN_MAX_UNPICKLE_BYTES - u->charged)
        return fail(u, "unpickling needs more than %u MiB; not a state dict torch.save wrote",
                    TORCHBIN_MAX_UNPICKLE_BYTES >> 20);
    u->charged += bytes;
    return 0;
}

static void *arena_alloc(unpickler *u, size_t bytes) {
    bytes = (bytes + 15) & ~(size_t)15;
    if (!u->chunks || u->chunks->cap - u->chunks->used < bytes) {
        size_t cap = bytes > 65536 ? bytes : 65536;
        if (charge(u, sizeof(chunk) + cap))
            return NULL;
        chunk *c = malloc(sizeof(chunk) + cap);
        if (!c) {
            engine_error_set(u->err, ENGINE_ENOMEM, "%s: out of memory unpickling", u->label);
            return NULL;
        }
        c->next = u->chunks;
        c->used = 0;
        c->cap = cap;
        u->chunks = c;
    }
    void *p = u->chunks->data + u->chunks->used;
    u->chunks->used += bytes;
    return p;
}

/* Grows a malloc'd array so that it holds `need` elements, charging it. */
static int grow(unpickler *u, void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need)
        n *= 2;
    if (charge(u, (n - *cap) * elem))
        return u->err->status;
    void *p = realloc(*arr, n * elem);
    if (!p)
        return engine_error_set(u->err, ENGINE_ENOMEM, "%s: out of memory unpickling", u->label);
    *arr = p;
    *cap = n;
    return 0;
}

static value *new_value(unpickler *u, value_kind kind) {
    value *v = arena_alloc(u, sizeof *v);
    if (v) {
        memset(v, 0, sizeof *v);
        v->kind = (uint8_t)kind;
        v->depth = 1;
    }
    return v;
}

static int push(unpickler *u, value *v) {
    if (!v)
        return u->err->status;
    if (grow(u, (void **)&u->stack, &u->cap_stack, u->n_stack + 1, sizeof *u->stack))
        return u->err->status;
    u->stack[u->n_stack++] = v;
    return 0;
}

static size_t fence(const unpickler *u) { return u->n_marks ? u->marks[u->n_marks - 1] : 0; }

/* At least k values above the innermost mark, as Python's unpickler
 * requires. */
static int need(unpickler *u, size_t k, const char *op) {
    if (u->n_stack - fence(u) < k)
        return fail(u, "%s needs %zu value(s) on the stack", op, k);
    return 0;
}

static value *pop(unpickler *u) { return u->stack[--u->n_stack]; }

static int check_depth(unpickler *u, value *container, const value *item) {
    if (item->depth >= container->depth) {
        if (item->depth >= TORCHBIN_MAX_DEPTH)
            return fail(u, "values nest deeper than %d", TORCHBIN_MAX_DEPTH);
        container->depth = (uint8_t)(item->depth + 1);
    }
    return 0;
}

/* Appends items to a list or dict (arena arrays doubling). */
static int seq_append(unpickler *u, value *c, value *const *items, size_t n) {
    if (n > UINT32_MAX - c->n)
        return fail(u, "container too large");
    if (c->n + n > c->u.seq.cap) {
        size_t cap = c->u.seq.cap ? c->u.seq.cap : 8;
        while (cap < c->n + n)
            cap *= 2;
        if (cap > UINT32_MAX)
            return fail(u, "container too large");
        value **grown = arena_alloc(u, cap * sizeof *grown);
        if (!grown)
            return u->err->status;
        if (c->n)
            memcpy(grown, c->u.seq.items, c->n * sizeof *grown);
        c->u.seq.items = grown;
        c->u.seq.cap = (uint32_t)cap;
    }
    for (size_t i = 0; i < n; i++) {
        if (check_depth(u, c, items[i]))
            return u->err->status;
        c->u.seq.items[c->n++] = items[i];
    }
    return 0;
}

/* Pops the values above the innermost mark into a new tuple. */
static int make_tuple(unpickler *u, size_t n) {
    value *t = new_value(u, V_TUPLE);
    if (!t || seq_append(u, t, n ? &u->stack[u->n_stack - n] : NULL, n)) /* () on an empty stack */
        return u->err->status;
    u->n_stack -= n;
    return push(u, t);
}

static int read_bytes(unpickler *u, size_t n, const uint8_t **out, const char *op) {
    if ((size_t)(u->end - u->p) < n)
        return fail(u, "%s runs past the end of data.pkl", op);
    *out = u->p;
    u->p += n;
    return 0;
}

static uint64_t le(const uint8_t *b, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

static int push_int(unpickler *u, int64_t i) {
    value *v = new_value(u, V_INT);
    if (v)
        v->u.i = i;
    return push(u, v);
}

static int push_str(unpickler *u, size_t n_len_bytes, const char *op) {
    const uint8_t *b = NULL, *s = NULL;
    if (read_bytes(u, n_len_bytes, &b, op))
        return u->err->status;
    uint64_t n = le(b, (int)n_len_bytes);
    if (n > (uint64_t)(u->end - u->p))
        return fail(u, "%s of %llu bytes runs past the end of data.pkl", op, (unsigned long long)n);
    read_bytes(u, (size_t)n, &s, op);
    value *v = new_value(u, V_STR);
    if (v) {
        v->u.s = (const char *)s;
        v->n = (uint32_t)n;
    }
    return push(u, v);
}

static int resolve_global(unpickler *u, const char *module, size_t m_len, const char *name,
                          size_t n_len) {
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
        const global_def *g = &globals[i];
        if (strlen(g->module) == m_len && memcmp(g->module, module, m_len) == 0 &&
            strlen(g->name) == n_len && memcmp(g->name, name, n_len) == 0) {
            value *v = new_value(u, V_GLOBAL);
            if (v)
                v->u.global = g;
            return push(u, v);
        }
    }
    char pm[84], pn[84];
    return fail(u, "refusing to unpickle global '%s %s' (only what torch.save writes for a state "
                   "dict is read; nothing in the file is executed)",
                printable(pm, module, m_len), printable(pn, name, n_len));
}

/* GLOBAL: "module\nname\n". */
static int op_global(unpickler *u) {
    const char *line[2];
    size_t len[2];
    for (int k = 0; k < 2; k++) {
        const uint8_t *nl = memchr(u->p, '\n', (size_t)(u->end - u->p));
        if (!nl || nl - u->p > 256)
            return fail(u, "GLOBAL without a newline-terminated %s of at most 256 bytes",
                        k ? "name" : "module");
        line[k] = (const char *)u->p;
        len[k] = (size_t)(nl - u->p);
        u->p = nl + 1;
    }
    return resolve_global(u, line[0], len[0], line[1], len[1]);
}

static int expect(unpickler *u, const value *v, value_kind kind, const char *what, int i) {
    if (v->kind != kind)
        return fail(u, "%s: argument %d has type %s, not %s", what, i, kind_names[v->kind],
                    kind_names[kind]);
    return 0;
}

/* A tuple of ints (size or stride) into out[], at most SAFETENSORS_MAX_DIMS. */
static int int_tuple(unpickler *u, const value *t, int64_t *out, int i) {
    if (expect(u, t, V_TUPLE, "_rebuild_tensor_v2", i))
        return u->err->status;
    if (t->n > SAFETENSORS_MAX_DIMS)
        return fail(u, "a tensor has %u dimensions; at most %d are read", t->n, SAFETENSORS_MAX_DIMS);
    for (uint32_t k = 0; k < t->n; k++) {
        const value *d = t->u.seq.items[k];
        if (d->kind != V_INT || d->u.i < 0)
            return fail(u, "_rebuild_tensor_v2: argument %d holds type %s, not a non-negative int", i,
                        kind_names[d->kind]);
        out[k] = d->u.i;
    }
    return 0;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]) */
static value *rebuild_tensor(unpickler *u, const value *args) {
    const char *what = "_rebuild_tensor_v2";
    if (args->n != 6 && args->n != 7) {
        fail(u, "%s takes 6 or 7 arguments, got %u", what, args->n);
        return NULL;
    }
    value *const *a = args->u.seq.items;
    tensor_args *t = arena_alloc(u, sizeof *t);
    if (!t || expect(u, a[0], V_STORAGE, what, 0) || expect(u, a[1], V_INT, what, 1) ||
        int_tuple(u, a[2], t->shape, 2) || int_tuple(u, a[3], t->stride, 3) ||
        expect(u, a[4], V_BOOL, what, 4) || expect(u, a[5], V_DICT, what, 5))
        return NULL;
    if (a[1]->u.i < 0 || a[2]->n != a[3]->n) {
        fail(u, "%s: storage offset %lld, size of %u and stride of %u dimensions", what,
             (long long)a[1]->u.i, a[2]->n, a[3]->n);
        return NULL;
    }
    t->pid = a[0]->u.pid;
    t->offset = a[1]->u.i;
    t->n_dims = (int)a[2]->n;
    value *v = new_value(u, V_TENSOR);
    if (v)
        v->u.tensor = t;
    return v;
}

static int op_reduce(unpickler *u) {
    if (need(u, 2, "REDUCE"))
        return u->err->status;
    value *args = pop(u), *callable = pop(u);
    if (callable->kind != V_GLOBAL || args->kind != V_TUPLE)
        return fail(u, "REDUCE of type %s with arguments of type %s; only the accepted globals can be called",
                    kind_names[callable->kind], kind_names[args->kind]);
    const global_def *g = callable->u.global;
    switch (g->kind) {
    case G_ORDERED_DICT:
        if (args->n != 0)
            return fail(u, "OrderedDict called with arguments");
        return push(u, new_value(u, V_DICT));
    case G_REBUILD_TENSOR: {
        value *t = rebuild_tensor(u, args);
        return t ? push(u, t) : u->err->status;
    }
    case G_REBUILD_PARAMETER: /* (tensor, requires_grad, backward_hooks) */
        if (args->n != 3 || args->u.seq.items[0]->kind != V_TENSOR)
            return fail(u, "_rebuild_parameter takes (tensor, requires_grad, backward_hooks)");
        return push(u, args->u.seq.items[0]);
    case G_STORAGE:
        break;
    }
    return fail(u, "refusing to call torch.%s", g->name);
}

/* BINPERSID with ('storage', torch.<T>Storage, key, location, numel). */
static int op_persid(unpickler *u) {
    if (need(u, 1, "BINPERSID"))
        return u->err->status;
    const value *t = pop(u);
    value *const *a = t->kind == V_TUPLE ? t->u.seq.items : NULL;
    if (!a || t->n != 5 || a[0]->kind != V_STR || a[0]->n != 7 ||
        memcmp(a[0]->u.s, "storage", 7) != 0 || a[1]->kind != V_GLOBAL ||
        a[1]->u.global->kind != G_STORAGE || a[2]->kind != V_STR || a[3]->kind != V_STR ||
        a[4]->kind != V_INT || a[4]->u.i < 0)
        return fail(u, "a persistent id is not ('storage', torch.<type>Storage, key, location, "
                       "numel)");
    /* Keys become entry names: torch writes decimal numbers. */
    if (a[2]->n == 0 || a[2]->n > 64)
        return fail(u, "storage key of %u bytes", a[2]->n);
    for (uint32_t k = 0; k < a[2]->n; k++) {
        char c = a[2]->u.s[k];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')) {
            char pk[84];
            return fail(u, "storage key '%s' is not letters, digits or '_'",
                        printable(pk, a[2]->u.s, a[2]->n));
        }
    }
    if (grow(u, (void **)&u->pids, &u->cap_pids, u->n_pids + 1, sizeof *u->pids))
        return u->err->status;
    u->pids[u->n_pids] = (pid_rec){.key = a[2]->u.s, .key_len = a[2]->n, .type = a[1]->u.global,
                                   .numel = (uint64_t)a[4]->u.i};
    value *v = new_value(u, V_STORAGE);
    if (v)
        v->u.pid = (uint32_t)u->n_pids++;
    return push(u, v);
}

/* Pops the innermost mark; the container below it must be of `kind`. */
static int pop_mark_into(unpickler *u, value_kind kind, const char *op, int pairs) {
    if (!u->n_marks)
        return fail(u, "%s without a MARK", op);
    size_t mark = u->marks[--u->n_marks];
    size_t n = u->n_stack - mark;
    if (mark == fence(u) || u->stack[mark - 1]->kind != kind)
        return fail(u, "%s on %s", op, mark == fence(u) ? "nothing" : kind_names[u->stack[mark - 1]->kind]);
    if (pairs && n % 2)
        return fail(u, "%s with an odd number of values", op);
    if (seq_append(u, u->stack[mark - 1], &u->stack[mark], n))
        return u->err->status;
    u->n_stack = mark;
    return 0;
}

static int set_memo(unpickler *u, uint64_t idx) {
    if (u->n_stack == fence(u))
        return fail(u, "memo store with an empty stack");
    /* Picklers number memo entries in order; a gap would only waste memory. */
    if (idx > u->n_memo)
        return fail(u, "memo index %llu out of order", (unsigned long long)idx);
    if (idx == u->n_memo) {
        if (grow(u, (void **)&u->memo, &u->cap_memo, u->n_memo + 1, sizeof *u->memo))
            return u->err->status;
        u->n_memo++;
    }
    u->memo[idx] = u->stack[u->n_stack - 1];
    return 0;
}

static int get_memo(unpickler *u, uint64_t idx) {
    if (idx >= u->n_memo)
        return fail(u, "memo index %llu was never stored", (unsigned long long)idx);
    return push(u, u->memo[idx]);
}

/* Runs data.pkl to STOP; *result is the unpickled value. */
static int unpickle(unpickler *u, value **result) {
    const uint8_t *b = NULL;
    for (;;) {
        if (u->p >= u->end)
            return fail(u, "data.pkl ends without STOP");
        uint8_t op = *u->p++;
        int rc = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if (read_bytes(u, 1, &b, "PROTO"))
                return u->err->status;
            if (b[0] < 2 || b[0] > 5)
                return fail(u, "pickle protocol %d (torch.save writes 2)", b[0]);
            break;
        case 0x95: /* FRAME: a hint for buffered readers */
            rc = read_bytes(u, 8, &b, "FRAME");
            break;
        case '}':
            rc = push(u, new_value(u, V_DICT));
            break;
        case ']':
            rc = push(u, new_value(u, V_LIST));
            break;
        case ')':
            rc = push(u, new_value(u, V_TUPLE));
            break;
        case '(':
            if (u->n_marks == TORCHBIN_MAX_DEPTH)
                return fail(u, "MARKs nest deeper than %d", TORCHBIN_MAX_DEPTH);
            u->marks[u->n_marks++] = u->n_stack;
            break;
        case 't':
            if (!u->n_marks)
                return fail(u, "TUPLE without a MARK");
            u->n_marks--;
            rc = make_tuple(u, u->n_stack - u->marks[u->n_marks]);
            break;
        case 0x85:
        case 0x86:
        case 0x87:
            rc = need(u, (size_t)(op - 0x84), opcode_names[op]) || make_tuple(u, (size_t)(op - 0x84));
            break;
        case 'X':
            rc = push_str(u, 4, "BINUNICODE");
            break;
        case 0x8c:
            rc = push_str(u, 1, "SHORT_BINUNICODE");
            break;
        case 'J':
            rc = read_bytes(u, 4, &b, "BININT") || push_int(u, (int32_t)(uint32_t)le(b, 4));
            break;
        case 'K':
            rc = read_bytes(u, 1, &b, "BININT1") || push_int(u, b[0]);
            break;
        case 'M':
            rc = read_bytes(u, 2, &b, "BININT2") || push_int(u, (int64_t)le(b, 2));
            break;
        case 0x8a: { /* LONG1: n bytes, two's complement, little-endian */
            if (read_bytes(u, 1, &b, "LONG1"))
                return u->err->status;
            int n = b[0];
            if (n > 8)
                return fail(u, "LONG1 of %d bytes (at most 64-bit integers are read)", n);
            if (read_bytes(u, (size_t)n, &b, "LONG1"))
                return u->err->status;
            uint64_t v = le(b, n);
            if (n > 0 && n < 8 && (b[n - 1] & 0x80))
                v |= ~(uint64_t)0 << (8 * n);
            rc = push_int(u, (int64_t)v);
            break;
        }
        case 'G': { /* BINFLOAT: big-endian double */
            if (read_bytes(u, 8, &b, "BINFLOAT"))
                return u->err->status;
            value *v = new_value(u, V_FLOAT);
            rc = push(u, v);
            break;
        }
        case 0x88:
        case 0x89: {
            value *v = new_value(u, V_BOOL);
            if (v)
                v->u.i = op == 0x88;
            rc = push(u, v);
            break;
        }
        case 'N':
            rc = push(u, new_value(u, V_NONE));
            break;
        case 'q':
            rc = read_bytes(u, 1, &b, "BINPUT") || set_memo(u, b[0]);
            break;
        case 'r':
            rc = read_bytes(u, 4, &b, "LONG_BINPUT") || set_memo(u, le(b, 4));
            break;
        case 0x94:
            rc = set_memo(u, u->n_memo);
            break;
        case 'h':
            rc = read_bytes(u, 1, &b, "BINGET") || get_memo(u, b[0]);
            break;
        case 'j':
            rc = read_bytes(u, 4, &b, "LONG_BINGET") || get_memo(u, le(b, 4));
            break;
        case 's':
        case 'a': {
            int is_dict = op == 's';
            if (need(u, is_dict ? 3 : 2, opcode_names[op]))
                return u->err->status;
            value *c = u->stack[u->n_stack - (is_dict ? 3 : 2)];
            if (c->kind != (is_dict ? V_DICT : V_LIST))
                return fail(u, "%s on type %s", opcode_names[op], kind_names[c->kind]);
            rc = seq_append(u, c, &u->stack[u->n_stack - (is_dict ? 2 : 1)], is_dict ? 2 : 1);
            u->n_stack -= is_dict ? 2 : 1;
            break;
        }
        case 'u':
            rc = pop_mark_into(u, V_DICT, "SETITEMS", 1);
            break;
        case 'e':
            rc = pop_mark_into(u, V_LIST, "APPENDS", 0);
            break;
        case 'c':
            rc = op_global(u);
            break;
        case 0x93: { /* STACK_GLOBAL: module and name strings on the stack */
            if (need(u, 2, "STACK_GLOBAL"))
                return u->err->status;
            value *name = pop(u), *module = pop(u);
            if (module->kind != V_STR || name->kind != V_STR)
                return fail(u, "STACK_GLOBAL on types %s and %s", kind_names[module->kind],
                            kind_names[name->kind]);
            rc = resolve_global(u, module->u.s, module->n, name->u.s, name->n);
            break;
        }
        case 'R':
            rc = op_reduce(u);
            break;
        case 'b': /* BUILD: an OrderedDict's attributes (state_dict's _metadata) */
            if (need(u, 2, "BUILD"))
                return u->err->status;
            if (u->stack[u->n_stack - 2]->kind != V_DICT)
                return fail(u, "BUILD on type %s", kind_names[u->stack[u->n_stack - 2]->kind]);
            u->n_stack--;
            break;
        case 'Q':
            rc = op_persid(u);
            break;
        case '.':
            if (need(u, 1, "STOP"))
                return u->err->status;
            *result = pop(u);
            return 0;
        default:
            if (opcode_names[op])
                return fail(u, "refusing pickle opcode %s ('\\x%02x'): only what torch.save "
                               "writes for a state dict is read; nothing is executed",
                            opcode_names[op], op);
            return fail(u, "unknown pickle opcode 0x%02x", op);
        }
        if (rc)
            return u->err->status;
    }
}

static void unpickler_fini(unpickler *u) {
    while (u->chunks) {
        chunk *next = u->chunks->next;
        free(u->chunks);
        u->chunks = next;
    }
    free(u->stack);
    free(u->memo);
    free(u->pids);
}

/* ---- the archive --------------------------------------------------------- */

typedef struct archive {
    const char *label;
    zip_t *za;
    uint64_t file_len;
    const char *prefix; /* the folder of data.pkl, with its '/' */
    size_t prefix_len;
    uint64_t comp_read; /* compressed bytes of the entries read so far */
    uint64_t inflated;  /* uncompressed bytes of deflated entries read */
} archive;

static int entry_error(const archive *a, engine_error *err, const char *name, const char *fmt, ...)
    ENGINE_PRINTF(4, 5);
static int entry_error(const archive *a, engine_error *err, const char *name, const char *fmt, ...) {
    char msg[300], pn[84];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return engine_error_set(err, ENGINE_EFORMAT, "%s: entry '%s': %s", a->label,
                            printable(pn, name, strlen(name)), msg);
}

/* Finds <prefix><rel>: its index and size (uncompressed); checks method,
 * encryption and the overlap and inflation bounds. -1 in *index when
 * absent (not an error here). */
static int entry_find(archive *a, const char *rel, zip_int64_t *index, uint64_t *size, char *name,
                      size_t name_cap, engine_error *err) {
    snprintf(name, name_cap, "%.*s%s", (int)a->prefix_len, a->prefix, rel);
    *index = zip_name_locate(a->za, name, 0);
    if (*index < 0)
        return 0;
    zip_stat_t st;
    const zip_uint64_t want = ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD |
                              ZIP_STAT_ENCRYPTION_METHOD;
    if (zip_stat_index(a->za, (zip_uint64_t)*index, 0, &st) != 0 || (st.valid & want) != want)
        return entry_error(a, err, name, "cannot read its header: %s", zip_strerror(a->za));
    if (st.encryption_method != ZIP_EM_NONE)
        return entry_error(a, err, name, "is encrypted");
    if (st.comp_method != ZIP_CM_STORE && st.comp_method != ZIP_CM_DEFLATE)
        return entry_error(a, err, name, "compression method %d (only stored and deflated are read)",
                           (int)st.comp_method);
    if (st.comp_method == ZIP_CM_STORE && st.size != st.comp_size)
        return entry_error(a, err, name, "stored with %llu bytes but %llu compressed",
                           (unsigned long long)st.size, (unsigned long long)st.comp_size);
    if (st.comp_size > a->file_len - a->comp_read)
        return entry_error(a, err, name, "entries overlap or claim more bytes than the file has");
    a->comp_read += st.comp_size;
    if (st.comp_method == ZIP_CM_DEFLATE) {
        uint64_t bound = TORCHBIN_MAX_INFLATE_RATIO * a->file_len + (1u << 20);
        if (st.size > bound - a->inflated)
            return entry_error(a, err, name, "inflates to %llu bytes, past %d times the file's size "
                                             "(a zip bomb?)",
                               (unsigned long long)st.size, TORCHBIN_MAX_INFLATE_RATIO);
        a->inflated += st.size;
    }
    *size = st.size;
    return 0;
}

/* Reads entry `index` (size bytes) into a 64-byte-aligned buffer owned by
 * the caller (free). libzip checks the CRC when the entry's end is read. */
static int entry_read(archive *a, zip_int64_t index, uint64_t size, const char *name, void **out,
                      engine_error *err) {
    *out = NULL;
    if (size > SIZE_MAX - 64)
        return entry_error(a, err, name, "too large");
    void *buf = NULL;
    if (posix_memalign(&buf, 64, size ? ((size_t)size + 63) & ~(size_t)63 : 64))
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory reading '%s' (%llu bytes)",
                                a->label, name, (unsigned long long)size);
    zip_file_t *f = zip_fopen_index(a->za, (zip_uint64_t)index, 0);
    if (!f) {
        free(buf);
        return entry_error(a, err, name, "cannot open: %s", zip_strerror(a->za));
    }
    uint64_t got = 0;
    zip_int64_t n = 1;
    while (got < size && (n = zip_fread(f, (char *)buf + got, size - got)) > 0)
        got += (uint64_t)n;
    char extra;
    if (n >= 0 && got == size)
        n = zip_fread(f, &extra, 1); /* the end: libzip checks the CRC here */
    int rc = 0;
    if (n < 0)
        rc = entry_error(a, err, name, "%s", zip_file_strerror(f));
    else if (got != size || n != 0)
        rc = entry_error(a, err, name, "holds %s bytes than its header says",
                         got != size ? "fewer" : "more");
    zip_fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

/* ---- from the state dict to tensors -------------------------------------- */

/* What a handle from this reader borrows its names and data from. */
typedef struct torchbin_owner {
    char *names;     /* every tensor name, NUL-terminated, back to back */
    void **buffers;  /* one per storage key; NULL where no tensor used it */
    size_t n_buffers;
} torchbin_owner;

static void owner_release(void *p) {
    torchbin_owner *o = p;
    if (!o)
        return;
    for (size_t i = 0; i < o->n_buffers; i++)
        free(o->buffers[i]);
    free(o->buffers);
    free(o->names);
    free(o);
}

static int cmp_pid_key(const void *x, const void *y) {
    const pid_rec *a = *(const pid_rec *const *)x, *b = *(const pid_rec *const *)y;
    int c = memcmp(a->key, b->key, a->key_len < b->key_len ? a->key_len : b->key_len);
    return c ? c : (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

/* Numbers the distinct storage keys (pid_rec.storage); every persistent id
 * of one key must agree on type and numel. Sets *n_storages. */
static int dedup_storages(const archive *a, pid_rec *pids, size_t n_pids, size_t *n_storages,
                          engine_error *err) {
    *n_storages = 0;
    if (!n_pids)
        return 0;
    pid_rec **order = malloc(n_pids * sizeof *order);
    if (!order)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", a->label);
    for (size_t i = 0; i < n_pids; i++)
        order[i] = &pids[i];
    qsort(order, n_pids, sizeof *order, cmp_pid_key);
    size_t s = 0;
    for (size_t i = 0; i < n_pids; i++) {
        if (i > 0 && cmp_pid_key(&order[i - 1], &order[i]) == 0) {
            if (order[i]->type != order[i - 1]->type || order[i]->numel != order[i - 1]->numel) {
                char pk[84];
                printable(pk, order[i]->key, order[i]->key_len);
                free(order);
                return engine_error_set(err, ENGINE_EFORMAT,
                                        "%s: storage 'data/%s' is declared twice with different "
                                        "types or sizes",
                                        a->label, pk);
            }
        } else if (i > 0) {
            s++;
        }
        order[i]->storage = (uint32_t)s;
    }
    free(order);
    *n_storages = s + 1;
    return 0;
}

/* Reads the storage `p` names into o->buffers[p->storage] unless read. */
static int read_storage(archive *a, const pid_rec *p, torchbin_owner *o, const char *tensor,
                        engine_error *err) {
    if (o->buffers[p->storage])
        return 0;
    char rel[80], name[512], pt[84];
    snprintf(rel, sizeof rel, "data/%.*s", (int)p->key_len, p->key);
    zip_int64_t index;
    uint64_t size;
    int rc = entry_find(a, rel, &index, &size, name, sizeof name, err);
    if (rc)
        return rc;
    if (index < 0)
        return engine_error_set(err, ENGINE_EFORMAT,
                                "%s: tensor '%s': its storage '%s' is missing from the archive",
                                a->label, printable(pt, tensor, strlen(tensor)), name);
    const uint64_t esize = (uint64_t)p->type->elem_size;
    if (p->numel > UINT64_MAX / esize || p->numel * esize != size)
        return entry_error(a, err, name, "has %llu bytes, but data.pkl says it holds %llu %s elements",
                           (unsigned long long)size, (unsigned long long)p->numel,
                           p->type->dtype_name);
    return entry_read(a, index, size, name, &o->buffers[p->storage], err);
}

/* Checks a tensor against its storage and fills t (name set by caller). */
static int make_tensor(const archive *a, const tensor_args *ta, const pid_rec *p,
                       const torchbin_owner *o, safetensors_tensor *t, engine_error *err) {
    char pt[84];
    const char *name = printable(pt, t->name, strlen(t->name));
    uint64_t n = 1;
    for (int d = 0; d < ta->n_dims; d++) {
        uint64_t dim = (uint64_t)ta->shape[d];
        if (dim && n > UINT64_MAX / dim)
            return engine_error_set(err, ENGINE_EFORMAT, "%s: tensor '%s': shape overflows", a->label,
                                    name);
        n *= dim;
        t->shape[d] = ta->shape[d];
    }
    if (n > 0) {
        uint64_t expected = 1;
        for (int d = ta->n_dims - 1; d >= 0; d--) {
            if (ta->shape[d] != 1 && (uint64_t)ta->stride[d] != expected)
                return engine_error_set(err, ENGINE_EFORMAT,
                                        "%s: tensor '%s' is not contiguous (stride %lld in dimension "
                                        "%d, %llu expected); save it with .contiguous()",
                                        a->label, name, (long long)ta->stride[d], d,
                                        (unsigned long long)expected);
            expected *= (uint64_t)ta->shape[d];
        }
    }
    const uint64_t offset = (uint64_t)ta->offset;
    if (offset > p->numel || n > p->numel - offset)
        return engine_error_set(err, ENGINE_EFORMAT,
                                "%s: tensor '%s': elements %llu to %llu lie past the end of its "
                                "storage 'data/%.*s' (%llu elements)",
                                a->label, name, (unsigned long long)offset,
                                (unsigned long long)offset + n, (int)p->key_len, p->key,
                                (unsigned long long)p->numel);
    t->dtype = p->type->dtype;
    t->dtype_name = p->type->dtype_name;
    t->n_dims = ta->n_dims;
    t->n_elems = n;
    t->n_bytes = n * (uint64_t)p->type->elem_size;
    t->data = (const uint8_t *)o->buffers[p->storage] + offset * (uint64_t)p->type->elem_size;
    return 0;
}

static int cmp_tensor_name(const void *x, const void *y) {
    return strcmp((*(const safetensors_tensor *const *)x)->name,
                  (*(const safetensors_tensor *const *)y)->name);
}

static int check_unique_names(const archive *a, const safetensors_tensor *tensors, size_t n,
                              engine_error *err) {
    if (n < 2)
        return 0;
    const safetensors_tensor **order = malloc(n * sizeof *order);
    if (!order)
        return engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", a->label);
    for (size_t i = 0; i < n; i++)
        order[i] = &tensors[i];
    qsort(order, n, sizeof *order, cmp_tensor_name);
    int rc = 0;
    for (size_t i = 1; i < n && !rc; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            char pt[84];
            rc = engine_error_set(err, ENGINE_EFORMAT, "%s: tensor '%s' appears twice", a->label,
                                  printable(pt, order[i]->name, strlen(order[i]->name)));
        }
    }
    free(order);
    return rc;
}

/* The unpickled root -> a safetensors handle over freshly read storages. */
static int build(archive *a, unpickler *u, const value *root, safetensors **out, engine_error *err) {
    if (root->kind != V_DICT)
        return engine_error_set(err, ENGINE_EFORMAT,
                                "%s: data.pkl holds type %s, not a state dict (a dict of tensors)",
                                a->label, kind_names[root->kind]);
    const size_t n_tensors = root->n / 2;
    value *const *items = root->u.seq.items;
    size_t names_bytes = 0;
    for (size_t i = 0; i < n_tensors; i++) {
        const value *k = items[2 * i], *v = items[2 * i + 1];
        char pk[84];
        if (k->kind != V_STR || memchr(k->u.s, 0, k->n))
            return engine_error_set(err, ENGINE_EFORMAT,
                                    "%s: data.pkl: state dict key %zu is %s, not a name", a->label, i,
                                    k->kind == V_STR ? "a string with a NUL byte" : kind_names[k->kind]);
        if (v->kind != V_TENSOR)
            return engine_error_set(err, ENGINE_EFORMAT,
                                    "%s: data.pkl: '%s' has type %s, not tensor; only state dicts of "
                                    "tensors are read",
                                    a->label, printable(pk, k->u.s, k->n), kind_names[v->kind]);
        names_bytes += (size_t)k->n + 1;
    }
    size_t n_storages;
    int rc = dedup_storages(a, u->pids, u->n_pids, &n_storages, err);
    if (rc)
        return rc;
    torchbin_owner *o = calloc(1, sizeof *o);
    safetensors_tensor *tensors = calloc(n_tensors ? n_tensors : 1, sizeof *tensors);
    if (o) {
        o->names = malloc(names_bytes ? names_bytes : 1);
        o->buffers = calloc(n_storages ? n_storages : 1, sizeof *o->buffers);
        o->n_buffers = n_storages;
    }
    if (!o || !tensors || !o->names || !o->buffers) {
        rc = engine_error_set(err, ENGINE_ENOMEM, "%s: out of memory", a->label);
        goto fail;
    }
    char *name = o->names;
    for (size_t i = 0; i < n_tensors; i++) {
        const value *k = items[2 * i];
        const tensor_args *ta = items[2 * i + 1]->u.tensor;
        const pid_rec *p = &u->pids[ta->pid];
        memcpy(name, k->u.s, k->n);
        name[k->n] = 0;
        tensors[i].name = name;
        name += k->n + 1;
        if ((rc = read_storage(a, p, o, tensors[i].name, err)) ||
            (rc = make_tensor(a, ta, p, o, &tensors[i], err)))
            goto fail;
    }
    if ((rc = check_unique_names(a, tensors, n_tensors, err)))
        goto fail;
    return safetensors_wrap(a->label, tensors, n_tensors, o, owner_release, out, err);
fail:
    free(tensors);
    owner_release(o);
    return rc;
}

static int unsafe_path(const char *name) {
    if (name[0] == '/' || name[0] == '\\')
        return 1;
    for (const char *s = name; *s;) {
        size_t n = strcspn(s, "/\\");
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return 1;
        s += n + (s[n] != 0);
    }
    return 0;
}

/* Finds the one "<p>/data.pkl" and sets the prefix; refuses unsafe names. */
static int find_prefix(archive *a, engine_error *err) {
    zip_int64_t n = zip_get_num_entries(a->za, 0);
    a->prefix = NULL;
    for (zip_int64_t i = 0; i < n; i++) {
        const char *name = zip_get_name(a->za, (zip_uint64_t)i, 0);
        if (!name)
            return engine_error_set(err, ENGINE_EFORMAT, "%s: entry %lld: %s", a->label, (long long)i,
                                    zip_strerror(a->za));
        if (unsafe_path(name))
            return entry_error(a, err, name, "has an absolute or '..' path");
        const char *slash = strchr(name, '/');
        if (!slash || strcmp(slash, "/data.pkl") != 0)
            continue;
        if (a->prefix)
            return engine_error_set(err, ENGINE_EFORMAT,
                                    "%s: holds more than one <name>/data.pkl; not one checkpoint",
                                    a->label);
        if (slash - name > 200)
            return entry_error(a, err, name, "top folder name longer than 200 bytes");
        a->prefix = name;
        a->prefix_len = (size_t)(slash - name) + 1;
    }
    if (!a->prefix)
        return engine_error_set(err, ENGINE_EFORMAT,
                                "%s: a zip archive without <name>/data.pkl, so not a checkpoint "
                                "torch.save wrote",
                                a->label);
    return 0;
}

/* A small record (byteorder, data.pkl) read whole; *out freed by caller. */
static int read_record(archive *a, const char *rel, uint64_t max_bytes, void **out, uint64_t *size,
                       engine_error *err) {
    char name[512];
    zip_int64_t index;
    *out = NULL;
    int rc = entry_find(a, rel, &index, size, name, sizeof name, err);
    if (rc || index < 0)
        return rc;
    if (*size > max_bytes)
        return entry_error(a, err, name, "%llu bytes, more than the %llu read",
                           (unsigned long long)*size, (unsigned long long)max_bytes);
    return entry_read(a, index, *size, name, out, err);
}

static int load(archive *a, safetensors **out, engine_error *err) {
    int rc = find_prefix(a, err);
    if (rc)
        return rc;
    void *rec;
    uint64_t size;
    if ((rc = read_record(a, "byteorder", 16, &rec, &size, err)))
        return rc;
    if (rec) {
        int little = size == 6 && memcmp(rec, "little", 6) == 0;
        char pb[84];
        printable(pb, rec, (size_t)size);
        free(rec);
        if (!little)
            return engine_error_set(err, ENGINE_EFORMAT,
                                    "%s: byteorder is '%s'; only little-endian checkpoints are read",
                                    a->label, pb);
    }
    if ((rc = read_record(a, "data.pkl", TORCHBIN_MAX_PICKLE_BYTES, &rec, &size, err)))
        return rc;
    unpickler u = {.label = a->label, .start = rec, .p = rec, .end = (const uint8_t *)rec + size,
                   .err = err};
    value *root = NULL;
    rc = unpickle(&u, &root);
    if (!rc)
        rc = build(a, &u, root, out, err);
    unpickler_fini(&u);
    free(rec);
    return rc;
}

int torchbin_parse(const void *buf, size_t len, const char *label, safetensors **out,
                   engine_error *err) {
    *out = NULL;
    engine_error ignored;
    if (!err) /* the unpickler reads the status back from err */
        err = &ignored;
    archive a = {.label = label ? label : "<memory>", .file_len = len};
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(len ? buf : NULL, len, 0, &ze);
    if (src)
        a.za = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &ze);
    if (!a.za) {
        int rc = zip_error_code_zip(&ze) == ZIP_ER_NOZIP
                     ? engine_error_set(err, ENGINE_EFORMAT,
                                        "%s: not a zip archive; torch.save files from before torch "
                                        "1.6 (or saved with _use_new_zipfile_serialization=False) are "
                                        "not read: re-save them or convert to safetensors",
                                        a.label)
                     : engine_error_set(err, src ? ENGINE_EFORMAT : ENGINE_ENOMEM,
                                        "%s: not a valid zip archive: %s", a.label,
                                        zip_error_strerror(&ze));
        zip_source_free(src);
        zip_error_fini(&ze);
        return rc;
    }
    zip_error_fini(&ze);
    int rc = load(&a, out, err);
    zip_discard(a.za);
    return rc;
}

int torchbin_open(const char *path, safetensors **out, engine_error *err) {
    *out = NULL;
    void *map;
    size_t len;
    int rc = engine_map_file(path, &map, &len, err);
    if (rc)
        return rc;
    rc = torchbin_parse(map, len, path, out, err);
    if (map)
        munmap(map, len);
    return rc;
}
