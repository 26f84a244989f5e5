/*
 * pii.c - the guardrails' PII detectors (guard.h has what each one
 * matches): hand-written scanners over bytes, one per type, and the one
 * scan loop that whole texts and streams share.
 *
 * Design:
 *  - The scan is leftmost-longest: at each position every enabled detector
 *    says how long a match starting there is (0: none); the longest wins
 *    (a tie: the lower type), the scan resumes after it, else at the next
 *    byte. Where a match may end is part of each detector's rule, so the
 *    longest is the only one to look at.
 *  - A detector at position i reads the byte before i and bytes i to
 *    i + PII_READ_MAX at most, all through at(), so its answer depends on
 *    those bytes alone. Only ASCII bytes are ever part of a pattern, so a
 *    match never splits a UTF-8 sequence; other bytes are boundaries.
 *  - Streaming is the same scan over the bytes not yet released. at() past
 *    what has arrived notes a short read; a position whose detectors read
 *    past it is undecided and the scan stops there: what lies before is
 *    released, the rest is held with the one byte before it as context.
 *    A decided position reads only bytes already seen, so it decides as the
 *    whole-text scan does, and the stream releases the same text for every
 *    split of it. The hold-back is at most PII_READ_MAX bytes.
 *  - Every scan is linear: a position costs at most PII_READ_MAX reads, and
 *    a read ahead happens only where a pattern can start (after a boundary).
 *
 * Threads: pure functions over their arguments; a stream belongs to one
 * thread at a time.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "guard.h"

#define END (-1) /* what at() reads beyond the text: a byte of no class */

#define SSN_CHARS 11         /* 123-45-6789 */
#define CARD_DIGITS_MIN 13
#define CARD_DIGITS_MAX 19
#define INTL_DIGITS_MIN 8    /* + and 8 to 15 digits (E.164 allows 15) */
#define INTL_DIGITS_MAX 15
#define EMAIL_LOCAL_MAX 64   /* RFC 5321 4.5.3.1.1 */
#define EMAIL_DOMAIN_MAX 253 /* RFC 5321 4.5.3.1.2, as written without the root dot */
#define EMAIL_LABEL_MAX 63   /* RFC 1035 2.3.4 */

/* How far past its start a detector reads at most: an email's local part
 * of 64, '@', a domain of 253, the byte after it ('.'), and the one after
 * that (is it a label?). The stream never holds back more than this. */
#define PII_READ_MAX (EMAIL_LOCAL_MAX + 1 + EMAIL_DOMAIN_MAX + 1)

static const char *const type_names[GUARD_PII_COUNT] = {"ssn", "card", "email", "phone"};

const char *guard_pii_type_name(guard_pii_type t) {
    return (unsigned)t < GUARD_PII_COUNT ? type_names[t] : "unknown";
}

int guard_pii_action_parse(const char *s, guard_pii_action *out) {
    static const char *const names[] = {"off", "redact", "block"};
    static const guard_pii_action actions[] = {GUARD_PII_OFF, GUARD_PII_REDACT, GUARD_PII_BLOCK};
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = actions[i];
            return 0;
        }
    }
    return -1;
}

/* ---- reading ------------------------------------------------------------ */

typedef struct scanner {
    const guard_pii_policy *policy;
    const unsigned char *s;
    size_t len;
    bool is_final;   /* s[0..len) is the whole rest of the text: END is its end */
    bool short_read; /* a read past len while !is_final: the answer may change */
} scanner;

static int at(scanner *sc, size_t k) {
    if (k < sc->len)
        return sc->s[k];
    if (!sc->is_final)
        sc->short_read = true;
    return END;
}

/* The byte before position i (END at the start of the text). */
static int before(const scanner *sc, size_t i) { return i > 0 ? sc->s[i - 1] : END; }

/* Byte classes, indexed by the byte + 1 (so END has none). LOCAL: an
 * email's local part, as mailboxes are written in practice; LABEL: a
 * domain label. Only ASCII has a class. */
enum { DIGIT = 1, ALPHA = 2, LOCAL = 4, LABEL = 8, PHONE_SEP = 16 };
static const unsigned char classes[257] = {
    ['0' + 1 ... '9' + 1] = DIGIT | LOCAL | LABEL,
    ['a' + 1 ... 'z' + 1] = ALPHA | LOCAL | LABEL,
    ['A' + 1 ... 'Z' + 1] = ALPHA | LOCAL | LABEL,
    ['.' + 1] = LOCAL | PHONE_SEP,
    ['-' + 1] = LOCAL | LABEL | PHONE_SEP,
    [' ' + 1] = PHONE_SEP,
    ['_' + 1] = LOCAL,
    ['%' + 1] = LOCAL,
    ['+' + 1] = LOCAL,
};

