"""The official OpenAI Python SDK, pointed at Understudy by base URL only."""
import json
import urllib.request

import openai
import pytest

TOOLS = [{
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Find an order by id",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}},
                       "required": ["order_id"]},
    },
}]


@pytest.fixture()
def client(stack):
    return openai.OpenAI(base_url=stack["proxy"] + "/v1", api_key="sk-client", max_retries=0)


def test_chat_plain(client):
    raw = client.chat.completions.with_raw_response.create(
        model="support-bot", messages=[{"role": "user", "content": "Where is my order 1234?"}])
    assert raw.headers["x-understudy-route"] == "support-bot"
    assert raw.headers["x-understudy-release"] == "1"
    resp = raw.parse()
    assert resp.model == "support-bot"
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens > 0


def test_chat_streaming_matches_plain(client):
    msgs = [{"role": "user", "content": "How long does shipping take?"}]
    plain = client.chat.completions.create(model="support-bot", messages=msgs).choices[0].message.content
    chunks = list(client.chat.completions.create(model="support-bot", messages=msgs, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len(chunks) > 3
    assert all(c.model == "support-bot" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_chat_tool_calls_plain_and_streaming(client):
    msgs = [{"role": "user", "content": "Look up order 1234"}]
    resp = client.chat.completions.create(model="support-bot", messages=msgs, tools=TOOLS)
    call = resp.choices[0].message.tool_calls[0]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup_order"
    assert "order_id" in json.loads(call.function.arguments)

    with client.chat.completions.stream(model="support-bot", messages=msgs, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]
    assert streamed.function.name == "lookup_order"
    assert json.loads(streamed.function.arguments) == json.loads(call.function.arguments)


def test_completions_plain_and_streaming(client):
    resp = client.completions.create(model="support-bot", prompt="Write a greeting")
    assert resp.model == "support-bot" and resp.choices[0].text
    parts = list(client.completions.create(model="support-bot", prompt="Write a greeting", stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == resp.choices[0].text


def test_responses_plain_and_streaming(client):
    resp = client.responses.create(model="support-bot", input="Can I return a gift?")
    assert resp.model == "support-bot"
    assert resp.output_text
    events = list(client.responses.create(model="support-bot", input="Can I return a gift?", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == resp.output_text
    assert events[-1].response.model == "support-bot"


def test_responses_function_call(client):
    tools = [{"type": "function", "name": "lookup_order", "description": "Find an order",
              "parameters": TOOLS[0]["function"]["parameters"]}]
    resp = client.responses.create(model="support-bot", input="Look up order 1234", tools=tools)
    calls = [o for o in resp.output if o.type == "function_call"]
    assert calls and calls[0].name == "lookup_order"
    assert "order_id" in json.loads(calls[0].arguments)


def test_upstream_error_reaches_the_sdk_as_its_error(client):
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="support-bot", messages=[{"role": "user", "content": "x"}],
                                       extra_headers={"x-sim-fault": "500"})
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="anything", messages=[{"role": "user", "content": "x"}],
                                       extra_headers={"x-understudy-route": "no-such-route"})
    assert "no-such-route" in str(e.value)


def test_mirrors_are_scored(stack, client):
    for i in range(5):
        client.chat.completions.create(model="support-bot", messages=[{"role": "user", "content": f"question {i}"}])
    import time
    deadline = time.time() + 10
    while time.time() < deadline:
        text = urllib.request.urlopen(stack["admin"] + "/metrics").read().decode()
        scored = [l for l in text.splitlines()
                  if l.startswith("understudy_shadow_requests_total") and 'route="support-bot"' in l and 'outcome="scored"' in l]
        if scored and float(scored[0].split()[-1]) >= 5:
            return
        time.sleep(0.1)
    raise AssertionError("mirrored requests were not scored:\n" + text)
