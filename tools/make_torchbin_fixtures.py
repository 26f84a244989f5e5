"""make_torchbin_fixtures.py - pytorch_model.bin fixtures for tests/unit/test_torchbin.c.

Every checkpoint here is written by real torch.save, so the C reader is
tested against what PyTorch produces, not against our idea of it. Writes
tests/fixtures/torchbin/:

  mixed.bin            state dict of F32, F16 and BF16 tensors: views of one
                       shared storage at storage offsets (slices, a reshaped
                       slice), a tied weight (one tensor under two names), a
                       0-d scalar, an empty tensor, and BERT's int64
                       position_ids buffer; pickle protocol 2 (torch's default)
  mixed.safetensors    the same float tensors, each made contiguous: what the
                       reader must hand out, bit for bit (int64 is checked in C)
  mixed-proto4.bin     mixed.bin's state dict saved with pickle_protocol=4
                       (FRAME, SHORT_BINUNICODE, MEMOIZE)
  mixed-deflated.bin   mixed.bin's entries recompressed with deflate
  noncontig.bin        a transposed (non-contiguous) tensor: refused
  legacy.bin           the pre-1.6 format (_use_new_zipfile_serialization=False):
                       refused with a hint
  overlap.bin          hand-made hostile archive: storage data/0's bytes hold
                       data/1's whole entry, so that entries overlap (the
                       trick of non-recursive zip bombs): refused
  bert-f32.bin         tests/fixtures/models/bert-f32/model.safetensors, torch.save'd
                       as transformers saves pytorch_model.bin

and tests/fuzz/corpus/torchbin/: the small checkpoints above, and each one's
data.pkl in the fuzz target's bare-pickle form (fuzz_torchbin.c: a byte with
the number of storages, their sizes as u32 little-endian, then data.pkl),
so that the fuzzer mutates pickles without breaking a zip CRC.

Deterministic: fixed values, so a second run writes the same bytes, except
legacy.bin, whose storage keys are memory addresses (the old format's).
Run: /usr/bin/python3 tools/make_torchbin_fixtures.py
"""

import collections
import os
import shutil
import struct
import sys
import zipfile
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "torchbin")
CORPUS_DIR = os.path.join(ROOT, "tests", "fuzz", "corpus", "torchbin")
BERT = os.path.join(ROOT, "tests", "fixtures", "models", "bert-f32", "model.safetensors")


def mixed_state_dict():
    """Tensors covering what torch.save writes for real models."""
    g = torch.Generator().manual_seed(18)
    shared = torch.randn(40, generator=g)  # one storage, several views
    tied = torch.randn(5, 3, generator=g)
    sd = collections.OrderedDict()
    sd["shared.whole"] = shared
    sd["shared.head"] = shared[:8]
    sd["shared.tail_2d"] = shared[10:34].view(4, 6)  # storage offset 10
    sd["embeddings.word_embeddings.weight"] = tied
    sd["cls.predictions.decoder.weight"] = tied  # tied: same tensor, same storage
    sd["half.weight"] = torch.randn(3, 4, generator=g).half()
    sd["half.row"] = sd["half.weight"][1]  # F16 view at offset 4
    sd["bf16.weight"] = torch.randn(2, 3, 2, generator=g).bfloat16()
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["embeddings.position_ids"] = torch.arange(7).unsqueeze(0)  # int64 buffer
    return sd


def save(obj, name, **kw):
    path = os.path.join(OUT_DIR, name)
    torch.save(obj, path, **kw)
    return path


