"""The official OpenAI Python SDK's `embeddings.create` on an embedding route: the answer comes
from stable's model and names its vector index in `x-understudy-index`, whether the SDK asks for
base64 (its default, decoded by the SDK) or floats, or hands base64 through; the candidate is
shadowed on the same inputs."""
import base64
import struct
import time
import urllib.request

import openai
import pytest

INPUTS = [
    "search query: how do I reset my password",
    "search query: my parcel has not arrived yet",
]


def close(a, b):
    return len(a) == len(b) and all(
        len(x) == len(y) and all(abs(p - q) < 1e-6 for p, q in zip(x, y)) for x, y in zip(a, b))


@pytest.fixture()
def client(stack):
    return openai.OpenAI(base_url=stack["proxy"] + "/v1", api_key="sk-client", max_retries=0)


def test_embeddings_plain(client):
    raw = client.embeddings.with_raw_response.create(model="docs-embed", input=INPUTS)
    assert raw.headers["x-understudy-route"] == "docs-embed"
    assert raw.headers["x-understudy-release"] == "1"
    assert raw.headers["x-understudy-index"] == "docs-small"
    resp = raw.parse()
    assert resp.model == "docs-embed"
    assert [d.index for d in resp.data] == [0, 1]
    # Stable's model answers at its default 64 dimensions (the candidate's 96 only in shadow).
    assert all(len(d.embedding) == 64 for d in resp.data)
    assert resp.usage.prompt_tokens > 0
    floats = client.embeddings.create(model="docs-embed", input=INPUTS, encoding_format="float")
    assert close([d.embedding for d in floats.data], [d.embedding for d in resp.data])


def test_embeddings_base64(client, stack):
    raw = client.embeddings.with_raw_response.create(
        model="docs-embed", input=INPUTS, encoding_format="base64")
    assert raw.headers["x-understudy-index"] == "docs-small"
    resp = raw.parse()
    vectors = []
    for d in resp.data:
        assert isinstance(d.embedding, str)
        data = base64.b64decode(d.embedding)
        vectors.append(list(struct.unpack(f"<{len(data) // 4}f", data)))
    floats = client.embeddings.create(model="docs-embed", input=INPUTS, encoding_format="float")
    assert close(vectors, [d.embedding for d in floats.data])
    # Enough inputs embedded by both releases for the neighbourhood window: the candidate was
    # scored on them (its base64 answers decoded by the proxy too).
    for i in range(6):
        client.embeddings.create(model="docs-embed", encoding_format="base64",
                                 input=[f"search query: question {i} about invoices", f"refund {i}"])
    deadline = time.time() + 10
    while True:
        metrics = urllib.request.urlopen(stack["admin"] + "/metrics").read().decode()
        line = 'understudy_shadow_requests_total{outcome="scored",release="2",route="docs-embed"}'
        if line in metrics:
            break
        assert time.time() < deadline, metrics
        time.sleep(0.1)
