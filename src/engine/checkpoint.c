/*
 * checkpoint.c - the choice of weights file (see checkpoint.h).
 */
#include "checkpoint.h"

#include <stdio.h>
#include <sys/stat.h>

#include "engine_int.h"
#include "torchbin.h"

static int is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int checkpoint_open(const char *dir, safetensors **out, engine_error *err) {
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (is_file(path))
        return safetensors_open(path, out, err);
    char bin[4096];
    snprintf(bin, sizeof bin, "%s/pytorch_model.bin", dir);
    if (is_file(bin))
        return torchbin_open(bin, out, err);
    return engine_error_set(err, ENGINE_EIO, "%s: missing, and no pytorch_model.bin either", path);
}
