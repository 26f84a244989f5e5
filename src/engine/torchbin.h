/*
 * torchbin.h - read-only, validating reader of PyTorch's zip checkpoints
 * (pytorch_model.bin as torch.save(state_dict) writes it since torch 1.6).
 *
 * On-disk layout: a zip archive whose entries share one top folder <p>
 * (the file's stem, or "archive" in newer torch):
 *
 *   <p>/data.pkl     the state dict, pickled (protocol 2; 4 accepted)
 *   <p>/data/<key>   one entry per storage: its raw bytes, little-endian
 *   <p>/byteorder    optional, "little" (big-endian files are refused)
 *   <p>/version ...  other records, ignored
 *
 * data.pkl is an OrderedDict of name -> _rebuild_tensor_v2(storage,
 * storage_offset, size, stride, requires_grad, backward_hooks[, metadata]),
 * where each storage is a persistent id ('storage', torch.<T>Storage, key,
 * location, numel). Several tensors may view one storage at different
 * offsets (tied weights, slices).
 *
 * Nothing in the pickle is ever executed: a restricted unpickler accepts
 * only the opcodes and the globals listed in torchbin.c (OrderedDict, the
 * two tensor rebuild functions, the storage types) and refuses anything
 * else naming the file and what it found. Its memory, nesting and every
 * length are bounded. The zip is read with libzip (consistency-checked
 * headers, CRCs verified); entries must be stored or deflated, unencrypted,
 * with no absolute or ".." names, and not overlap or inflate past a bound.
 * Tensors must be contiguous; each must lie inside its storage.
 *
 * The result is a safetensors handle (safetensors_wrap), so weights bind
 * the same way from either format. Storages are read into owned, 64-byte
 * aligned buffers (the zip is not kept open); data pointers stay valid
 * until safetensors_close. Any thread may read the result.
 */
#ifndef AISERVE_TORCHBIN_H
#define AISERVE_TORCHBIN_H

#include <stddef.h>

#include "engine.h"
#include "safetensors.h"

/* Largest data.pkl read, and the most memory the unpickler may use. */
#define TORCHBIN_MAX_PICKLE_BYTES (64u * 1024u * 1024u)
#define TORCHBIN_MAX_UNPICKLE_BYTES (256u * 1024u * 1024u)
/* Deepest nesting of pickled values (a state dict needs about 4). */
#define TORCHBIN_MAX_DEPTH 32
/* Deflated entries may inflate to at most this many times the archive's
 * size (plus 1 MiB) in total: a bound on zip bombs. */
#define TORCHBIN_MAX_INFLATE_RATIO 64

/* Reads and validates the checkpoint at `path`. On success *out is owned
 * by the caller (safetensors_close). Errors: ENGINE_EIO (cannot open or
 * map), ENGINE_EFORMAT (not a valid or not an accepted checkpoint; the
 * message names the file), ENGINE_ENOMEM. */
int torchbin_open(const char *path, safetensors **out, engine_error *err);

/* The same from an in-memory image of the file (the fuzzer, the tests).
 * `buf` is borrowed for the call only; `label` names it in errors. */
int torchbin_parse(const void *buf, size_t len, const char *label, safetensors **out,
                   engine_error *err);

#endif
