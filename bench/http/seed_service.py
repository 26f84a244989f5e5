#!/usr/bin/python3
"""seed_service.py - the FastAPI + uvicorn + PyTorch service that aiserve
replaces, rebuilt for the HTTP benchmark (bench/http/run.sh) as such a seed
service is written:

  - A FastAPI app: `POST /predict` with `{"text": "..."}` -> `{"label",
    "confidence"}` or `{"texts": [...]}` -> `{"predictions": [...]}` (pydantic
    request and response models), `GET /health`.
  - The model is a Hugging Face directory (config.json, model.safetensors,
    vocab.txt, tokenizer_config.json) from `MODEL_PATH` or `--model`, loaded
    once at startup. `transformers` is not installed here, so the model classes
    (transformers' module layout, state_dict names and math), the safetensors
    reader and the slow BertTokenizer come from tools/hf_reference.py.
  - One forward pass per request, no batching across requests, F32, under
    torch.no_grad(), inside a sync `def` endpoint: FastAPI runs it in its
    threadpool (anyio, 40 threads), so concurrent requests run their forward
    passes side by side, each with torch's intra-op threads.
  - torch.set_num_threads(number of cores). uvicorn, one worker, as the seed ran.

Benchmark instrumentation, not part of the seed: at startup the service
checks which BLAS torch's matrix products resolve to and prints it; it refuses
to start on anything but OpenBLAS (Debian's torch links the generic
libblas.so.3, which the alternatives system may point at the slow reference
BLAS). Set SEED_ALLOW_ANY_BLAS=1 to start anyway.

Usage: seed_service.py [--model DIR] [--host 127.0.0.1] [--port 8000] [--threads N]
   or: MODEL_PATH=DIR python3 -m uvicorn seed_service:app --app-dir bench/http --port 8000
"""

import argparse
import ctypes
import json
import logging
import os
import sys
from typing import List, Optional, Union

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, validator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import hf_reference as hf  # noqa: E402

MAX_TEXT_LENGTH = 10_000   # the seed's input sanitizer
MAX_BATCH_TEXTS = 64

logger = logging.getLogger("seed_service")
logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
logger.addHandler(_handler)

app = FastAPI(title="Sentiment Analysis API", version="1.0.0")

model = None
tokenizer = None
id2label = None
max_length = 512


class PredictRequest(BaseModel):
    text: Optional[str] = None
    texts: Optional[List[str]] = None

    @validator("text")
    def check_text(cls, v):
        if v is not None:
            if not v.strip():
                raise ValueError("text must not be empty")
            if len(v) > MAX_TEXT_LENGTH:
                raise ValueError(f"text longer than {MAX_TEXT_LENGTH} characters")
        return v

    @validator("texts")
    def check_texts(cls, v):
        if v is not None:
            if not v or len(v) > MAX_BATCH_TEXTS:
                raise ValueError(f"texts must hold 1 to {MAX_BATCH_TEXTS} strings")
            for t in v:
                if not t.strip() or len(t) > MAX_TEXT_LENGTH:
                    raise ValueError("every text must be non-empty and at most "
                                     f"{MAX_TEXT_LENGTH} characters")
        return v


class PredictResponse(BaseModel):
    label: str
    confidence: float


class BatchPredictResponse(BaseModel):
    predictions: List[PredictResponse]


def blas_in_use():
    """The BLAS libraries this process has mapped, and OpenBLAS's own
    description of itself when it is one of them. Call after a matmul."""
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f
                       if "blas" in line.rsplit("/", 1)[-1] or "lapack" in line.rsplit("/", 1)[-1]})
    config = None
    for path in libs:
        try:
            fn = ctypes.CDLL(path).openblas_get_config
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_char_p
        config = fn().decode()
        break
    return libs, config


def check_blas():
    a = torch.randn(64, 64)
    torch.mm(a, a)   # makes sure the BLAS is loaded and used
    libs, config = blas_in_use()
    logger.info("torch %s, threads %d, BLAS libraries mapped: %s", torch.__version__,
                torch.get_num_threads(), ", ".join(libs) or "none")
    logger.info("BLAS in use: %s", config or "NOT OpenBLAS")
    if config is None and os.environ.get("SEED_ALLOW_ANY_BLAS") != "1":
        raise RuntimeError("torch does not use OpenBLAS (reference BLAS?): point the "
                           "libblas.so.3 alternative at OpenBLAS, or set "
                           "SEED_ALLOW_ANY_BLAS=1")


@app.on_event("startup")
def load_model():
    global model, tokenizer, id2label, max_length
    model_path = os.environ.get("MODEL_PATH", os.path.join(HERE, "..", "..", "models",
                                                           "sentiment", "1"))
    torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", 0)) or
                          len(os.sched_getaffinity(0)))
    check_blas()
    logger.info("loading model from %s", model_path)
    with open(os.path.join(model_path, "config.json")) as f:
        config = json.load(f)
    tok_config = {}
    tok_path = os.path.join(model_path, "tokenizer_config.json")
    if os.path.exists(tok_path):
        with open(tok_path) as f:
            tok_config = json.load(f)
    net = hf.model_from_config(config)
    net.load_state_dict(hf.read_safetensors(os.path.join(model_path, "model.safetensors")))
    net.eval()
    tokenizer = hf.BertTokenizer(hf.load_vocab(os.path.join(model_path, "vocab.txt")),
                                 do_lower_case=tok_config.get("do_lower_case", True))
    max_length = min(int(tok_config.get("model_max_length", 512)),
                     int(config.get("max_position_embeddings", 512)))
    id2label = {int(k): v for k, v in config["id2label"].items()}
    model = net
    logger.info("model loaded: %s, %d parameters", config["architectures"][0],
                sum(p.numel() for p in net.parameters()))


@app.get("/health")
def health():
    return {"status": "healthy", "model_loaded": model is not None}


@app.post("/predict", response_model=Union[PredictResponse, BatchPredictResponse])
def predict(request: PredictRequest):
    if model is None:
        raise HTTPException(status_code=503, detail="Model not loaded")
    if request.text is not None:
        texts = [request.text]
    elif request.texts is not None:
        texts = request.texts
    else:
        raise HTTPException(status_code=422, detail="text or texts is required")
    try:
        input_ids, attention_mask = tokenizer.encode_batch(texts, max_length)
        with torch.no_grad():
            logits = model(input_ids, attention_mask)
        probs = torch.softmax(logits, dim=-1)
        confidence, index = probs.max(dim=-1)
    except Exception:
        logger.exception("prediction failed")
        raise HTTPException(status_code=500, detail="Prediction failed")
    results = [PredictResponse(label=id2label[int(i)], confidence=round(float(c), 4))
               for c, i in zip(confidence, index)]
    if request.text is not None:
        return results[0]
    return BatchPredictResponse(predictions=results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model directory (default: $MODEL_PATH)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, help="torch threads (default: cores)")
    args = parser.parse_args()
    if args.model:
        os.environ["MODEL_PATH"] = args.model
    if args.threads:
        os.environ["TORCH_NUM_THREADS"] = str(args.threads)
    import uvicorn
    uvicorn.run(app, host=args.host, port=args.port, workers=1)


if __name__ == "__main__":
    main()
