use super::*;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

const APIS: [Api; 4] = [Api::Chat, Api::Completions, Api::Responses, Api::Messages];

/// A running simulated upstream and a client for it.
struct Harness {
    sim: Arc<SimUpstream>,
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: oneshot::Sender<()>,
    server: JoinSet<io::Result<()>>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, String>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(self.body.as_ref().unwrap()).unwrap()
    }

    fn events(&self) -> Vec<Event> {
        parse_sse(self.body.as_ref().unwrap())
    }
}

async fn start(default: Behavior) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = SimUpstream::new(default);
    let (stop, stopped) = oneshot::channel::<()>();
    let mut server = JoinSet::new();
    server.spawn(Arc::clone(&sim).serve(listener, async {
        let _ = stopped.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    Harness {
        sim,
        addr,
        client,
        stop,
        server,
    }
}

impl Harness {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = Full::new(Bytes::from(body.to_owned()));
        let response = self
            .client
            .request(request.body(body).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|error| error.to_string()),
        }
    }

    async fn call(&self, api: Api, body: &Value, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::POST, path(api), &body.to_string(), headers)
            .await
    }

    /// Stops the server; it must drain promptly.
    async fn shutdown(self) {
        let Harness {
            stop, mut server, ..
        } = self;
        stop.send(()).unwrap();
        let joined = tokio::time::timeout(Duration::from_secs(1), server.join_next()).await;
        joined.unwrap().unwrap().unwrap().unwrap();
    }
}

fn path(api: Api) -> &'static str {
    match api {
        Api::Chat => "/v1/chat/completions",
        Api::Completions => "/v1/completions",
        Api::Responses => "/v1/responses",
        Api::Messages => "/v1/messages",
    }
}

/// A request of `api` asking `prompt`, with `extra` fields merged in.
fn request(api: Api, model: &str, prompt: &str, extra: Value) -> Value {
    let mut body = match api {
        Api::Chat => json!({"model": model, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": prompt}
        ]}),
        Api::Completions => json!({"model": model, "prompt": prompt}),
        Api::Responses => json!({"model": model, "input": [
            {"role": "user", "content": [{"type": "input_text", "text": prompt}]}
        ]}),
        Api::Messages => json!({"model": model, "max_tokens": 1024, "messages": [
            {"role": "user", "content": [{"type": "text", "text": prompt}]}
        ]}),
    };
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

fn stop_finish(api: Api) -> &'static str {
    match api {
        Api::Chat | Api::Completions => "stop",
        Api::Responses => "completed",
        Api::Messages => "end_turn",
    }
}

fn length_finish(api: Api) -> &'static str {
    match api {
        Api::Chat | Api::Completions => "length",
        Api::Responses => "incomplete",
        Api::Messages => "max_tokens",
    }
}

/// (text, finish, completion tokens) of a non-streamed answer.
fn full_answer(api: Api, body: &Value) -> (String, String, u64) {
    let (text, finish, tokens) = match api {
        Api::Chat => (
            &body["choices"][0]["message"]["content"],
            &body["choices"][0]["finish_reason"],
            &body["usage"]["completion_tokens"],
        ),
        Api::Completions => (
            &body["choices"][0]["text"],
            &body["choices"][0]["finish_reason"],
            &body["usage"]["completion_tokens"],
        ),
        Api::Responses => (
            &body["output"][0]["content"][0]["text"],
            &body["status"],
            &body["usage"]["output_tokens"],
        ),
        Api::Messages => (
            &body["content"][0]["text"],
            &body["stop_reason"],
            &body["usage"]["output_tokens"],
        ),
    };
    (
        text.as_str().unwrap().to_owned(),
        finish.as_str().unwrap().to_owned(),
        tokens.as_u64().unwrap(),
    )
}

#[derive(Debug)]
struct Event {
    name: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

fn parse_sse(body: &[u8]) -> Vec<Event> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "unterminated SSE: {text:?}");
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut event = Event {
                name: None,
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event.name = Some(name.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    event.data.push_str(data);
                } else {
                    panic!("not an SSE line: {line:?}");
                }
            }
            event
        })
        .collect()
}

