/*
 * gen_wordpiece_overrides.c - prints what the WordPiece tokenizer computes
 * from utf8proc alone for every code point, so that
 * tools/gen_wordpiece_overrides.js can compare it with the Rust tokenizer.
 *
 * It includes src/engine/wordpiece.c itself with WORDPIECE_RAW_UNICODE
 * defined (the override table switched off): the answers compared are then
 * those of the shipped code, not of a copy that could drift from it.
 *
 * Output, one line per code point whose answer is not the trivial one
 * (no flags, combining class 0, NFD and lowercase both the code point):
 *   CP FLAGS CCC NFD LOWER     all hex; NFD and LOWER comma-separated
 * Build and run: see tools/gen_wordpiece_overrides.js (it does both).
 */
#define WORDPIECE_RAW_UNICODE 1
#include "../src/engine/wordpiece.c"

/* wordpiece.c declares the override table; the raw build never reads it. */
const uint32_t wordpiece_uovr[][4] = {{0x110000, 0, 0, 0}};
const size_t wordpiece_n_uovr = 0;
const uint32_t wordpiece_uovr_seq[] = {0};

static void print_seq(const uint32_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        printf(i ? ",%x" : "%x", (unsigned)s[i]);
}

int main(void) {
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue; /* not characters; invalid in UTF-8 */
        uint32_t nfd[WPU_MAX_NFD], low[WPU_MAX_LOWER];
        unsigned flags = wpu_flags(cp), ccc = wpu_ccc(cp);
        size_t n_nfd = wpu_nfd(cp, nfd), n_low = wpu_lower(cp, low);
        if (!flags && !ccc && n_nfd == 1 && nfd[0] == cp && n_low == 1 && low[0] == cp)
            continue;
        printf("%x %x %x ", (unsigned)cp, flags, ccc);
        print_seq(nfd, n_nfd);
        putchar(' ');
        print_seq(low, n_low);
        putchar('\n');
    }
    return 0;
}
