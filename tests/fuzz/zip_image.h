/*
 * zip_image.h - builds a zip archive in memory with libzip, for the
 * torchbin fuzz target (a bare pickle wrapped as a checkpoint) and
 * test_torchbin.c (hostile archives whose every byte the test shows).
 *
 * Header-only: static functions, included by one file of each program.
 */
#ifndef AISERVE_ZIP_IMAGE_H
#define AISERVE_ZIP_IMAGE_H

#include <stdint.h>
#include <stdlib.h>
#include <zip.h>

typedef struct zip_image_entry {
    const char *name;
    const void *data; /* borrowed until zip_image returns */
    size_t len;
    int deflate;      /* 0: stored, as torch.save writes */
} zip_image_entry;

/* The archive's bytes (malloc'd, *len long), or NULL if libzip fails. */
static uint8_t *zip_image(const zip_image_entry *entries, size_t n, size_t *len) {
    zip_error_t ze;
    zip_error_init(&ze);
    uint8_t *out = NULL;
    zip_source_t *mem = zip_source_buffer_create(NULL, 0, 0, &ze);
    zip_t *za = mem ? zip_open_from_source(mem, ZIP_TRUNCATE, &ze) : NULL;
    if (!za) {
        zip_source_free(mem);
        zip_error_fini(&ze);
        return NULL;
    }
    zip_source_keep(mem); /* read back after zip_close */
    for (size_t i = 0; i < n; i++) {
        zip_source_t *s = zip_source_buffer(za, entries[i].data, entries[i].len, 0);
        zip_int64_t idx = s ? zip_file_add(za, entries[i].name, s, ZIP_FL_ENC_UTF_8) : -1;
        if (idx < 0) {
            zip_source_free(s);
            zip_discard(za);
            goto done;
        }
        zip_set_file_compression(za, (zip_uint64_t)idx, entries[i].deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
    }
    if (zip_close(za) != 0) {
        zip_discard(za);
        goto done;
    }
    zip_stat_t st;
    if (zip_source_stat(mem, &st) == 0 && zip_source_open(mem) == 0) {
        out = malloc(st.size ? st.size : 1);
        if (out && zip_source_read(mem, out, st.size) != (zip_int64_t)st.size) {
            free(out);
            out = NULL;
        }
        *len = st.size;
        zip_source_close(mem);
    }
done:
    zip_source_free(mem);
    zip_error_fini(&ze);
    return out;
}

#endif
