/*
 * units.c - text <-> value for durations, sizes and booleans.
 *
 *  - A duration is one or more <number><unit> parts ("1h30m", "1.5s"), units
 *    us (also µs), ms, s, m, h; or a bare number in a unit the caller names.
 *    Fractions are fine as long as the result is a whole microsecond.
 *  - A size is <number>[unit]: k M G T are powers of 1000 (also kB MB ...),
 *    Ki Mi Gi Ti powers of 1024 (also KiB MiB ...), B or nothing is bytes,
 *    any case. The result must be a whole number of bytes.
 *  - No signs, no whitespace, no overflow: anything else is -1.
 * Integer arithmetic only (128-bit for fractions), so "0.1s" is exactly
 * 100000 us.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core_int.h"

/* A decimal number at *p: digits, optionally '.' and more digits (at least
 * one digit in all). Stores the integer part, up to 18 fraction digits as
 * frac / 10^frac_digits, and advances *p. Returns -1 when there is no
 * number or it does not fit. */
static int scan_number(const char **p, uint64_t *whole, uint64_t *frac, int *frac_digits) {
    const char *s = *p;
    uint64_t w = 0, f = 0;
    int n_whole = 0, n_frac = 0;
    while (*s >= '0' && *s <= '9') {
        if (__builtin_mul_overflow(w, 10, &w) || __builtin_add_overflow(w, (uint64_t)(*s - '0'), &w))
            return -1;
        s++, n_whole++;
    }
    if (*s == '.') {
        s++;
        while (*s >= '0' && *s <= '9') {
            if (n_frac < 18) {
                f = f * 10 + (uint64_t)(*s - '0');
                n_frac++;
            } else if (*s != '0') {
                return -1; /* finer than any unit can make whole */
            }
            s++;
        }
        if (n_whole == 0 && n_frac == 0)
            return -1;
    } else if (n_whole == 0) {
        return -1;
    }
    *whole = w;
    *frac = f;
    *frac_digits = n_frac;
    *p = s;
    return 0;
}

/* whole.frac * unit, which must be a whole number and fit in max. */
static int scale(uint64_t whole, uint64_t frac, int frac_digits, uint64_t unit, uint64_t max,
                 uint64_t *out) {
    uint64_t v;
    if (__builtin_mul_overflow(whole, unit, &v))
        return -1;
    unsigned __int128 pow10 = 1;
    for (int i = 0; i < frac_digits; i++)
        pow10 *= 10;
    unsigned __int128 f = (unsigned __int128)frac * unit;
    if (f % pow10 != 0)
        return -1;
    if (__builtin_add_overflow(v, (uint64_t)(f / pow10), &v) || v > max)
        return -1;
    *out = v;
    return 0;
}

static const struct {
    const char *name;
    int64_t us;
} duration_units[] = {
    {"us", 1}, {"\xc2\xb5s", 1}, {"\xce\xbcs", 1}, /* µs (micro sign), μs (Greek mu) */
    {"ms", 1000}, {"s", 1000000}, {"m", 60000000}, {"h", 3600000000},
};

int core_parse_duration(const char *s, int64_t bare_unit_us, int64_t *out_us) {
    if (!s || !*s)
        return -1;
    const char *p = s;
    uint64_t total = 0;
    while (*p) {
        uint64_t whole, frac, part;
        int frac_digits;
        const char *start = p;
        if (scan_number(&p, &whole, &frac, &frac_digits) < 0)
            return -1;
        const char *unit = p;
        while (*p && !(*p >= '0' && *p <= '9') && *p != '.')
            p++;
        size_t unit_len = (size_t)(p - unit);
        int64_t unit_us = -1;
        if (unit_len == 0) {
            if (start != s || *p) /* a bare number only as the whole text */
                return -1;
            unit_us = bare_unit_us;
        }
        for (size_t i = 0; unit_len && i < sizeof duration_units / sizeof duration_units[0]; i++)
            if (strlen(duration_units[i].name) == unit_len &&
                memcmp(duration_units[i].name, unit, unit_len) == 0)
                unit_us = duration_units[i].us;
        if (unit_us <= 0)
            return -1;
        if (scale(whole, frac, frac_digits, (uint64_t)unit_us, INT64_MAX, &part) < 0 ||
            __builtin_add_overflow(total, part, &total) || total > INT64_MAX)
            return -1;
    }
    *out_us = (int64_t)total;
    return 0;
}

int core_parse_duration_us(const char *s, int64_t *out_us) { return core_parse_duration(s, 1, out_us); }

int core_parse_size_bytes(const char *s, uint64_t *out) {
    if (!s || !*s)
        return -1;
    const char *p = s;
    uint64_t whole, frac;
    int frac_digits;
    if (scan_number(&p, &whole, &frac, &frac_digits) < 0)
        return -1;
    /* Unit: [kmgt] then optional 'i' then optional 'b'; or just 'b'. */
    uint64_t unit = 1;
    static const char prefixes[] = "kmgt";
    const char *pre = *p ? strchr(prefixes, *p | 0x20) : NULL;
    if (pre) {
        int power = (int)(pre - prefixes) + 1;
        p++;
        uint64_t base = 1000;
        if ((*p | 0x20) == 'i') {
            base = 1024;
            p++;
        }
        for (int i = 0; i < power; i++)
            unit *= base;
    }
    if ((*p | 0x20) == 'b')
        p++;
    if (*p)
        return -1;
    return scale(whole, frac, frac_digits, unit, UINT64_MAX, out);
}

int core_parse_bool(const char *s, int *out) {
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    if (!s)
        return -1;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return *out = 1, 0;
        if (strcasecmp(s, no[i]) == 0)
            return *out = 0, 0;
    }
    return -1;
}

void core_format_duration(int64_t us, const char *zero_unit, char *buf, size_t cap) {
    static const struct {
        const char *name;
        int64_t us;
    } units[] = {{"h", 3600000000}, {"m", 60000000}, {"s", 1000000}, {"ms", 1000}, {"us", 1}};
    if (us == 0) {
        snprintf(buf, cap, "0%s", zero_unit);
        return;
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (us % units[i].us == 0) {
            snprintf(buf, cap, "%lld%s", (long long)(us / units[i].us), units[i].name);
            return;
        }
}

void core_format_size(uint64_t bytes, char *buf, size_t cap) {
    static const char *const names[] = {"TiB", "GiB", "MiB", "KiB"};
    for (int i = 0; i < 4; i++) {
        uint64_t unit = 1ull << (10 * (4 - i));
        if (bytes && bytes % unit == 0) {
            snprintf(buf, cap, "%llu%s", (unsigned long long)(bytes / unit), names[i]);
            return;
        }
    }
    snprintf(buf, cap, "%llu", (unsigned long long)bytes);
}
