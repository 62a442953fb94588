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

/// With `x-sim-stamp: 1`, each chat event's id ends in the time it was sent, events 5 ms apart
/// are stamped at least 5 ms apart, all within the request; without it the ids are random.
#[tokio::test]
async fn stamped_events_carry_the_time_they_were_sent() {
    let harness = start(Behavior::default()).await;
    let body = request(Api::Chat, "m", "Hi", json!({"stream": true}));
    let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let before = nanos(SystemTime::now());
    let reply = harness
        .call(
            Api::Chat,
            &body,
            &[("x-sim-stamp", "1"), ("x-sim-chunk-delay-ms", "5")],
        )
        .await;
    let after = nanos(SystemTime::now());
    let stamps: Vec<u64> = reply
        .events()
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| {
            let id = e.json()["id"].as_str().unwrap().to_owned();
            let hex = id.strip_prefix("chatcmpl-sim").unwrap();
            u64::from_str_radix(hex, 16).unwrap()
        })
        .collect();
    assert!(stamps.len() > 2, "{stamps:?}");
    assert!(
        stamps.iter().all(|&t| (before..=after).contains(&t)),
        "{stamps:?}"
    );
    for pair in stamps.windows(2) {
        assert!(pair[1] >= pair[0] + 5_000_000, "{stamps:?}");
    }

    let plain = harness.call(Api::Chat, &body, &[]).await.events();
    let id = plain[0].json()["id"].as_str().unwrap().to_owned();
    let hex = u64::from_str_radix(id.strip_prefix("chatcmpl-sim").unwrap(), 16).unwrap();
    assert!(!(before..=nanos(SystemTime::now())).contains(&hex), "{id}");
    harness.shutdown().await;
}

#[test]
fn stamp_leaves_events_without_a_sim_id_alone() {
    let at = UNIX_EPOCH + Duration::from_nanos(0x1234_5678_9abc_def0);
    let event = b"data: {\"id\":\"chatcmpl-sim00000000000000ff\",\"object\":\"x\"}\n\n";
    assert_eq!(
        &stamp(event, at)[..],
        &b"data: {\"id\":\"chatcmpl-sim123456789abcdef0\",\"object\":\"x\"}\n\n"[..]
    );
    for other in [
        &b"data: [DONE]\n\n"[..],
        b"data: {\"id\":\"user-chosen\"}\n\n",
        b"data: {\"id\":\"chatcmpl-sim12\"}\n\n",
    ] {
        assert_eq!(&stamp(other, at)[..], other);
    }
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

// ---------------------------------------------------------------------------------------------
// Semantic scoring: the new styles, embeddings and the judge

/// Prompts whose Echo answers cover the support corpus many times over.
fn many_prompts() -> Vec<String> {
    (0..400).map(|i| format!("Question number {i}?")).collect()
}

fn distinct_words(text: &str) -> std::collections::HashSet<String> {
    meaning::words(text).into_iter().collect()
}

/// Share of `echo`'s distinct words that `other` keeps.
fn kept(echo: &str, other: &str) -> f64 {
    let (echo, other) = (distinct_words(echo), distinct_words(other));
    echo.intersection(&other).count() as f64 / echo.len() as f64
}

fn similarity(a: &str, b: &str) -> f64 {
    cosine(&embed(a, 64), &embed(b, 64))
}

/// (min, mean, max) of the values.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, values.iter().sum::<f64>() / values.len() as f64, max)
}

#[test]
fn corpus_tables_are_consistent() {
    assert!(
        meaning::STOP_WORDS.windows(2).all(|pair| pair[0] < pair[1]),
        "stop words sorted and unique"
    );
    for (right, wrong) in FACTS {
        let holders = SUPPORT.iter().filter(|s| s.contains(right)).count();
        assert_eq!(holders, 1, "{right:?} is in exactly one sentence");
        assert_ne!(right, wrong);
    }
    for sentence in SUPPORT {
        assert!(
            FACTS.iter().any(|(right, _)| sentence.contains(right)),
            "no fact in {sentence:?}"
        );
        assert!(!meaning::states_wrong_facts(sentence), "{sentence:?}");
        let wrong = meaning::wrong_facts(sentence);
        assert_ne!(&wrong, sentence);
        assert!(meaning::states_wrong_facts(&wrong), "{wrong:?}");
    }
    for (from, _) in PARAPHRASES.iter().chain(SYNONYMS).chain(PIRATE_WORDS) {
        assert_eq!(*from, from.to_lowercase(), "left sides are lowercase");
    }
    // A word and its synonym share a meaning class; other words are their own.
    assert_eq!(
        meaning::meaning_class("package"),
        meaning::meaning_class("parcel")
    );
    assert_eq!(
        meaning::meaning_class("issue"),
        meaning::meaning_class("problem")
    );
    assert_eq!(
        meaning::meaning_class("reaching"),
        meaning::meaning_class("contacting")
    );
    assert_eq!(meaning::meaning_class("octopuses"), "octopuses");
    assert_ne!(
        meaning::meaning_class("package"),
        meaning::meaning_class("refund")
    );
}

