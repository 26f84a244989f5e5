/*
 * obs_int.h - helpers shared by the obs module's files; not part of the
 * public interface (obs.h is). Nothing here allocates or keeps state, and
 * every function may be called from any thread.
 */
#ifndef AISERVE_OBS_INT_H
#define AISERVE_OBS_INT_H

#include <stddef.h>

/* Length of the longest prefix of s[0..n) that is well-formed UTF-8
 * (no overlong forms, surrogates or code points above U+10FFFF); n when all
 * of it is. */
size_t log_utf8_valid_prefix(const char *s, size_t n);

/* Copies s[0..n) to out, replacing every byte that does not start a
 * well-formed UTF-8 sequence with U+FFFD (3 bytes). out must hold 3 * n
 * bytes; it is not NUL-terminated. Returns the bytes written. */
size_t log_utf8_scrub(const char *s, size_t n, char *out);

#endif /* AISERVE_OBS_INT_H */
