"""The official `openai` Python client against `sembase serve`, compared with `sembase embed`.

Needs the release binary (target/release/sembase, or $SEMBASE_BIN) and the model
(all-minilm-l6-v2, or $SEMBASE_TEST_MODEL) in the store ($SEMBASE_HOME). Loopback only.

    .venv/bin/python -m pytest tests/python -q
"""
import base64
import json
import math
import os
import struct
import subprocess
import tempfile
from pathlib import Path

import httpx
import openai
import pytest
from sembase_serve import serve

REPO_ROOT = Path(__file__).resolve().parents[2]
SEMBASE = Path(os.environ.get("SEMBASE_BIN", REPO_ROOT / "target" / "release" / "sembase"))
MODEL = os.environ.get("SEMBASE_TEST_MODEL", "all-minilm-l6-v2")
API_KEY = "test-key-123"
MIN_COSINE = 0.99999

TEXTS = [
    "A man is playing a guitar.",
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog",
    "北京是中国的首都。",
    "Émile a mangé une crêpe à Paris.",
    "x",
    # over the model's 256-token limit: both sides must truncate it the same way
    " ".join(f"word{i} and more text" for i in range(200)),
]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def assert_same_vectors(got, expected, dims):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert len(g) == dims, f"input {i}: {len(g)} dims"
        c = cosine(g, e)
        assert c >= MIN_COSINE, f"input {i}: cosine {c}"


def decode_base64(text):
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.fixture(scope="module")
def server():
    with serve(SEMBASE, "--model", MODEL, "--api-key", API_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def embed_cli(texts, dimensions=None):
    """Vectors from `sembase embed` for the texts (JSONL in, JSONL out)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        cmd = [str(SEMBASE), "embed", "--model", MODEL, "--input", str(src), "--output", str(out)]
        if dimensions:
            cmd += ["--dimensions", str(dimensions)]
        subprocess.run(cmd, check=True)
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in rows] == list(range(len(texts)))
    return [r["embedding"] for r in rows]


@pytest.fixture(scope="module")
def reference():
    return {None: embed_cli(TEXTS), 128: embed_cli(TEXTS, 128)}


@pytest.mark.parametrize("dimensions", [None, 128])
def test_float_vectors_equal_sembase_embed(client, reference, dimensions):
    extra = {"dimensions": dimensions} if dimensions else {}
    response = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float", **extra)
    assert response.object == "list"
    assert response.model == MODEL
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    assert all(d.object == "embedding" for d in response.data)
    assert response.usage.prompt_tokens == response.usage.total_tokens > len(TEXTS)
    assert_same_vectors([d.embedding for d in response.data], reference[dimensions], dimensions or 384)


@pytest.mark.parametrize("dimensions", [None, 128])
def test_base64_vectors_equal_sembase_embed(client, reference, dimensions):
    extra = {"dimensions": dimensions} if dimensions else {}
    response = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64", **extra)
    got = [decode_base64(d.embedding) for d in response.data]
    assert_same_vectors(got, reference[dimensions], dimensions or 384)


@pytest.mark.parametrize("dimensions", [None, 128])
def test_the_client_s_default_base64_decoding(client, reference, dimensions):
    # Without encoding_format the client asks for base64 and decodes it itself.
    extra = {"dimensions": dimensions} if dimensions else {}
    response = client.embeddings.create(model=MODEL, input=TEXTS, **extra)
    assert_same_vectors([list(d.embedding) for d in response.data], reference[dimensions], dimensions or 384)


def test_a_single_string_and_token_ids(client, server, reference):
    response = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert len(response.data) == 1
    assert_same_vectors([response.data[0].embedding], reference[None][:1], 384)
    ids = httpx.post(
        f"{server}/tokenize", json={"inputs": TEXTS[:3]}, headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()
    response = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert_same_vectors([d.embedding for d in response.data], reference[None][:3], 384)
    response = client.embeddings.create(model=MODEL, input=ids[1], encoding_format="float")
    assert_same_vectors([response.data[0].embedding], reference[None][1:2], 384)


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_errors_surface_as_the_client_s_exceptions(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="hi", dimensions=0)
    assert e.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="")
    assert e.value.param == "input"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=["a"] * 2049)
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.embeddings.create(model=MODEL, input="hi")
    assert e.value.code == "invalid_api_key"
    assert httpx.get(f"{server}/health").status_code == 200


def test_metrics_count_the_requests(server, client):
    client.embeddings.create(model=MODEL, input="count me", encoding_format="float")
    text = httpx.get(f"{server}/metrics").text
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}
    assert samples['sembase_http_requests_total{route="/v1/embeddings",status="200"}'] >= 1
    assert samples[f'sembase_embedded_tokens_total{{model="{MODEL}"}}'] > 0
