/*
 * checkpoint.h - picks and opens a model directory's weights file.
 *
 * A Hugging Face model directory holds its weights as model.safetensors or
 * as pytorch_model.bin (PyTorch's zip format, torchbin.h). When both are
 * there, model.safetensors wins, as transformers prefers it; the .bin file
 * is then not read at all. Either way the result is one safetensors handle
 * that weights are bound from (bert_weights_bind).
 */
#ifndef AISERVE_CHECKPOINT_H
#define AISERVE_CHECKPOINT_H

#include "engine.h"
#include "safetensors.h"

/* Opens <dir>/model.safetensors, else <dir>/pytorch_model.bin. On success
 * *out is owned by the caller (safetensors_close) and names the file it
 * read (safetensors_path). Errors: ENGINE_EIO when neither file is there or
 * the chosen one cannot be read; the readers' ENGINE_EFORMAT/ENGINE_ENOMEM. */
int checkpoint_open(const char *dir, safetensors **out, engine_error *err);

#endif