static bool is_digit(int c) { return classes[c + 1] & DIGIT; }
static bool is_alpha(int c) { return classes[c + 1] & ALPHA; }
static bool is_alnum(int c) { return classes[c + 1] & (DIGIT | ALPHA); }
static bool is_local(int c) { return classes[c + 1] & LOCAL; }
static bool is_label(int c) { return classes[c + 1] & LABEL; }
static bool is_phone_sep(int c) { return classes[c + 1] & PHONE_SEP; }

/* Whether s[k..k+n) are all digits. */
static bool digits_at(scanner *sc, size_t k, size_t n) {
    for (size_t j = 0; j < n; j++)
        if (!is_digit(at(sc, k + j)))
            return false;
    return true;
}

/* ---- detectors: each returns the length of its match at i, or 0 ---------- */

/* AAA-GG-SSSS or AAA GG SSSS (one separator, used twice); the area is not
 * 000, 666 or 9xx, the group not 00, the serial not 0000. */
static size_t detect_ssn(scanner *sc, size_t i) {
    if (is_alnum(before(sc, i)) || !digits_at(sc, i, 3))
        return 0;
    int sep = at(sc, i + 3);
    if ((sep != '-' && sep != ' ') || !digits_at(sc, i + 4, 2) || at(sc, i + 6) != sep ||
        !digits_at(sc, i + 7, 4) || is_alnum(at(sc, i + SSN_CHARS)))
        return 0;
    const unsigned char *d = sc->s + i;
    int area = (d[0] - '0') * 100 + (d[1] - '0') * 10 + (d[2] - '0');
    bool group_zero = d[4] == '0' && d[5] == '0';
    bool serial_zero = memcmp(d + 7, "0000", 4) == 0;
    if (area == 0 || area == 666 || area >= 900 || group_zero || serial_zero)
        return 0;
    return SSN_CHARS;
}

static bool luhn_ok(const unsigned char *d, size_t n) {
    unsigned sum = 0;
    for (size_t j = 0; j < n; j++) {
        unsigned v = d[n - 1 - j];
        if (j & 1)
            v = v * 2 > 9 ? v * 2 - 9 : v * 2;
        sum += v;
    }
    return sum % 10 == 0;
}

/* 13 to 19 digits passing Luhn: one run, or printed in groups: a first
 * group of 4, then groups of 3 to 6, all separated by the same single
 * space or dash. The match may end after any group (the longest that
 * passes wins), never inside one, and not before a letter. */
static size_t detect_card(scanner *sc, size_t i) {
    if (is_alnum(before(sc, i)) || !is_digit(at(sc, i)))
        return 0;
    unsigned char d[CARD_DIGITS_MAX];
    size_t n = 0, k = i, best = 0;
    int sep = 0;
    for (size_t group = 1;; group++) {
        size_t run = 0;
        int c;
        while (is_digit(c = at(sc, k))) {
            if (n == CARD_DIGITS_MAX)
                return best; /* no end inside a run, nor after one this long */
            d[n++] = (unsigned char)(c - '0');
            run++;
            k++;
        }
        if (group > 1 && (run < 3 || run > 6))
            return best;
        if (!is_alpha(c) && n >= CARD_DIGITS_MIN && luhn_ok(d, n))
            best = k - i;
        if ((group == 1 && run != 4) || (c != ' ' && c != '-') || (sep && c != sep) ||
            !is_digit(at(sc, k + 1)))
            return best;
        sep = c;
        k++;
    }
}

/* local@domain: the local part is a whole run of [A-Za-z0-9._%+-] (1 to
 * 64 bytes); the domain is labels of [A-Za-z0-9-] (1 to 63, no hyphen at
 * either end) joined by single dots, at most 253 bytes; the match ends
 * after its second or a later label that is 2+ letters (the longest). */
static size_t detect_email(scanner *sc, size_t i) {
    if (is_local(before(sc, i)))
        return 0;
    size_t k = i;
    while (is_local(at(sc, k))) {
        if (k - i == EMAIL_LOCAL_MAX)
            return 0;
        k++;
    }
    if (k == i || at(sc, k) != '@')
        return 0;
    size_t domain = ++k, best = 0;
    for (size_t label = 1;; label++) {
        size_t start = k;
        bool letters = true;
        int c, last = END;
        while (is_label(c = at(sc, k))) {
            if (k - start == EMAIL_LABEL_MAX || k - domain >= EMAIL_DOMAIN_MAX)
                return best;
            letters = letters && is_alpha(c);
            last = c;
            k++;
        }
        if (k == start || sc->s[start] == '-' || last == '-')
            return best;
        if (label >= 2 && letters && k - start >= 2)
            best = k - i;
        if (c != '.' || !is_label(at(sc, k + 1)))
            return best;
        k++;
    }
}

