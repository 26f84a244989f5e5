/*
 * web_assets.h - the files of the pages aiserve serves from its binary
 * (GET /docs), embedded at build time by web/CMakeLists.txt.
 *
 * Each entry is one URL path's file, stored gzip-compressed (gzip -9; RFC
 * 1952) with its uncompressed size and an ETag made from its content.
 * Read-only data, built into the binary: any thread, never freed.
 */
#ifndef AISERVE_WEB_ASSETS_H
#define AISERVE_WEB_ASSETS_H

#include <stddef.h>

typedef struct web_asset {
    const char *path;        /* the URL path, e.g. "/docs/swagger-ui.css" */
    const char *type;        /* its Content-Type */
    const unsigned char *gz; /* the file, gzip-compressed */
    size_t gz_size;          /* bytes at gz */
    size_t size;             /* bytes once decompressed */
    const char *etag;        /* a strong ETag, quotes included */
} web_asset;

extern const web_asset web_assets[];
extern const size_t web_n_assets;

#endif