/// Checks the framing of a stream (chunk objects, `[DONE]`, event names = data types,
/// sequence numbers) and returns its event kinds with repeats collapsed.
fn stream_kinds(api: Api, events: &[Event]) -> Vec<String> {
    let mut kinds: Vec<String> = Vec::new();
    for (number, event) in events.iter().enumerate() {
        let kind = match api {
            Api::Chat | Api::Completions => {
                assert_eq!(event.name, None);
                if event.data == "[DONE]" {
                    assert_eq!(number, events.len() - 1, "[DONE] must come last");
                    "[DONE]".to_owned()
                } else {
                    event.json()["object"].as_str().unwrap().to_owned()
                }
            }
            Api::Responses | Api::Messages => {
                let data = event.json();
                let name = event.name.clone().unwrap();
                assert_eq!(data["type"], name.as_str());
                if api == Api::Responses {
                    assert_eq!(data["sequence_number"], number as u64);
                }
                name
            }
        };
        if kinds.last() != Some(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

fn expected_kinds(api: Api, tool: bool) -> Vec<&'static str> {
    match (api, tool) {
        (Api::Chat, _) => vec!["chat.completion.chunk", "[DONE]"],
        (Api::Completions, _) => vec!["text_completion", "[DONE]"],
        (Api::Responses, false) => vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ],
        (Api::Responses, true) => vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ],
        (Api::Messages, _) => vec![
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ],
    }
}

/// (text, finish) of a streamed answer.
fn streamed_answer(api: Api, events: &[Event]) -> (String, String) {
    let mut text = String::new();
    let mut finish = String::new();
    for event in events.iter().filter(|event| event.data != "[DONE]") {
        let data = event.json();
        let (piece, end) = match api {
            Api::Chat => (
                &data["choices"][0]["delta"]["content"],
                &data["choices"][0]["finish_reason"],
            ),
            Api::Completions => (
                &data["choices"][0]["text"],
                &data["choices"][0]["finish_reason"],
            ),
            Api::Responses => match data["type"].as_str().unwrap() {
                "response.output_text.delta" => (&data["delta"], &NULL),
                "response.completed" | "response.incomplete" => {
                    (&NULL, &data["response"]["status"])
                }
                _ => (&NULL, &NULL),
            },
            Api::Messages => (&data["delta"]["text"], &data["delta"]["stop_reason"]),
        };
        text.push_str(piece.as_str().unwrap_or(""));
        if let Some(end) = end.as_str() {
            finish = end.to_owned();
        }
    }
    (text, finish)
}

