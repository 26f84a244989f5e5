"""test_routes.py - what the one route table decides, seen from a client: HEAD
wherever GET is, a trailing slash read as the path without it, 404 versus 405
with Allow, and the metrics' endpoint label (the route's pattern, never the
client's path; /v2/health/live has its own)."""

import requests

from harness import assert_error, sample, series


GET_PATHS = ["/health", "/health/live", "/health/ready", "/metrics", "/v1/models", "/v1/models/sentiment",
             "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/sentiment", "/v2/models/sentiment/ready"]


def test_head_wherever_get(server):
    for path in GET_PATHS:
        get = server.get(path)
        head = requests.head(server.url(path), timeout=10)
        assert head.status_code == get.status_code == 200, (path, head.status_code, get.status_code)
        assert head.content == b"", path
        assert head.headers["Content-Type"] == get.headers["Content-Type"], path
        assert head.headers["X-Request-ID"]
    # A route without GET has no HEAD either.
    r = requests.head(server.url("/predict"), timeout=10)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"POST"}


def test_trailing_slash_is_the_path_without_it(server):
    a = server.post("/predict/", json={"text": "a gripping, beautifully made film"})
    b = server.post("/predict", json={"text": "a gripping, beautifully made film"})
    assert a.status_code == 200 and a.json() == b.json()
    assert server.get("/health/").json()["status"] == "healthy"
    assert server.get("/v1/models/sentiment/").json()["name"] == "sentiment"
    r = server.post("/v1/models/sentiment/predict/", json={"texts": ["fine", "awful"]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    # Only one slash is dropped, and it is never a redirect.
    assert_error(server.get("/health//"), 404, "not_found")
    assert server.get("/health/", allow_redirects=False).status_code == 200


def test_404_and_405(server):
    assert_error(server.get("/nowhere"), 404, "not_found")
    assert_error(server.get("/v1/models/sentiment/versions/01/predict"), 404, "not_found")  # not a version
    assert_error(server.get("/v2/models/sentiment/versions/x"), 404, "not_found")
    r = server.get("/predict")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "POST"
    r = requests.post(server.url("/v1/models"), timeout=10)
    assert_error(r, 405, "method_not_allowed")
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "HEAD"}
    # Rows of one path with other methods are listed together.
    r = requests.put(server.url("/v1/batch/batch_000000000000000000000000"), timeout=10)
    assert_error(r, 405, "method_not_allowed")
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "HEAD", "DELETE"}


def test_endpoint_labels_are_route_patterns(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v1/models/sentiment", "/batch_result/nope"):
        server.get(path)
    server.post("/v1/models/sentiment/versions/1/predict", json={"text": "fine"})
    server.get("/v2/models/sentiment/versions/1")
    m = server.metrics()
    for label in ("/v2/health/live", "/v2/health/ready", "/v2", "/v1/models/{name}",
                  "/batch_result/{task_id}", "/v1/models/{name}/versions/{version}/predict", "/v2/models/{name}"):
        assert sample(m, "prediction_latency_seconds_count", endpoint=label) >= 1, label
    assert sample(m, "prediction_requests_total", endpoint="/v2/health/live", status="200") >= 1
    # The client's path never becomes a label.
    labels = {lab["endpoint"] for lab, _ in series(m, "prediction_requests_total")}
    assert "/v1/models/sentiment" not in labels and "/batch_result/nope" not in labels, labels
