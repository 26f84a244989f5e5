"""test_blank_text.py - a text the model's tokenizer drops whole is blank: 422 empty_text.

Unicode white space (U+3000, U+00A0, U+2028, ...), format characters such as
U+200B and U+FEFF, and, for the bundled uncased model, lone combining marks
all tokenize to [CLS] [SEP] alone, so the model would answer with a label
for an empty input. Every way in checks them as it checks "" and "   ":
/predict ({"text"} and {"texts"}, the error naming "texts[i]"), the named
route, KServe v2 infer and POST /v1/batch. One letter among them is text.
The blank test is engine_text_is_blank (engine.h), the tokenizer's own rule.
"""

import pytest

from harness import assert_error

IDEOGRAPHIC_SPACE = "\u3000"
NBSP = "\u00a0"
LINE_SEPARATOR = "\u2028"
ZWSP = "\u200b"    # Cf: removed by BERT's clean_text, not white space

BLANK = [
    IDEOGRAPHIC_SPACE,
    NBSP,
    LINE_SEPARATOR,
    ZWSP,
    IDEOGRAPHIC_SPACE * 3,
    IDEOGRAPHIC_SPACE + NBSP + LINE_SEPARATOR + ZWSP,
    " " + IDEOGRAPHIC_SPACE + " \t" + NBSP + "\n" + LINE_SEPARATOR + "\r\n" + ZWSP + " ",
    "\u2029\u205f\u1680\u2002\u202f\u0085",          # more Unicode white space
    "\ufeff\u200d\u2060 \ufeff",                     # format characters
    "\u0301\u0301 \u0308",                           # combining marks: the uncased model strips accents
]
NOT_BLANK = IDEOGRAPHIC_SPACE + "x"
LABELS = ("NEGATIVE", "POSITIVE")


def blank_id(text):
    return "+".join("U%04X" % ord(c) for c in text)


@pytest.mark.parametrize("text", BLANK, ids=blank_id)
def test_predict_text(server, text):
    err = assert_error(server.predict(text), 422, "empty_text")
    assert "text" in err["message"], err
    server.assert_serving()


@pytest.mark.parametrize("text", BLANK, ids=blank_id)
def test_predict_texts_names_the_item(server, text):
    err = assert_error(server.post("/predict", json={"texts": ["a fine film", text]}), 422, "empty_text")
    assert "texts[1]" in err["message"], err


@pytest.mark.parametrize("text", BLANK, ids=blank_id)
def test_named_route(server, text):
    assert_error(server.post("/v1/models/sentiment/predict", json={"text": text}), 422, "empty_text")
    assert_error(server.post("/v1/models/sentiment/predict", json={"texts": [text]}), 422, "empty_text")


@pytest.mark.parametrize("text", BLANK, ids=blank_id)
def test_kserve_infer(server, text):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a fine film", text]}]}
    err = assert_error(server.post("/v2/models/sentiment/infer", json=body), 422, "empty_text")
    assert "data[1]" in err["message"], err


@pytest.mark.parametrize("text", BLANK, ids=blank_id)
def test_batch_job(server, text):
    err = assert_error(server.post("/v1/batch", json={"inputs": ["a fine film", text]}), 422, "empty_text")
    assert "inputs[1]" in err["message"], err
    assert_error(server.post("/v1/batch", json={"inputs": [{"text": text}]}), 422, "empty_text")


def test_one_letter_is_text(server):
    r = server.predict(NOT_BLANK)
    assert r.status_code == 200, r.text
    assert r.json()["label"] in LABELS
    r = server.post("/predict", json={"texts": [NOT_BLANK, "a fine film"]})
    assert r.status_code == 200, r.text
    assert [p["label"] in LABELS for p in r.json()["predictions"]] == [True, True]
    r = server.post("/v1/models/sentiment/predict", json={"text": NOT_BLANK})
    assert r.status_code == 200, r.text
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [NOT_BLANK]}]}
    r = server.post("/v2/models/sentiment/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"][0] in LABELS
    r = server.post("/v1/batch", json={"inputs": [NOT_BLANK]})
    assert r.status_code == 202, r.text