#[tokio::test]
async fn every_api_answers_the_same_text_streaming_and_not() {
    let harness = start(Behavior::default()).await;
    let prompt = "Where is my order 1234?";
    for api in APIS {
        let plain = harness
            .call(api, &request(api, "sim-a", prompt, json!({})), &[])
            .await;
        assert_eq!(plain.status, StatusCode::OK, "{api:?}");
        assert_eq!(plain.headers[CONTENT_TYPE], JSON_TYPE);
        let body = plain.json();
        assert_eq!(body["model"], "sim-a", "{api:?}");
        let (text, finish, tokens) = full_answer(api, &body);
        assert_eq!(finish, stop_finish(api), "{api:?}");
        assert!(count_words(&text) >= 15, "{api:?}: {text}");
        assert_eq!(tokens, count_words(&text), "{api:?}");

        let streamed = request(api, "sim-b", prompt, json!({"stream": true}));
        let streamed = harness.call(api, &streamed, &[]).await;
        assert_eq!(streamed.status, StatusCode::OK);
        assert!(streamed.headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let events = streamed.events();
        assert_eq!(
            stream_kinds(api, &events),
            expected_kinds(api, false),
            "{api:?}"
        );
        let (streamed_text, streamed_finish) = streamed_answer(api, &events);
        assert_eq!(
            streamed_text, text,
            "{api:?}: another model, streamed, same answer"
        );
        assert_eq!(streamed_finish, finish, "{api:?}");
        assert!(events.len() > 8, "{api:?}: text comes in several deltas");
    }
    let other = request(Api::Chat, "sim-a", "How do I reset my password?", json!({}));
    let other = full_answer(
        Api::Chat,
        &harness.call(Api::Chat, &other, &[]).await.json(),
    );
    let same = request(Api::Chat, "sim-a", prompt, json!({}));
    let same = full_answer(Api::Chat, &harness.call(Api::Chat, &same, &[]).await.json());
    assert_ne!(other.0, same.0, "another prompt, another answer");
    harness.shutdown().await;
}

#[tokio::test]
async fn streams_report_usage_when_asked() {
    let harness = start(Behavior::default()).await;
    for api in [Api::Chat, Api::Completions] {
        let options = json!({"stream": true, "stream_options": {"include_usage": true}});
        let reply = harness
            .call(api, &request(api, "m", "Hello there", options), &[])
            .await;
        let events = reply.events();
        let (text, _) = streamed_answer(api, &events);
        let usage = events[events.len() - 2].json();
        assert_eq!(usage["choices"], json!([]), "{api:?}");
        assert_eq!(usage["usage"]["completion_tokens"], count_words(&text));
        let prompt_words = if api == Api::Chat { 4 } else { 2 }; // with the system message
        assert_eq!(usage["usage"]["prompt_tokens"], prompt_words);
        assert!(
            events[0].json()["usage"].is_null(),
            "{api:?}: other chunks carry null"
        );
    }
    let plain = request(Api::Chat, "m", "Hello there", json!({"stream": true}));
    let events = harness.call(Api::Chat, &plain, &[]).await.events();
    assert!(events.iter().all(|e| !e.data.contains("usage")));
    harness.shutdown().await;
}

/// (tool name, arguments, finish) of a tool call answer.
fn tool_call(api: Api, reply: &Reply, stream: bool) -> (String, String, String) {
    let text = |value: &Value| value.as_str().unwrap().to_owned();
    if !stream {
        let body = reply.json();
        return match api {
            Api::Chat => {
                let call = &body["choices"][0]["message"]["tool_calls"][0];
                assert!(body["choices"][0]["message"]["content"].is_null());
                assert!(text(&call["id"]).starts_with("call_"));
                assert_eq!(call["type"], "function");
                let finish = text(&body["choices"][0]["finish_reason"]);
                (
                    text(&call["function"]["name"]),
                    text(&call["function"]["arguments"]),
                    finish,
                )
            }
            Api::Responses => {
                let item = &body["output"][0];
                assert_eq!(item["type"], "function_call");
                assert!(text(&item["call_id"]).starts_with("call_"));
                (
                    text(&item["name"]),
                    text(&item["arguments"]),
                    text(&body["status"]),
                )
            }
            Api::Messages => {
                let block = &body["content"][0];
                assert_eq!(block["type"], "tool_use");
                let arguments = block["input"].to_string();
                (text(&block["name"]), arguments, text(&body["stop_reason"]))
            }
            Api::Completions => unreachable!(),
        };
    }
    let events = reply.events();
    assert_eq!(
        stream_kinds(api, &events),
        expected_kinds(api, true),
        "{api:?}"
    );
    let mut name = String::new();
    let mut arguments = String::new();
    let mut finish = String::new();
    for data in events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(Event::json)
    {
        match api {
            Api::Chat => {
                let call = &data["choices"][0]["delta"]["tool_calls"][0];
                if let Some(called) = call["function"]["name"].as_str() {
                    assert!(name.is_empty() && arguments.is_empty(), "name comes first");
                    assert_eq!(call["type"], "function");
                    assert!(text(&call["id"]).starts_with("call_"));
                    name = called.to_owned();
                }
                arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
                if let Some(end) = data["choices"][0]["finish_reason"].as_str() {
                    finish = end.to_owned();
                }
            }
            Api::Responses => match data["type"].as_str().unwrap() {
                "response.output_item.added" => name = text(&data["item"]["name"]),
                "response.function_call_arguments.delta" => {
                    arguments.push_str(&text(&data["delta"]))
                }
                "response.function_call_arguments.done" => {
                    assert_eq!(text(&data["arguments"]), arguments)
                }
                "response.completed" => finish = text(&data["response"]["status"]),
                _ => {}
            },
            Api::Messages => match data["type"].as_str().unwrap() {
                "content_block_start" => {
                    assert_eq!(data["content_block"]["type"], "tool_use");
                    name = text(&data["content_block"]["name"]);
                }
                "content_block_delta" => {
                    assert_eq!(data["delta"]["type"], "input_json_delta");
                    arguments.push_str(&text(&data["delta"]["partial_json"]));
                }
                "message_delta" => finish = text(&data["delta"]["stop_reason"]),
                _ => {}
            },
            Api::Completions => unreachable!(),
        }
    }
    (name, arguments, finish)
}

#[tokio::test]
async fn tool_requests_call_the_first_tool() {
    let harness = start(Behavior::default()).await;
    let parameters = json!({"type": "object", "properties": {
        "order_id": {"type": "integer"},
        "reason": {"type": "string"},
        "urgency": {"type": "string", "enum": ["low", "high"]}
    }});
    let second = json!({"type": "object", "properties": {"x": {"type": "string"}}});
    let tools = |api: Api| match api {
        Api::Chat => json!([
            {"type": "function", "function": {"name": "lookup_order", "parameters": parameters}},
            {"type": "function", "function": {"name": "other", "parameters": second}}
        ]),
        Api::Responses => json!([
            {"type": "web_search"},
            {"type": "function", "name": "lookup_order", "parameters": parameters}
        ]),
        _ => json!([{"name": "lookup_order", "input_schema": parameters}]),
    };
    let cases = [
        (Api::Chat, "tool_calls"),
        (Api::Responses, "completed"),
        (Api::Messages, "tool_use"),
    ];
    for (api, finish) in cases {
        let mut answers = Vec::new();
        for stream in [false, true] {
            let extra = json!({"tools": tools(api), "stream": stream});
            let reply = harness
                .call(api, &request(api, "m", "Where is my order?", extra), &[])
                .await;
            let (name, arguments, end) = tool_call(api, &reply, stream);
            assert_eq!(
                (name.as_str(), end.as_str()),
                ("lookup_order", finish),
                "{api:?}"
            );
            let arguments: Value = serde_json::from_str(&arguments).unwrap();
            let keys: Vec<&String> = arguments.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["order_id", "reason", "urgency"], "{api:?}");
            assert!(arguments["order_id"].is_u64());
            assert!(["low", "high"].contains(&arguments["urgency"].as_str().unwrap()));
            answers.push(arguments);
        }
        assert_eq!(answers[0], answers[1], "{api:?}: deterministic arguments");
    }
    // After the tool result the model answers in text.
    let after = json!({"model": "m", "tools": tools(Api::Chat), "messages": [
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "shipped"}
    ]});
    let reply = harness.call(Api::Chat, &after, &[]).await.json();
    assert_eq!(full_answer(Api::Chat, &reply).1, "stop");
    harness.shutdown().await;
}