/* The rest of a North American number from k: (415) 555-0123,
 * (415)555-0123, (415)-555-0123, 415-555-0123, 415.555.0123, 415 555 0123.
 * Returns its end, or 0. */
static size_t na_number(scanner *sc, size_t k) {
    if (at(sc, k) == '(') {
        if (!digits_at(sc, k + 1, 3) || at(sc, k + 4) != ')')
            return 0;
        k += 5;
        if (is_phone_sep(at(sc, k)))
            k++;
        if (!digits_at(sc, k, 3) || !is_phone_sep(at(sc, k + 3)))
            return 0;
        k += 4;
    } else {
        int sep = at(sc, k + 3);
        if (!digits_at(sc, k, 3) || !is_phone_sep(sep) || !digits_at(sc, k + 4, 3) || at(sc, k + 7) != sep)
            return 0;
        k += 8;
    }
    if (!digits_at(sc, k, 4) || is_alnum(at(sc, k + 4)))
        return 0;
    return k + 4;
}

/* North American, optionally after a country code "+1" or "1" and one
 * separator (none before a '('); or + and 8 to 15 digits grouped by single
 * spaces, dashes or dots, ending after a group (the longest), not before a
 * letter. */
static size_t detect_phone(scanner *sc, size_t i) {
    int c = at(sc, i);
    if (c != '(' && c != '+' && !is_digit(c))
        return 0;
    if (c != '(' && is_alnum(before(sc, i)))
        return 0;
    size_t best = 0, end;
    size_t code = c == '+' ? i + 1 : i;
    if (at(sc, code) == '1') {
        int after = at(sc, code + 1);
        size_t rest = after == '(' ? code + 1 : is_phone_sep(after) ? code + 2 : 0;
        if (rest && (end = na_number(sc, rest)))
            best = end - i;
    }
    if (!best && c != '+' && (end = na_number(sc, i)))
        best = end - i;
    if (c != '+' || !is_digit(at(sc, i + 1)) || at(sc, i + 1) == '0')
        return best;
    size_t k = i + 1, n = 0;
    for (;;) {
        while (is_digit(c = at(sc, k))) {
            if (n == INTL_DIGITS_MAX)
                return best;
            n++;
            k++;
        }
        if (n >= INTL_DIGITS_MIN && !is_alpha(c) && k - i > best)
            best = k - i;
        if (!is_phone_sep(c) || !is_digit(at(sc, k + 1)))
            return best;
        k++;
    }
}

/* A switch rather than a table of pointers, so that the detectors inline
 * into the scan loop. */
static size_t detect(scanner *sc, guard_pii_type t, size_t i) {
    switch (t) {
    case GUARD_PII_SSN:
        return detect_ssn(sc, i);
    case GUARD_PII_CARD:
        return detect_card(sc, i);
    case GUARD_PII_EMAIL:
        return detect_email(sc, i);
    case GUARD_PII_PHONE:
        return detect_phone(sc, i);
    default:
        return 0;
    }
}

/* The next match at or after *pos. Returns 1 with *m set and *pos at its
 * end; 0 when there is none up to len (*pos = len); -1 when the position
 * *pos is undecided until more text arrives (never when is_final). */
static int scan_next(scanner *sc, size_t *pos, guard_pii_match *m) {
    for (size_t i = *pos; i < sc->len; i++) {
        size_t best = 0;
        guard_pii_type type = GUARD_PII_SSN;
        sc->short_read = false;
        for (int t = 0; t < GUARD_PII_COUNT; t++) {
            if (sc->policy->action[t] == GUARD_PII_OFF)
                continue;
            size_t n = detect(sc, (guard_pii_type)t, i);
            if (n > best) {
                best = n;
                type = (guard_pii_type)t;
            }
        }
        if (sc->short_read) {
            *pos = i;
            return -1;
        }
        if (best) {
            *m = (guard_pii_match){type, i, best};
            *pos = i + best;
            return 1;
        }
    }
    *pos = sc->len;
    return 0;
}

size_t guard_pii_scan(const guard_pii_policy *p, const char *text, size_t len, guard_pii_match *out, size_t cap) {
    scanner sc = {p, (const unsigned char *)text, len, true, false};
    size_t n = 0, pos = 0;
    guard_pii_match m;
    while (scan_next(&sc, &pos, &m) == 1) {
        if (n < cap)
            out[n] = m;
        n++;
    }
    return n;
}

/* ---- redacting ---------------------------------------------------------- */

typedef struct out_buf {
    char *p;
    size_t len, cap;
    bool oom;
} out_buf;

static void out_put(out_buf *o, const void *b, size_t n) {
    if (o->oom)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 64;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->oom = true;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
    if (n)
        memcpy(o->p + o->len, b, n);
    o->len += n;
    o->p[o->len] = 0;
}

