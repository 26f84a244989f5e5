#!/usr/bin/python3
"""seed_cached_service.py - the seed's FastAPI service (bench/http/seed_service.py)
with the Redis cache decorator it had in front of /predict, for the cache
benchmark (bench/cache/run.sh):

  - redis-py's synchronous client, one connection pool, from REDIS_URL
    (default redis://127.0.0.1:6379/0).
  - The key is "prediction:" + MD5 of the text (the seed's key: it ignores
    the model and its version); a hit returns json.loads of the stored
    answer; a miss runs the endpoint and stores json.dumps of its answer with
    SETEX and a TTL of one hour.
  - Same endpoint shape and sync `def` (FastAPI's threadpool) as the seed.

Only single texts are cached, as the seed cached them; lists go straight to
the model.
"""

import functools
import hashlib
import json
import os
import sys

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "http"))
import seed_service  # noqa: E402
from seed_service import PredictRequest, app  # noqa: E402

CACHE_TTL = 3600
redis_client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


def cache_prediction(ttl=CACHE_TTL):
    def decorator(func):
        @functools.wraps(func)
        def wrapper(request: PredictRequest):
            if request.text is None:
                return func(request)
            key = "prediction:" + hashlib.md5(request.text.encode("utf-8")).hexdigest()
            cached = redis_client.get(key)
            if cached:
                return json.loads(cached)
            result = func(request)
            redis_client.setex(key, ttl, json.dumps(result.dict()))
            return result
        return wrapper
    return decorator


# Replace the seed's /predict route with the cached one (same path, same models).
app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/predict"]
app.post("/predict")(cache_prediction()(seed_service.predict))