#[tokio::test]
async fn max_tokens_cuts_the_answer() {
    let harness = start(Behavior::default()).await;
    let cases = [
        (Api::Chat, json!({"max_completion_tokens": 4})),
        (Api::Chat, json!({"max_tokens": 4})),
        (Api::Completions, json!({"max_tokens": 4})),
        (Api::Responses, json!({"max_output_tokens": 4})),
        (Api::Messages, json!({"max_tokens": 4})),
    ];
    for (api, limit) in cases {
        let body = request(api, "m", "Cancel my subscription", limit.clone());
        let (text, finish, tokens) = full_answer(api, &harness.call(api, &body, &[]).await.json());
        assert_eq!((count_words(&text), tokens), (4, 4), "{api:?} {limit}");
        assert_eq!(finish, length_finish(api), "{api:?}");
        let mut body = body;
        body["stream"] = json!(true);
        let events = harness.call(api, &body, &[]).await.events();
        let last = stream_kinds(api, &events);
        let (streamed, finish) = streamed_answer(api, &events);
        assert_eq!(
            (streamed, finish.as_str()),
            (text, length_finish(api)),
            "{api:?}"
        );
        if api == Api::Responses {
            assert_eq!(last.last().unwrap(), "response.incomplete");
        }
    }
    harness.shutdown().await;
}

fn prompt(text: &str, wants_json: bool) -> Prompt {
    Prompt {
        model: "m".to_owned(),
        stream: false,
        include_usage: false,
        seed: fnv(FNV_OFFSET, text),
        prompt_tokens: count_words(text),
        max_words: None,
        wants_json,
        tool: None,
    }
}

fn text_of(answer: &Answer) -> &str {
    match &answer.output {
        Output::Text(text) => text,
        Output::Tool { .. } => panic!("expected text"),
    }
}