/* Hands o's text to the caller (always NUL-terminated); -1 when out of
 * memory (nothing handed, o freed). */
static int out_take(out_buf *o, char **text, size_t *len) {
    out_put(o, "", 0);
    if (o->oom) {
        free(o->p);
        *text = NULL;
        *len = 0;
        return -1;
    }
    *text = o->p;
    *len = o->len;
    return 0;
}

static void out_redaction(out_buf *o, guard_pii_type t) {
    out_put(o, "[REDACTED:", 10);
    out_put(o, type_names[t], strlen(type_names[t]));
    out_put(o, "]", 1);
}

/* Scans from *pos, writing the text from there with every match replaced
 * by its redaction to o and counting matches into found, up to the first
 * undecided position (the end when sc is final); *pos is left there.
 * Returns whether a block detector matched; with stop_at_block it stops
 * at the first such match (*pos then undefined, o incomplete). */
static bool redact_run(scanner *sc, size_t *pos, out_buf *o, unsigned found[GUARD_PII_COUNT], bool stop_at_block) {
    bool blocked = false;
    size_t from = *pos;
    guard_pii_match m;
    while (scan_next(sc, pos, &m) == 1) {
        found[m.type]++;
        if (sc->policy->action[m.type] == GUARD_PII_BLOCK) {
            blocked = true;
            if (stop_at_block)
                return true;
        }
        out_put(o, sc->s + from, m.start - from);
        out_redaction(o, m.type);
        from = m.start + m.len;
    }
    out_put(o, sc->s + from, *pos - from);
    return blocked;
}

int guard_pii_apply(const guard_pii_policy *p, const char *text, size_t len, guard_pii_result *out) {
    memset(out, 0, sizeof *out);
    scanner sc = {p, (const unsigned char *)(len ? text : ""), len, true, false};
    out_buf o = {0};
    size_t pos = 0;
    out->blocked = redact_run(&sc, &pos, &o, out->found, false);
    return out_take(&o, &out->text, &out->len);
}

/* ---- streaming ---------------------------------------------------------- */

struct guard_pii_stream {
    guard_pii_policy policy;
    unsigned char *buf; /* [0, ctx): the released byte before the held text; [ctx, len): held */
    size_t ctx, len, cap;
    unsigned found[GUARD_PII_COUNT];
    bool blocked;
};

guard_pii_stream *guard_pii_stream_new(const guard_pii_policy *p) {
    guard_pii_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->policy = *p;
    s->cap = 2 * PII_READ_MAX;
    s->buf = malloc(s->cap);
    if (!s->buf) {
        free(s);
        return NULL;
    }
    return s;
}

/* *out = "" for a blocked stream: 1, or -1 when even that fails. */
static int give_blocked(char **out, size_t *out_len) {
    *out = calloc(1, 1);
    *out_len = 0;
    return *out ? 1 : -1;
}

/* Scans the held bytes, releases what is decided (all of it when
 * is_final) and keeps the rest. */
static int release(guard_pii_stream *s, bool is_final, char **out, size_t *out_len) {
    scanner sc = {&s->policy, s->buf, s->len, is_final, false};
    out_buf o = {0};
    size_t pos = s->ctx;
    if (redact_run(&sc, &pos, &o, s->found, true)) {
        s->blocked = true;
        free(o.p);
        return give_blocked(out, out_len);
    }
    if (out_take(&o, out, out_len) < 0)
        return -1;
    if (pos > s->ctx) {
        memmove(s->buf, s->buf + pos - 1, s->len - (pos - 1));
        s->len -= pos - 1;
        s->ctx = 1;
    }
    return 0;
}

int guard_pii_stream_feed(guard_pii_stream *s, const char *chunk, size_t len, char **out, size_t *out_len) {
    if (s->blocked)
        return give_blocked(out, out_len);
    if (s->len + len > s->cap) {
        size_t cap = s->cap;
        while (cap < s->len + len)
            cap *= 2;
        unsigned char *b = realloc(s->buf, cap);
        if (!b) {
            *out = NULL;
            *out_len = 0;
            return -1;
        }
        s->buf = b;
        s->cap = cap;
    }
    if (len)
        memcpy(s->buf + s->len, chunk, len);
    s->len += len;
    return release(s, false, out, out_len);
}

int guard_pii_stream_finish(guard_pii_stream *s, char **out, size_t *out_len) {
    if (s->blocked)
        return give_blocked(out, out_len);
    return release(s, true, out, out_len);
}

void guard_pii_stream_found(const guard_pii_stream *s, unsigned found[GUARD_PII_COUNT]) {
    memcpy(found, s->found, sizeof s->found);
}

void guard_pii_stream_free(guard_pii_stream *s) {
    if (!s)
        return;
    free(s->buf);
    free(s);
}
