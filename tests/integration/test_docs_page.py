"""test_docs_page.py - GET /docs with the real binary: Swagger UI, embedded
in the binary at build time, works in a real browser (Debian's chromium)
over the server's own /openapi.json with no console error, exception or
Content-Security-Policy violation, and its "Try it out" and "Authorize" send
real requests; its files are served as a static file server should (types,
gzip or not, ETag and 304, HEAD, no other files)."""

import gzip
import os
import re

import requests

from harness import artifacts_dir, create_key

PAGE_FILES = ("/docs/swagger-ui.css", "/docs/favicon-32x32.png", "/docs/swagger-ui-bundle.js", "/docs/docs.js")



def test_swagger_ui_in_a_browser(server_factory, browser, tmp_path):
    keys = tmp_path / "keys.json"
    key = create_key(keys, "predict", "predict")
    s = server_factory("--keys-file", str(keys))
    n_ops = sum(len(item) for item in s.get("/openapi.json").json()["paths"].values())
    shot = os.path.join(artifacts_dir(), "docs.png")
    r = browser("docs_page.js", s.url(""), shot, key)
    assert r["status"] == 200
    assert "script-src 'self';" in r["csp"] and "unsafe-eval" not in r["csp"]
    assert r["title"].startswith("aiserve " + s.get("/health").json()["version"])
    assert r["operations"] == n_ops  # every operation of the document is drawn
    # "Try it out" without a key is the server's 401; after "Authorize", 200.
    assert (r["withoutKey"], r["withKey"]) == ("401", "200")
    # The only error the page saw is the browser's note of that 401.
    assert r["problems"] == ["console: Failed to load resource: the server responded with a status of "
                             "401 (Unauthorized)"], r["problems"]
    assert os.path.getsize(shot) > 10000


def test_page_files(server_factory):
    s = server_factory()
    page = s.get("/docs", headers={"Accept-Encoding": "identity"})
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Content-Encoding" not in page.headers
    refs = set(re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.text))
    assert refs == set(PAGE_FILES), refs
    assert "<script>" not in page.text  # no inline script: the CSP allows none
    types = {".css": "text/css; charset=utf-8", ".png": "image/png", ".js": "text/javascript; charset=utf-8"}
    for path in PAGE_FILES:
        plain = s.get(path, headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and plain.headers["Content-Type"] == types[os.path.splitext(path)[1]]
        assert int(plain.headers["Content-Length"]) == len(plain.content) > 0
        # gzip for clients that take it: the same bytes once inflated.
        raw = requests.get(s.url(path), headers={"Accept-Encoding": "gzip, deflate"}, stream=True, timeout=30)
        assert raw.headers["Content-Encoding"] == "gzip" and raw.headers["Vary"] == "Accept-Encoding"
        assert gzip.decompress(raw.raw.read()) == plain.content
        # "gzip;q=0" refuses it.
        assert "Content-Encoding" not in s.get(path, headers={"Accept-Encoding": "gzip;q=0"}).headers
        # Revalidation: the ETag gives 304 without a body.
        etag = plain.headers["ETag"]
        assert re.fullmatch(r'"[0-9a-f]{16}"', etag) and plain.headers["Cache-Control"] == "no-cache"
        again = s.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
        assert s.get(path, headers={"If-None-Match": '"0000000000000000"'}).status_code == 200
        assert plain.headers["X-Content-Type-Options"] == "nosniff"
        head = requests.head(s.url(path), headers={"Accept-Encoding": "identity"}, timeout=30)
        assert head.status_code == 200 and head.content == b"" and head.headers["ETag"] == etag
    # The licence of what is embedded is served beside it.
    assert "Apache License" in s.get("/docs/LICENSE.txt").text
    # Nothing else: no other file, no way out of the table.
    for path in ("/docs/nope.js", "/docs/index.html", "/docs/.env", "/docs/..%2f..%2fetc%2fpasswd",
                 "/docs/a/b", "/docs/%2e%2e", "/docsx"):
        r = s.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    r = s.post("/docs/docs.js", data=b"x")
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"