#[test]
fn styles_shape_the_answer() {
    let mut rng = StdRng::seed_from_u64(7);
    for question in [
        "Where is my parcel?",
        "I was charged twice",
        "How do I export data?",
    ] {
        let plain = prompt(question, false);
        let echo = compose(Style::Echo, &plain, &mut rng);
        let echo_text = text_of(&echo).to_owned();
        let sentences = echo_text.matches(". ").count() + 1;
        assert!((3..=6).contains(&sentences), "{echo_text}");
        assert!(SUPPORT.iter().any(|s| echo_text.starts_with(s)));
        assert_eq!(text_of(&compose(Style::Echo, &plain, &mut rng)), echo_text);
        assert_eq!(
            text_of(&compose(Style::BrokenJson, &plain, &mut rng)),
            echo_text
        );

        let unrelated = compose(Style::Unrelated, &plain, &mut rng);
        let unrelated = text_of(&unrelated);
        assert!(
            UNRELATED.iter().any(|s| unrelated.starts_with(s)),
            "{unrelated}"
        );

        assert_eq!(text_of(&compose(Style::Refuse, &plain, &mut rng)), REFUSAL);

        let truncated = compose(Style::Truncate, &plain, &mut rng);
        let words = count_words(&echo_text);
        assert_eq!(truncated.finish, Finish::Length);
        assert_eq!(count_words(text_of(&truncated)), words.div_ceil(3));
        assert!(echo_text.starts_with(text_of(&truncated)));

        let json_prompt = prompt(question, true);
        let json_answer = compose(Style::Echo, &json_prompt, &mut rng);
        let parsed: Value = serde_json::from_str(text_of(&json_answer)).unwrap();
        assert_eq!(parsed["answer"], echo_text.as_str());
        assert!(parsed["order_id"].is_u64() && parsed["status"].is_string());
        let broken = compose(Style::BrokenJson, &json_prompt, &mut rng);
        assert!(serde_json::from_str::<Value>(text_of(&broken)).is_err());
        assert!(text_of(&json_answer).starts_with(text_of(&broken)));
    }
}

#[test]
fn benign_varies_some_words_but_not_most() {
    let plain = prompt("My package has not arrived yet", false);
    let echo = compose(Style::Echo, &plain, &mut StdRng::seed_from_u64(0));
    let echo: Vec<&str> = text_of(&echo).split(' ').collect();
    let mut varied_answers = 0;
    for seed in 0..40 {
        let benign = compose(Style::Benign, &plain, &mut StdRng::seed_from_u64(seed));
        let benign: Vec<&str> = text_of(&benign).split(' ').collect();
        assert_eq!(benign.len(), echo.len());
        assert_eq!(benign[..2], echo[..2], "the first two words stay");
        let changed = benign.iter().zip(&echo).filter(|(a, b)| a != b).count();
        assert!(changed * 3 < echo.len(), "most words stay: {benign:?}");
        varied_answers += usize::from(changed > 0);
    }
    assert!(
        varied_answers >= 10,
        "only {varied_answers} of 40 answers varied"
    );
    let mut rng = StdRng::seed_from_u64(1);
    let always = (0..200).map(|_| vary("Hello there, your order.", &mut rng));
    let swapped = always
        .filter(|v| v == "Hello there, your purchase.")
        .count();
    assert!((5..50).contains(&swapped), "about one in ten: {swapped}");
}

#[test]
fn cut_words_keeps_the_first_words() {
    let check = |text: &str, max: usize, expected: &str, cut: bool| {
        let mut text = text.to_owned();
        assert_eq!(cut_words(&mut text, max), cut, "{text:?} {max}");
        assert_eq!(text, expected);
    };
    check("one two three", 2, "one two", true);
    check("one two three", 3, "one two three", false);
    check("one two three", 9, "one two three", false);
    check("one  two\nthree ", 1, "one", true);
    check("héllo wörld", 1, "héllo", true);
    check("a b", 0, "", true);
    check("", 0, "", false);
}

#[test]
fn pieces_rebuild_the_whole() {
    for text in [
        "",
        "one",
        "one two three four five six seven",
        "a  b\nc d ",
        "é è ê ë ē ė ę",
    ] {
        let pieces: Vec<&str> = text_pieces(text).collect();
        assert_eq!(pieces.concat(), text);
        assert!(
            pieces.iter().all(|p| p.split_whitespace().count() <= 3),
            "{pieces:?}"
        );
    }
    let json = r#"{"a":1,"b":"two words \" here","c":[true,false]}"#;
    let pieces: Vec<&str> = json_pieces(json).collect();
    assert_eq!(pieces.concat(), json);
    assert_eq!(
        pieces,
        [
            r#"{"a":"#,
            "1,",
            r#""b":"#,
            r#""two "#,
            r#"words "#,
            r#"\" "#,
            r#"here","#,
            r#""c":"#,
            "[true,",
            "false]}"
        ]
    );
}