#[test]
fn words_and_rewrites_keep_the_text_shape() {
    assert_eq!(
        meaning::words("I'm here: Two-factor, “ok” 42’s!"),
        ["i'm", "here", "two", "factor", "ok", "42's"]
    );
    assert_eq!(
        meaning::paraphrase("You can track your package. Thanks, I can see it."),
        "You are able to follow your parcel. Thanks, I notice it."
    );
    assert_eq!(
        meaning::pirate("Your order is here."),
        "Arr, matey! Yer order be here. Yo ho!"
    );
    assert_eq!(
        meaning::paraphrase("Send an item back, a confirmation and an email."),
        "Send a product back, a notification and a mail."
    );
    assert!((meaning::jaccard("a b c", "a b d") - 0.5).abs() < 1e-9);
    assert!((meaning::jaccard("", "") - 1.0).abs() < 1e-9);
}

#[test]
fn embeddings_are_deterministic_unit_vectors() {
    let text = "Your order has been shipped.";
    let vector = embed(text, 64);
    assert_eq!(vector.len(), 64);
    assert_eq!(vector, embed(text, 64), "deterministic");
    let norm: f64 = vector.iter().map(|x| f64::from(*x).powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    for dims in [1, 8, 256, 1536] {
        let vector = embed(text, dims);
        assert_eq!(vector.len(), dims);
        let norm: f64 = vector.iter().map(|x| f64::from(*x).powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{dims}: {norm}");
    }
    assert!(embed("the of and to", 16).iter().all(|x| *x == 0.0));
    assert!(embed("", 16).iter().all(|x| *x == 0.0));
    assert_eq!(cosine(&embed("", 16), &embed(text, 16)), 0.0);
    // Case and punctuation do not matter; synonyms are close; other words are not.
    assert!((similarity("ORDER shipped!", "order, shipped") - 1.0).abs() < 1e-6);
    assert!(similarity("package", "parcel") > 0.95);
    assert!(similarity("package", "refund").abs() < 0.5);
}

#[test]
fn new_styles_keep_or_change_meaning_as_documented() {
    let mut rng = StdRng::seed_from_u64(11);
    let (mut paraphrase, mut pirate, mut wrong, mut unrelated, mut benign) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut paraphrase_words, mut pirate_kept, mut wrong_words) =
        (Vec::new(), Vec::new(), Vec::new());
    for prompt in many_prompts() {
        let echo = answer_text(Style::Echo, &prompt, &mut rng);
        let text = |style, rng: &mut StdRng| answer_text(style, &prompt, rng);

        let para = text(Style::Paraphrase, &mut rng);
        assert_eq!(para, text(Style::Paraphrase, &mut rng), "deterministic");
        paraphrase.push(similarity(&echo, &para));
        paraphrase_words.push(meaning::jaccard(&echo, &para));
        assert!(!meaning::states_wrong_facts(&para), "{para}");

        let arr = text(Style::Pirate, &mut rng);
        assert!(arr.starts_with("Arr, matey! ") && arr.ends_with(" Yo ho!"));
        pirate.push(similarity(&echo, &arr));
        pirate_kept.push(kept(&echo, &arr));

        let false_facts = text(Style::WrongFacts, &mut rng);
        assert_ne!(false_facts, echo);
        assert!(meaning::states_wrong_facts(&false_facts), "{false_facts}");
        assert!(!meaning::states_wrong_facts(&echo), "{echo}");
        wrong.push(similarity(&echo, &false_facts));
        wrong_words.push(meaning::jaccard(&echo, &false_facts));

        unrelated.push(similarity(&echo, &text(Style::Unrelated, &mut rng)));
        let (one, two) = (text(Style::Benign, &mut rng), text(Style::Benign, &mut rng));
        benign.push(similarity(&one, &two));
        assert!(!meaning::states_wrong_facts(&one), "{one}");
    }
    let report = [
        ("paraphrase cosine", spread(&paraphrase)),
        ("paraphrase jaccard", spread(&paraphrase_words)),
        ("pirate cosine", spread(&pirate)),
        ("pirate kept", spread(&pirate_kept)),
        ("wrong facts cosine", spread(&wrong)),
        ("wrong facts jaccard", spread(&wrong_words)),
        ("unrelated cosine", spread(&unrelated)),
        ("benign vs benign cosine", spread(&benign)),
    ];
    for (name, (min, mean, max)) in report {
        eprintln!("{name}: min {min:.3} mean {mean:.3} max {max:.3}");
    }
    assert!(spread(&paraphrase).0 >= 0.9, "paraphrase keeps the meaning");
    assert!(
        spread(&paraphrase_words).2 < 0.5,
        "paraphrase changes the words"
    );
    assert!(spread(&unrelated).2 <= 0.5, "unrelated is far");
    assert!(
        spread(&unrelated).1.abs() < 0.1,
        "unrelated is near 0 on average"
    );
    assert!(spread(&benign).0 >= 0.95, "benign noise is small");
    assert!(spread(&pirate_kept).0 >= 0.7, "pirate keeps most words");
    assert!(
        spread(&pirate).1 < spread(&paraphrase).1,
        "pirate adds words"
    );
    assert!(
        spread(&wrong_words).0 >= 0.85,
        "wrong facts keeps the words"
    );
}

#[tokio::test]
async fn new_styles_answer_on_every_api_streaming_and_not() {
    let harness = start(Behavior::default()).await;
    let prompt = "Can I get my money back?";
    for style in [Style::Paraphrase, Style::Pirate, Style::WrongFacts] {
        harness.sim.set_behavior(
            "candidate",
            Behavior {
                style,
                ..Behavior::default()
            },
        );
        let expected = answer_text(style, prompt, &mut rand::rng());
        assert_ne!(expected, answer_text(Style::Echo, prompt, &mut rand::rng()));
        for api in APIS {
            let body = request(api, "candidate", prompt, json!({}));
            let reply = harness.call(api, &body, &[]).await;
            let (text, finish, _) = full_answer(api, &reply.json());
            assert_eq!(
                (text.as_str(), finish.as_str()),
                (expected.as_str(), stop_finish(api))
            );
            let body = request(api, "candidate", prompt, json!({"stream": true}));
            let events = harness.call(api, &body, &[]).await.events();
            assert_eq!(stream_kinds(api, &events), expected_kinds(api, false));
            assert_eq!(
                streamed_answer(api, &events).0,
                expected,
                "{style:?} {api:?}"
            );
        }
        // JSON mode wraps the styled prose.
        let body = request(
            Api::Chat,
            "candidate",
            prompt,
            json!({"response_format": {"type": "json_object"}}),
        );
        let reply = harness.call(Api::Chat, &body, &[]).await;
        let answer: Value = serde_json::from_str(&full_answer(Api::Chat, &reply.json()).0).unwrap();
        assert_eq!(answer["answer"], expected.as_str());
    }
    harness.shutdown().await;
}

#[test]
fn answer_text_gives_each_style() {
    let mut rng = StdRng::seed_from_u64(2);
    let prompt = "Where is my parcel?";
    let echo = answer_text(Style::Echo, prompt, &mut rng);
    assert_eq!(
        echo,
        text_of(&compose(
            Style::Echo,
            &super::tests::prompt(prompt, false),
            &mut rng
        ))
    );
    assert_eq!(answer_text(Style::Refuse, prompt, &mut rng), REFUSAL);
    assert!(echo.starts_with(&answer_text(Style::Truncate, prompt, &mut rng)));
    let json_answer: Value =
        serde_json::from_str(&answer_text(Style::Echo, "Answer in JSON please", &mut rng)).unwrap();
    assert!(json_answer["answer"].is_string());
    // A judge model answers other prompts like Echo.
    assert_eq!(answer_text(Style::Judge, prompt, &mut rng), echo);
    assert_eq!(answer_text(Style::JudgeGarbled, prompt, &mut rng), echo);
}

fn tally(verdicts: impl IntoIterator<Item = Verdict>) -> (f64, f64, f64) {
    let (mut a, mut b, mut tie, mut n) = (0.0, 0.0, 0.0, 0.0);
    for verdict in verdicts {
        n += 1.0;
        match verdict {
            Verdict::A => a += 1.0,
            Verdict::B => b += 1.0,
            Verdict::Tie => tie += 1.0,
        }
    }
    (a / n, b / n, tie / n)
}

#[test]
fn clean_answers_have_no_flaws_and_bad_ones_do() {
    let mut rng = StdRng::seed_from_u64(4);
    for prompt in many_prompts().iter().take(100) {
        for style in [Style::Echo, Style::Benign, Style::Paraphrase] {
            let answer = answer_text(style, prompt, &mut rng);
            let assessment = judge::assess(&answer, prompt);
            assert!(
                assessment.flaws.is_empty(),
                "{style:?} {answer}: {assessment:?}"
            );
        }
        let flaws =
            |style, rng: &mut StdRng| judge::assess(&answer_text(style, prompt, rng), prompt).flaws;
        assert!(flaws(Style::Refuse, &mut rng).contains(&"refuses"));
        assert!(flaws(Style::Pirate, &mut rng).contains(&"talks like a pirate"));
        assert!(flaws(Style::Unrelated, &mut rng).contains(&"is off topic"));
        assert_eq!(flaws(Style::WrongFacts, &mut rng), ["states wrong facts"]);
    }
    let assess = |text: &str| judge::assess(text, "Where is my order?").flaws;
    assert_eq!(assess(""), ["is empty"]);
    assert_eq!(assess("Your order has been shipped and"), ["is cut off"]);
    assert_eq!(
        assess("{\"answer\": \"Your order has been shipped.\""),
        ["is broken JSON"]
    );
    assert!(assess("{\"answer\": \"Your order has been shipped.\"}").is_empty());
    // The request's own words are on topic.
    let octopus = "Octopuses have three hearts and blue blood.";
    assert!(
        judge::assess(octopus, "Tell me about octopuses, their hearts and blood")
            .flaws
            .is_empty()
    );
    assert_eq!(assess(octopus), ["is off topic"]);
}

#[test]
fn judge_prefers_the_clearly_better_answer() {
    let mut rng = StdRng::seed_from_u64(8);
    let prompts = many_prompts();
    for style in [
        Style::Refuse,
        Style::Unrelated,
        Style::Pirate,
        Style::WrongFacts,
    ] {
        let mut first = Vec::new();
        let mut second = Vec::new();
        for prompt in &prompts {
            let good = answer_text(Style::Echo, prompt, &mut rng);
            let bad = answer_text(style, prompt, &mut rng);
            first.push(judge_verdict(
                "Prefer correct, polite, on-topic answers.",
                prompt,
                &good,
                &bad,
                &mut rng,
            ));
            second.push(judge_verdict(
                "Prefer correct, polite, on-topic answers.",
                prompt,
                &bad,
                &good,
                &mut rng,
            ));
        }
        let (a, b, tie) = tally(first);
        eprintln!("Echo (A) vs {style:?} (B): A {a:.3} B {b:.3} tie {tie:.3}");
        assert!(
            (0.9..1.0).contains(&a),
            "{style:?}: the better answer mostly wins, not always"
        );
        assert!(b < 0.05 && tie < 0.07, "{style:?}: {b} {tie}");
        let (a, b, tie) = tally(second);
        eprintln!("{style:?} (A) vs Echo (B): A {a:.3} B {b:.3} tie {tie:.3}");
        assert!(
            (0.9..1.0).contains(&b),
            "{style:?}: position does not matter"
        );
        assert!(a < 0.05 && tie < 0.07, "{style:?}: {a} {tie}");
    }
    // A paraphrase with the true facts beats the same answer with wrong ones.
    let prompt = "Question number 7?";
    let para = answer_text(Style::Paraphrase, prompt, &mut rng);
    let wrong = answer_text(Style::WrongFacts, prompt, &mut rng);
    let (a, _, _) = tally((0..400).map(|_| judge_verdict("", prompt, &para, &wrong, &mut rng)));
    assert!(a > 0.9, "{a}");
}

#[test]
fn judge_flips_coins_between_equal_answers() {
    let mut rng = StdRng::seed_from_u64(9);
    for style in [Style::Echo, Style::Benign, Style::Paraphrase] {
        let mut verdicts = Vec::new();
        let mut swapped = Vec::new();
        for prompt in many_prompts().iter().cycle().take(2000) {
            let echo = answer_text(Style::Echo, prompt, &mut rng);
            let other = answer_text(style, prompt, &mut rng);
            verdicts.push(judge_verdict("", prompt, &echo, &other, &mut rng));
            swapped.push(judge_verdict("", prompt, &other, &echo, &mut rng));
        }
        for (order, verdicts) in [("echo first", verdicts), ("echo second", swapped)] {
            let (a, b, tie) = tally(verdicts);
            eprintln!("Echo vs {style:?}, {order}: A {a:.3} B {b:.3} tie {tie:.3}");
            assert!((0.38..0.52).contains(&a), "{style:?} {order}: A {a}");
            assert!((0.28..0.42).contains(&b), "{style:?} {order}: B {b}");
            assert!((0.14..0.26).contains(&tie), "{style:?} {order}: tie {tie}");
            assert!(
                a > b + 0.04,
                "{style:?} {order}: the position bias favours A"
            );
        }
    }
    let unbiased = Judge {
        position_bias: 0.0,
        ..Judge::default()
    };
    let same = "Your order has been shipped.";
    let (a, b, _) = tally((0..4000).map(|_| unbiased.verdict("", "", same, same, &mut rng)));
    assert!((a - b).abs() < 0.04, "{a} {b}");
}

#[test]
fn judge_prompt_layout_round_trips() {
    let prompt = judge_prompt(
        "Be fair.",
        "Where is\nmy order?",
        "Answer one.",
        "Two </answer> x",
    );
    assert!(prompt.starts_with("<rubric>\nBe fair.\n</rubric>\n<request>\n"));
    assert!(prompt.ends_with(
        "Which answer is better under the rubric? Reply with JSON only: \
         {\"verdict\": \"A\" | \"B\" | \"tie\", \"reason\": \"...\"}"
    ));
    let layout = judge::Layout::parse(&prompt).unwrap();
    assert_eq!(
        layout,
        judge::Layout {
            rubric: "Be fair.",
            request: "Where is\nmy order?",
            a: "Answer one.",
            b: "Two </answer> x",
        }
    );
    assert_eq!(judge::Layout::parse("Where is my order?"), None);
    assert_eq!(
        judge::Layout::parse(&prompt.replace("<answer id=\"B\">", "<answer>")),
        None
    );
    assert_eq!(judge::Layout::parse(&prompt.replace("</rubric>", "")), None);
}

/// A judge request of `api` comparing `a` and `b`.
fn judge_request(api: Api, model: &str, a: &str, b: &str, extra: Value) -> Value {
    let prompt = judge_prompt("Prefer helpful answers.", "Where is my order?", a, b);
    request(api, model, &prompt, extra)
}

/// The verdict of a judge's text answer, if it parses.
fn parse_verdict(text: &str) -> Option<Verdict> {
    let answer: Value = serde_json::from_str(text).ok()?;
    answer["reason"].as_str()?;
    match answer["verdict"].as_str()? {
        "A" => Some(Verdict::A),
        "B" => Some(Verdict::B),
        "tie" => Some(Verdict::Tie),
        _ => None,
    }
}

#[tokio::test]
async fn judge_model_answers_verdicts_over_http() {
    let harness = start(Behavior::default()).await;
    let sure = Judge {
        decisiveness: 1.0,
        ..Judge::default()
    };
    let judge = |judge| Behavior {
        style: Style::Judge,
        judge,
        ..Behavior::default()
    };
    harness.sim.set_behavior("judge", judge(sure));
    let good = answer_text(Style::Echo, "Where is my order?", &mut rand::rng());
    for api in [Api::Chat, Api::Messages, Api::Responses] {
        for (a, b, expected) in [
            (good.as_str(), REFUSAL, Verdict::A),
            (REFUSAL, good.as_str(), Verdict::B),
        ] {
            let body = judge_request(api, "judge", a, b, json!({}));
            let reply = harness.call(api, &body, &[]).await;
            assert_eq!(reply.status, StatusCode::OK);
            let (text, finish, _) = full_answer(api, &reply.json());
            assert_eq!(finish, stop_finish(api));
            assert_eq!(parse_verdict(&text), Some(expected), "{api:?}: {text}");
            assert!(text.contains("refuses"), "{text}");
            // Streaming works too.
            let body = judge_request(api, "judge", a, b, json!({"stream": true}));
            let events = harness.call(api, &body, &[]).await.events();
            let (streamed, _) = streamed_answer(api, &events);
            assert_eq!(
                parse_verdict(&streamed),
                Some(expected),
                "{api:?}: {streamed}"
            );
        }
    }
    // Tools and JSON mode do not change a verdict.
    let tools = json!({
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    });
    let body = judge_request(Api::Chat, "judge", REFUSAL, &good, tools);
    let text = full_answer(Api::Chat, &harness.call(Api::Chat, &body, &[]).await.json()).0;
    assert_eq!(parse_verdict(&text), Some(Verdict::B));

    // The position bias is configurable: all for A between equal answers.
    let biased = Judge {
        tie_rate: 0.0,
        position_bias: 0.5,
        ..Judge::default()
    };
    harness.sim.set_behavior("judge", judge(biased));
    for _ in 0..10 {
        let body = judge_request(Api::Messages, "judge", &good, &good, json!({}));
        let text = full_answer(
            Api::Messages,
            &harness.call(Api::Messages, &body, &[]).await.json(),
        )
        .0;
        assert_eq!(parse_verdict(&text), Some(Verdict::A), "{text}");
    }
    // The default judge answers all three verdicts between equal answers.
    harness.sim.set_behavior("judge", judge(Judge::default()));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..60 {
        let body = judge_request(Api::Chat, "judge", &good, &good, json!({}));
        let text = full_answer(Api::Chat, &harness.call(Api::Chat, &body, &[]).await.json()).0;
        seen.insert(parse_verdict(&text).unwrap().as_str());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // A judge model answers other prompts like Echo.
    let plain = request(Api::Chat, "judge", "Where is my order?", json!({}));
    let text = full_answer(
        Api::Chat,
        &harness.call(Api::Chat, &plain, &[]).await.json(),
    )
    .0;
    assert_eq!(text, good);
    assert_eq!(harness.sim.calls_for("judge"), 12 + 1 + 10 + 60 + 1);
    harness.shutdown().await;
}

#[tokio::test]
async fn garbled_judge_answers_no_verdict() {
    let harness = start(Behavior {
        style: Style::JudgeGarbled,
        ..Behavior::default()
    })
    .await;
    let good = answer_text(Style::Echo, "Where is my order?", &mut rand::rng());
    let mut texts = std::collections::HashSet::new();
    for _ in 0..30 {
        for api in [Api::Chat, Api::Messages] {
            let body = judge_request(api, "garbled", &good, REFUSAL, json!({}));
            let reply = harness.call(api, &body, &[]).await;
            let text = full_answer(api, &reply.json()).0;
            assert_eq!(parse_verdict(&text), None, "{text}");
            texts.insert(text);
        }
    }
    assert!(
        texts.contains("I think the first one is better."),
        "{texts:?}"
    );
    assert!(texts.len() >= 2, "{texts:?}");
    let body = judge_request(
        Api::Chat,
        "garbled",
        &good,
        REFUSAL,
        json!({"stream": true}),
    );
    let events = harness.call(Api::Chat, &body, &[]).await.events();
    assert_eq!(parse_verdict(&streamed_answer(Api::Chat, &events).0), None);
    harness.shutdown().await;
}

/// The vectors of an embeddings answer.
fn vectors(body: &Value) -> Vec<Vec<f32>> {
    as_slice(&body["data"])
        .iter()
        .enumerate()
        .map(|(index, item)| {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], index);
            as_slice(&item["embedding"])
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn embeddings_request(model: &str, input: Value, extra: Value) -> String {
    let mut body = json!({"model": model, "input": input});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body.to_string()
}

#[tokio::test]
async fn embeddings_endpoint_answers_in_openai_shape() {
    let harness = start(Behavior::default()).await;
    let mut rng = StdRng::seed_from_u64(1);
    let prompt = "Where is my order?";
    let styles = [
        Style::Echo,
        Style::Paraphrase,
        Style::Unrelated,
        Style::Pirate,
        Style::WrongFacts,
    ];
    let texts: Vec<String> = styles
        .iter()
        .map(|s| answer_text(*s, prompt, &mut rng))
        .collect();
    let body = embeddings_request("text-embedding-sim", json!(texts), json!({}));
    let reply = harness
        .send(Method::POST, "/v1/embeddings", &body, &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[CONTENT_TYPE], JSON_TYPE);
    let answer = reply.json();
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "text-embedding-sim");
    let words: u64 = texts.iter().map(|t| count_words(t)).sum();
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": words, "total_tokens": words})
    );
    let answered = vectors(&answer);
    assert_eq!(answered.len(), styles.len());
    for (vector, text) in answered.iter().zip(&texts) {
        assert_eq!(vector.len(), 64);
        assert_eq!(*vector, embed(text, 64), "the pure function's vector");
    }
    let echo = &answered[0];
    assert!(cosine(echo, &answered[1]) >= 0.9, "paraphrase");
    assert!(cosine(echo, &answered[2]) <= 0.5, "unrelated");
    assert!(
        cosine(echo, &answered[3]) > cosine(echo, &answered[2]),
        "pirate"
    );
    assert!(cosine(echo, &answered[4]) > 0.5, "wrong facts look alike");

    // One string, `dimensions`, base64.
    let body = embeddings_request("m", json!("Hello there"), json!({"dimensions": 8}));
    let answer = harness
        .send(Method::POST, "/v1/embeddings", &body, &[])
        .await
        .json();
    assert_eq!(vectors(&answer), [embed("Hello there", 8)]);
    assert_eq!(answer["usage"]["prompt_tokens"], 2);
    let body = embeddings_request(
        "m",
        json!(["Hello there"]),
        json!({"encoding_format": "base64"}),
    );
    let answer = harness
        .send(Method::POST, "/v1/embeddings", &body, &[])
        .await
        .json();
    assert_eq!(
        answer["data"][0]["embedding"],
        base64_f32(&embed("Hello there", 64)).as_str()
    );
    assert_eq!(base64_f32(&[1.0, -2.5]), "AACAPwAAIMA=");

    for bad in [
        r#"{"input": "no model"}"#.to_owned(),
        embeddings_request("m", json!([]), json!({})),
        embeddings_request("m", json!([1, 2, 3]), json!({})),
        embeddings_request("m", json!("x"), json!({"dimensions": 0})),
        embeddings_request("m", json!("x"), json!({"encoding_format": "hex"})),
        "{not json".to_owned(),
    ] {
        let reply = harness
            .send(Method::POST, "/v1/embeddings", &bad, &[])
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    }
    // Like the other endpoints, only well-formed requests count for their model.
    assert_eq!(harness.sim.calls_for("m"), 2);
    assert_eq!(harness.sim.calls_for("text-embedding-sim"), 1);
    assert_eq!(harness.sim.calls(), 9);
    let paths: Vec<String> = harness
        .sim
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert!(paths.iter().all(|p| p == "/v1/embeddings") && paths.len() == 9);
    harness.shutdown().await;
}

#[tokio::test]
async fn embeddings_get_faults_and_latency() {
    let harness = start(Behavior::default()).await;
    let body = embeddings_request("m", json!("Hi there"), json!({}));
    let send = |headers: &'static [(&'static str, &'static str)]| {
        harness.send(Method::POST, "/v1/embeddings", &body, headers)
    };
    let reply = send(&[("x-sim-fault", "503")]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    let reply = send(&[("x-sim-fault", "reset")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_err(), "the body breaks off");
    let reply = send(&[("x-sim-fault", "broken-sse")]).await;
    assert!(serde_json::from_slice::<Value>(reply.body.as_ref().unwrap()).is_err());
    let started = tokio::time::Instant::now();
    let reply = send(&[("x-sim-latency-ms", "80")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(80));
    let hang = send(&[("x-sim-fault", "hang")]);
    assert!(tokio::time::timeout(Duration::from_millis(100), hang)
        .await
        .is_err());
    harness.sim.set_behavior(
        "failing",
        Behavior {
            fault: Some(Fault::Status(429)),
            ..Behavior::default()
        },
    );
    let failing = embeddings_request("failing", json!("Hi"), json!({}));
    let reply = harness
        .send(Method::POST, "/v1/embeddings", &failing, &[])
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(harness.sim.calls_for("m"), 5);
    assert_eq!(harness.sim.calls_for("failing"), 1);
    harness.shutdown().await;
}