def deflate_copy(src, dst):
    """The same entries, deflated (torch itself always stores)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            out = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            out.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(out, zin.read(info.filename))


def bare_pickle_input(path):
    """fuzz_torchbin.c's bare-pickle input for a checkpoint: storage sizes
    (keys 0..n-1), then data.pkl."""
    with zipfile.ZipFile(path) as z:
        (pkl,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
        prefix = pkl[: -len("data.pkl")]
        sizes = []
        while prefix + "data/%d" % len(sizes) in z.namelist():
            sizes.append(z.getinfo(prefix + "data/%d" % len(sizes)).file_size)
        return bytes([len(sizes)]) + struct.pack("<%dI" % len(sizes), *sizes) + z.read(pkl)


def overlapping_zip(path):
    """A zip whose entry data/0 contains entry data/1 (local header and
    data), each named once in the central directory, with a data.pkl that
    torch.save wrote for two uint8 tensors of exactly those sizes."""
    def local(name, data):
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(data),
                           len(data), len(data), len(name), 0) + name + data

    def central(name, data, offset):
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0,
                           zlib.crc32(data), len(data), len(data), len(name), 0, 0, 0, 0, 0,
                           offset) + name

    inner = bytes(range(256)) * 16
    name0, name1, name_pkl = b"archive/data/0", b"archive/data/1", b"archive/data.pkl"
    outer = local(name1, inner)  # data/0's data is data/1's entry
    tmp = os.path.join(OUT_DIR, "overlap.tmp")
    torch.save(collections.OrderedDict([("outer", torch.zeros(len(outer), dtype=torch.uint8)),
                                        ("inner", torch.zeros(len(inner), dtype=torch.uint8))]), tmp)
    with zipfile.ZipFile(tmp) as z:
        pkl = z.read("overlap/data.pkl")
    os.remove(tmp)
    body = local(name_pkl, pkl)
    at0 = len(body)
    body += local(name0, outer)
    at1 = at0 + 30 + len(name0)
    cd = central(name_pkl, pkl, 0) + central(name0, outer, at0) + central(name1, inner, at1)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 3, 3, len(cd), len(body), 0)
    with open(path, "wb") as f:
        f.write(body + cd + eocd)


def check_round_trip(path, sd):
    """torch itself reads the file back to the same tensors and sharing."""
    back = torch.load(path)
    assert list(back) == list(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    if "cls.predictions.decoder.weight" in back:
        assert (back["cls.predictions.decoder.weight"].data_ptr()
                == back["embeddings.word_embeddings.weight"].data_ptr())


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    sd = mixed_state_dict()
    mixed = save(sd, "mixed.bin")
    check_round_trip(mixed, sd)
    floats = {k: v for k, v in sd.items() if v.is_floating_point()}
    ref.write_safetensors(os.path.join(OUT_DIR, "mixed.safetensors"), floats)
    check_round_trip(save(sd, "mixed-proto4.bin", pickle_protocol=4), sd)
    deflated = os.path.join(OUT_DIR, "mixed-deflated.bin")
    deflate_copy(mixed, deflated)
    check_round_trip(deflated, sd)
    save({"t": torch.arange(6.0).view(2, 3).t()}, "noncontig.bin")
    save({"w": torch.ones(2)}, "legacy.bin", _use_new_zipfile_serialization=False)
    overlapping_zip(os.path.join(OUT_DIR, "overlap.bin"))

    bert_sd = collections.OrderedDict(sorted(ref.read_safetensors(BERT).items()))
    check_round_trip(save(bert_sd, "bert-f32.bin"), bert_sd)

    shutil.rmtree(CORPUS_DIR, ignore_errors=True)
    os.makedirs(CORPUS_DIR)
    for name in ("mixed.bin", "mixed-proto4.bin", "mixed-deflated.bin", "noncontig.bin", "legacy.bin",
                 "overlap.bin"):
        shutil.copy(os.path.join(OUT_DIR, name), os.path.join(CORPUS_DIR, name))
        if name not in ("legacy.bin", "mixed-deflated.bin", "overlap.bin"):  # the latter: mixed.bin's pickle
            with open(os.path.join(CORPUS_DIR, name.replace(".bin", ".pkl")), "wb") as f:
                f.write(bare_pickle_input(os.path.join(OUT_DIR, name)))
    total = sum(os.path.getsize(os.path.join(OUT_DIR, n)) for n in os.listdir(OUT_DIR))
    print("wrote %s (%d bytes) and %s" % (OUT_DIR, total, CORPUS_DIR))


if __name__ == "__main__":
    main()