#[test]
fn fault_header_values() {
    let cases = [
        ("500", Some(Fault::Status(500))),
        ("429", Some(Fault::Status(429))),
        ("reset", Some(Fault::ResetMidStream)),
        ("hang", Some(Fault::Hang)),
        ("stall", Some(Fault::StallMidStream)),
        ("broken-sse", Some(Fault::BrokenSse)),
        ("200", None),
        ("70000", None),
        ("explode", None),
    ];
    for (value, expected) in cases {
        assert_eq!(parse_fault(value), expected, "{value}");
    }
}

#[tokio::test]
async fn faults_are_injected() {
    let harness = start(Behavior::default()).await;
    let chat = request(Api::Chat, "m", "Hi", json!({}));
    let chat_stream = request(Api::Chat, "m", "Hi", json!({"stream": true}));

    let reply = harness
        .call(Api::Chat, &chat, &[("x-sim-fault", "500")])
        .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let error = reply.json();
    assert_eq!(error["error"]["type"], "server_error");
    assert!(error["error"]["message"].is_string() && error["error"]["param"].is_null());

    let messages = request(Api::Messages, "m", "Hi", json!({"stream": true}));
    let reply = harness
        .call(Api::Messages, &messages, &[("x-sim-fault", "429")])
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");

    for body in [&chat, &chat_stream] {
        let reply = harness
            .call(Api::Chat, body, &[("x-sim-fault", "reset")])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.body.is_err(), "the body breaks off");
    }

    let reply = harness
        .call(Api::Chat, &chat_stream, &[("x-sim-fault", "broken-sse")])
        .await;
    let events = reply.events();
    assert!(events[0].json()["choices"].is_array(), "starts well");
    assert!(events
        .iter()
        .any(|e| serde_json::from_str::<Value>(&e.data).is_err()));
    assert!(events.iter().all(|e| e.data != "[DONE]"));
    let reply = harness
        .call(Api::Chat, &chat, &[("x-sim-fault", "broken-sse")])
        .await;
    assert!(serde_json::from_slice::<Value>(reply.body.as_ref().unwrap()).is_err());

    let started = tokio::time::Instant::now();
    let reply = harness
        .call(Api::Chat, &chat, &[("x-sim-latency-ms", "120")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(120));

    let hang = harness.call(Api::Chat, &chat, &[("x-sim-fault", "hang")]);
    assert!(tokio::time::timeout(Duration::from_millis(150), hang)
        .await
        .is_err());

    let sometimes = |rate| Behavior {
        fault: Some(Fault::Status(503)),
        fault_rate: rate,
        ..Behavior::default()
    };
    harness.sim.set_behavior("never", sometimes(0.0));
    harness.sim.set_behavior("always", sometimes(1.0));
    for (model, status) in [
        ("never", StatusCode::OK),
        ("always", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        for _ in 0..3 {
            let body = request(Api::Responses, model, "Hi", json!({}));
            assert_eq!(
                harness.call(Api::Responses, &body, &[]).await.status,
                status
            );
        }
    }
    // Shutdown releases the hanging request and drains.
    harness.shutdown().await;
}

#[tokio::test]
async fn streams_wait_between_events() {
    let harness = start(Behavior {
        chunk_delay: Duration::from_millis(5),
        ..Behavior::default()
    })
    .await;
    let started = tokio::time::Instant::now();
    let body = request(Api::Messages, "m", "Hi", json!({"stream": true}));
    let events = harness.call(Api::Messages, &body, &[]).await.events();
    assert!(started.elapsed() >= Duration::from_millis(5) * (events.len() as u32 - 1));
    harness.shutdown().await;
}

#[tokio::test]
async fn counts_and_records_requests() {
    let harness = start(Behavior::default()).await;
    for model in ["a", "a", "b"] {
        let body = request(Api::Chat, model, "Hi", json!({}));
        harness.call(Api::Chat, &body, &[("x-trace", model)]).await;
    }
    harness.send(Method::GET, "/v1/models", "", &[]).await;
    assert_eq!(harness.sim.calls(), 4);
    assert_eq!(
        (harness.sim.calls_for("a"), harness.sim.calls_for("b")),
        (2, 1)
    );
    assert_eq!(harness.sim.calls_for("c"), 0);
    let requests = harness.sim.requests();
    let seen: Vec<(&Method, &str)> = requests
        .iter()
        .map(|r| (&r.method, r.path.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (&Method::POST, "/v1/chat/completions"),
            (&Method::POST, "/v1/chat/completions"),
            (&Method::POST, "/v1/chat/completions"),
            (&Method::GET, "/v1/models"),
        ]
    );
    assert_eq!(requests[2].headers["x-trace"], "b");
    let sent: Value = serde_json::from_slice(&requests[2].body).unwrap();
    assert_eq!(sent["model"], "b");
    assert_eq!(harness.sim.take_requests().len(), 4);
    assert!(harness.sim.requests().is_empty());
    assert_eq!(harness.sim.calls(), 4);
    harness.shutdown().await;
}

#[test]
fn keeps_the_last_256_requests() {
    let sim = SimUpstream::new(Behavior::default());
    let (parts, ()) = Request::post("/v1/completions")
        .body(())
        .unwrap()
        .into_parts();
    for number in 0..300 {
        sim.record(&parts, &Bytes::from(number.to_string()), Some("m"));
    }
    let requests = sim.requests();
    assert_eq!(requests.len(), RECENT_LIMIT);
    assert_eq!(requests[0].body, "44");
    assert_eq!(requests[RECENT_LIMIT - 1].body, "299");
    assert_eq!((sim.calls(), sim.calls_for("m")), (300, 300));
}

#[tokio::test]
async fn behaviour_follows_the_model() {
    let harness = start(Behavior::default()).await;
    harness.sim.set_behavior(
        "candidate",
        Behavior {
            style: Style::Refuse,
            ..Behavior::default()
        },
    );
    let ask = |model: &str| request(Api::Chat, model, "Can I return shoes?", json!({}));
    let answer = |reply: Reply| full_answer(Api::Chat, &reply.json()).0;
    let stable = answer(harness.call(Api::Chat, &ask("stable"), &[]).await);
    assert_ne!(stable, REFUSAL);
    assert_eq!(
        answer(harness.call(Api::Chat, &ask("candidate"), &[]).await),
        REFUSAL
    );
    harness.sim.set_behavior(
        "candidate",
        Behavior {
            style: Style::Unrelated,
            ..Behavior::default()
        },
    );
    let unrelated = answer(harness.call(Api::Chat, &ask("candidate"), &[]).await);
    assert!(unrelated != stable && unrelated != REFUSAL);
    assert_eq!(
        answer(harness.call(Api::Chat, &ask("stable"), &[]).await),
        stable
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn other_endpoints() {
    let harness = start(Behavior::default()).await;
    harness.sim.set_behavior("stable", Behavior::default());
    let models = harness
        .send(Method::GET, "/v1/models", "", &[])
        .await
        .json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "stable");

    let headers = [("x-one", "1"), ("x-two", "a"), ("x-two", "b")];
    let echo = harness
        .send(Method::PUT, "/echo/some/where?q=1&r=2", "hé", &headers)
        .await
        .json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo/some/where");
    assert_eq!(echo["query"], "q=1&r=2");
    assert_eq!(echo["headers"]["x-one"], "1");
    assert_eq!(echo["headers"]["x-two"], "a, b");
    assert_eq!(echo["body"], "hé");

    let missing = harness.send(Method::GET, "/v2/nothing", "", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");

    let cases = [
        (Api::Chat, "{not json", "error"),
        (Api::Messages, "{not json", "type"),
        (Api::Responses, r#"{"input": "no model"}"#, "error"),
        (Api::Completions, "[1, 2]", "error"),
    ];
    for (api, body, key) in cases {
        let reply = harness.send(Method::POST, path(api), body, &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{api:?} {body}");
        assert!(
            reply.json()[key].is_object() || reply.json()[key] == "error",
            "{api:?}"
        );
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    }
    harness.shutdown().await;
}

#[tokio::test]
async fn serves_h2c() {
    let harness = start(Behavior::default()).await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let body = request(Api::Messages, "m", "Hi", json!({"stream": true}));
    let request = Request::post(format!("http://{}/v1/messages", harness.addr))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let kinds = stream_kinds(Api::Messages, &parse_sse(&bytes));
    assert_eq!(kinds, expected_kinds(Api::Messages, false));
    harness.shutdown().await;
}
