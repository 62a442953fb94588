"""The official Anthropic Python SDK, pointed at Understudy by base URL only."""
import anthropic
import pytest

TOOLS = [{"name": "lookup_order", "description": "Find an order by id",
          "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}]


@pytest.fixture()
def client(stack):
    return anthropic.Anthropic(base_url=stack["proxy"], api_key="sk-ant-client", max_retries=0)


def test_messages_plain(client):
    raw = client.messages.with_raw_response.create(
        model="claude-bot", max_tokens=200, messages=[{"role": "user", "content": "Where is my parcel?"}])
    assert raw.headers["x-understudy-route"] == "claude-bot"
    msg = raw.parse()
    assert msg.model == "claude-bot"
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0


def test_messages_streaming_matches_plain(client):
    msgs = [{"role": "user", "content": "Do you ship abroad?"}]
    plain = client.messages.create(model="claude-bot", max_tokens=200, messages=msgs)
    with client.messages.stream(model="claude-bot", max_tokens=200, messages=msgs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == plain.content[0].text
    assert final.model == "claude-bot"
    assert final.stop_reason == "end_turn"


def test_messages_tool_use_plain_and_streaming(client):
    msgs = [{"role": "user", "content": "Look up order 1234"}]
    msg = client.messages.create(model="claude-bot", max_tokens=200, messages=msgs, tools=TOOLS)
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use"
    assert uses and uses[0].name == "lookup_order" and "order_id" in uses[0].input
    with client.messages.stream(model="claude-bot", max_tokens=200, messages=msgs, tools=TOOLS) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert streamed and streamed[0].name == "lookup_order"
    assert streamed[0].input == uses[0].input


def test_errors_in_anthropic_shape(client):
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-bot", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                               extra_headers={"x-sim-fault": "500"})
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="x", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                               extra_headers={"x-understudy-route": "missing"})
    assert e.value.body["type"] == "error"
