//! Rewriting, both ways, as pure functions over bytes: the client's JSON body becomes the serving
//! (or mirrored) release's request, and the upstream's response gets the client's `model` alias
//! back. The request is read once at the top level: nested values are kept as raw slices and
//! copied through untouched, so a 5 MB prompt is scanned, not rebuilt.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::observe::ApiShape;
use crate::state::Release;

/// The client's JSON body: its top-level fields in order, values as raw JSON slices.
pub struct RequestBody<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RequestBody<'a> {
    /// Parses `bytes` as a JSON object (anything else is an error).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        let Fields(fields) = serde_json::from_slice(bytes)?;
        Ok(RequestBody { fields })
    }

    /// The raw value of a top-level field (the last one, if the key repeats).
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    /// A top-level string field.
    pub fn str_field(&self, key: &str) -> Option<Cow<'a, str>> {
        let raw = self.get(key)?;
        let Key(s) = serde_json::from_str(raw.get()).ok()?;
        Some(s)
    }

    pub fn model(&self) -> Option<Cow<'a, str>> {
        self.str_field("model")
    }

    /// `"stream": true`.
    pub fn stream(&self) -> bool {
        self.get("stream").is_some_and(|v| v.get() == "true")
    }

    /// A field used as a sticky sampling key: strings by value, anything else by its JSON text.
    pub fn sticky_value(&self, key: &str) -> Option<Cow<'a, str>> {
        self.str_field(key)
            .or_else(|| self.get(key).map(|raw| Cow::Borrowed(raw.get())))
    }
}

/// Builds the request body `release` should receive for `body`: real model, the release's
/// system prompt in the API's place for it, parameter overrides; `shadow` requests are also
/// kept out of the upstream's stored history (`store: false`).
pub fn rewrite_request(
    shape: ApiShape,
    body: &RequestBody<'_>,
    release: &Release,
    shadow: bool,
) -> Result<Vec<u8>, serde_json::Error> {
    let prompt_key = match shape {
        ApiShape::ChatCompletions => Some("messages"),
        ApiShape::Responses => Some("instructions"),
        ApiShape::Messages => Some("system"),
        // The legacy completions API has no system role: its prompt is left alone; the
        // embeddings API has no prompt at all.
        ApiShape::Completions | ApiShape::Embeddings => None,
    };
    let prompt = release.system_prompt.as_deref().zip(prompt_key);
    let store_off = shadow && matches!(shape, ApiShape::ChatCompletions | ApiShape::Responses);
    let overridden = |k: &str| {
        k == "model"
            || release.params.iter().any(|(p, _)| p == k)
            || (store_off && k == "store")
            || (prompt.is_some() && prompt_key == Some(k) && shape != ApiShape::ChatCompletions)
    };

    let size: usize = body
        .fields
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum();
    let mut out = Vec::with_capacity(size + 256);
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    sep(&mut out);
    write_field(&mut out, "model", &release.model)?;
    let mut has_messages = false;
    for (key, value) in &body.fields {
        if overridden(key) {
            continue;
        }
        sep(&mut out);
        if let (Some((text, "messages")), "messages") = (prompt, key.as_ref()) {
            has_messages = true;
            serde_json::to_writer(&mut out, key.as_ref())?;
            out.push(b':');
            write_messages_with_system(&mut out, value, text)?;
        } else {
            serde_json::to_writer(&mut out, key.as_ref())?;
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    if let Some((text, key)) = prompt {
        if key != "messages" {
            sep(&mut out);
            write_field(&mut out, key, text)?;
        } else if !has_messages {
            sep(&mut out);
            out.extend_from_slice(b"\"messages\":");
            write_system_message(&mut out, "system", text)?;
            out.push(b']');
        }
    }
    for (key, value) in &release.params {
        sep(&mut out);
        serde_json::to_writer(&mut out, key)?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    if store_off {
        sep(&mut out);
        out.extend_from_slice(b"\"store\":false");
    }
    out.push(b'}');
    Ok(out)
}

fn write_field(out: &mut Vec<u8>, key: &str, value: &str) -> Result<(), serde_json::Error> {
    serde_json::to_writer(&mut *out, key)?;
    out.push(b':');
    serde_json::to_writer(out, value)
}

/// Writes `[{"role": ROLE, "content": TEXT}` (the caller closes or continues the array).
fn write_system_message(
    out: &mut Vec<u8>,
    role: &str,
    text: &str,
) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"[{\"role\":");
    serde_json::to_writer(&mut *out, role)?;
    out.extend_from_slice(b",\"content\":");
    serde_json::to_writer(&mut *out, text)?;
    out.push(b'}');
    Ok(())
}

/// Chat `messages` with the release's system prompt: the first system/developer message's
/// content replaced (its role kept), or a system message inserted first.
fn write_messages_with_system(
    out: &mut Vec<u8>,
    messages: &RawValue,
    text: &str,
) -> Result<(), serde_json::Error> {
    #[derive(Deserialize)]
    struct Role<'a> {
        #[serde(borrow)]
        role: Option<Cow<'a, str>>,
    }
    let items: Vec<&RawValue> = serde_json::from_str(messages.get())?;
    let first_role = match items.first() {
        Some(m) => serde_json::from_str::<Role<'_>>(m.get())
            .ok()
            .and_then(|r| r.role),
        None => None,
    };
    let (role, skip) = match first_role.as_deref() {
        Some(r @ ("system" | "developer")) => (r, 1),
        _ => ("system", 0),
    };
    write_system_message(out, role, text)?;
    for m in items.iter().skip(skip) {
        out.push(b',');
        out.extend_from_slice(m.get().as_bytes());
    }
    out.push(b']');
    Ok(())
}

/// Top-level fields of a JSON object, in order, borrowing from the input.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

/// A string that borrows from the input unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Puts the client's `model` alias back into the upstream's response as it streams through.
///
/// SSE is handled line by line (an event's `data:` line is held only until its newline
/// arrives); a JSON body is held only until its first `"model"` value is complete. Everything
/// else passes through as the same `Bytes`, uncopied. Memory is bounded by `MAX_CARRY`.
pub struct ModelRewriter {
    /// The alias as a JSON string literal, quotes included.
    alias: Vec<u8>,
    sse: bool,
    /// JSON mode: the model has been rewritten (or given up on); pass the rest through.
    done: bool,
    carry: BytesMut,
}

/// Searches for the `"model"` key; built once per process (building one costs more than a
/// search through a typical chunk).
static MODEL_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(MODEL_KEY));

/// Longest line (SSE) or prefix (JSON) held back while looking for the `model` field.
const MAX_CARRY: usize = 1 << 20;

impl ModelRewriter {
    pub fn new(alias: &str, sse: bool) -> Self {
        let alias = serde_json::to_vec(alias).unwrap_or_else(|_| b"\"\"".to_vec());
        ModelRewriter {
            alias,
            sse,
            done: false,
            carry: BytesMut::new(),
        }
    }

    /// Takes the next chunk; returns the bytes that can go to the client now.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.done {
            return Some(chunk);
        }
        if self.sse {
            self.push_sse(chunk)
        } else {
            self.push_json(chunk)
        }
    }

    /// The body ended: whatever is still held, rewritten where possible.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.carry.is_empty() {
            return None;
        }
        let held = self.carry.split().freeze();
        Some(match rewrite_model_value(&held, &self.alias) {
            Some(v) => Bytes::from(v),
            None => held,
        })
    }

    fn push_sse(&mut self, chunk: Bytes) -> Option<Bytes> {
        let complete = if self.carry.is_empty() && chunk.last() == Some(&b'\n') {
            chunk
        } else {
            self.carry.extend_from_slice(&chunk);
            let Some(end) = memchr::memrchr(b'\n', &self.carry) else {
                if self.carry.len() > MAX_CARRY {
                    return Some(self.carry.split().freeze());
                }
                return None;
            };
            self.carry.split_to(end + 1).freeze()
        };
        Some(splice_lines(complete, &self.alias))
    }

    fn push_json(&mut self, chunk: Bytes) -> Option<Bytes> {
        let held = if self.carry.is_empty() {
            chunk
        } else {
            self.carry.extend_from_slice(&chunk);
            self.carry.split().freeze()
        };
        if let Some(new) = rewrite_model_value(&held, &self.alias) {
            self.done = true;
            return Some(Bytes::from(new));
        }
        if held.len() > MAX_CARRY {
            self.done = true;
            return Some(held);
        }
        self.carry.extend_from_slice(&held);
        None
    }
}

const MODEL_KEY: &[u8] = b"\"model\"";

/// Whole lines with, in each line that has one, the first complete `"model"` string value
/// replaced by `alias`. One pass of the `"model"` finder over the text: a line without the key
/// is never looked at again, and the text between the values replaced is copied in bulk (the
/// same `Bytes`, uncopied, when there is nothing to replace).
fn splice_lines(text: Bytes, alias: &[u8]) -> Bytes {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut from = 0;
    while let Some(pos) = MODEL_FINDER.find(&text[from..]) {
        let key = from + pos;
        let start = memchr::memrchr(b'\n', &text[from..key]).map_or(from, |i| from + i + 1);
        let end = memchr::memchr(b'\n', &text[key..]).map_or(text.len(), |i| key + i + 1);
        if let Some((value, value_end)) = find_model_value(&text[start..end]) {
            let out = out.get_or_insert_with(|| Vec::with_capacity(text.len() + 2 * alias.len()));
            out.extend_from_slice(&text[copied..start + value]);
            out.extend_from_slice(alias);
            copied = start + value_end;
        }
        from = end;
    }
    match out {
        None => text,
        Some(mut out) => {
            out.extend_from_slice(&text[copied..]);
            Bytes::from(out)
        }
    }
}

/// `text` with the first complete `"model": "<string>"` value replaced by `alias` (a JSON
/// string literal); None when there is no complete one.
pub fn rewrite_model_value(text: &[u8], alias: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() + alias.len());
    splice_model_value(&mut out, text, alias).then_some(out)
}

/// Appends `text` to `out` with its first complete `"model"` string value replaced by `alias`;
/// false (and nothing appended) when there is none.
fn splice_model_value(out: &mut Vec<u8>, text: &[u8], alias: &[u8]) -> bool {
    let Some((start, end)) = find_model_value(text) else {
        return false;
    };
    out.extend_from_slice(&text[..start]);
    out.extend_from_slice(alias);
    out.extend_from_slice(&text[end..]);
    true
}

/// Byte range of the first complete string value of a `"model"` key, quotes included.
fn find_model_value(text: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(pos) = MODEL_FINDER.find(&text[from..]) {
        let key = from + pos;
        from = key + MODEL_KEY.len();
        // `\"model\"` inside a string is escaped content, not a key.
        if key > 0 && text[key - 1] == b'\\' {
            continue;
        }
        let mut i = from;
        let skip_ws = |i: &mut usize| {
            while text.get(*i).is_some_and(|b| b.is_ascii_whitespace()) {
                *i += 1;
            }
        };
        skip_ws(&mut i);
        if text.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        skip_ws(&mut i);
        if text.get(i) != Some(&b'"') {
            continue;
        }
        let start = i;
        i += 1;
        while let Some(&b) = text.get(i) {
            match b {
                b'\\' => i += 2,
                b'"' => return Some((start, i + 1)),
                _ => i += 1,
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiFlavor;
    use crate::domain::ReleaseSpec;
    use crate::state::Upstream;
    use std::sync::Arc;

    fn release(prompt: Option<&str>, params: serde_json::Value) -> Release {
        let upstream = Arc::new(Upstream {
            name: "u".into(),
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("127.0.0.1:1"),
            path_prefix: String::new(),
            api: ApiFlavor::OpenAi,
            credential: None,
        });
        let spec = ReleaseSpec {
            label: None,
            upstream: "u".into(),
            model: "real-model".into(),
            system_prompt: prompt.map(str::to_string),
            params: params.as_object().cloned().unwrap_or_default(),
            prices: None,
            index: None,
        };
        Release::new(1, &spec, upstream)
    }

    fn rewrite(shape: ApiShape, body: &str, rel: &Release, shadow: bool) -> serde_json::Value {
        let parsed = RequestBody::parse(body.as_bytes()).unwrap();
        let out = rewrite_request(shape, &parsed, rel, shadow).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn request_rewrites() {
        use serde_json::json;
        let p = release(Some("Be brief."), json!({"temperature": 0.2}));
        let none = release(None, json!({}));
        let cases: Vec<(ApiShape, &Release, &str, bool, serde_json::Value)> = vec![
            // system message inserted, params override the client's
            (
                ApiShape::ChatCompletions,
                &p,
                r#"{"model":"bot","messages":[{"role":"user","content":"hi"}],"temperature":1}"#,
                false,
                json!({"model":"real-model","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"temperature":0.2}),
            ),
            // first developer message replaced, role kept; shadow turns store off
            (
                ApiShape::ChatCompletions,
                &p,
                r#"{"model":"bot","messages":[{"role":"developer","content":"old"},{"role":"user","content":"q"}],"store":true,"stream":true}"#,
                true,
                json!({"model":"real-model","messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":"q"}],"stream":true,"temperature":0.2,"store":false}),
            ),
            // no prompt in the release: messages untouched
            (
                ApiShape::ChatCompletions,
                &none,
                r#"{"model":"bot","messages":[{"role":"system","content":"mine"}]}"#,
                false,
                json!({"model":"real-model","messages":[{"role":"system","content":"mine"}]}),
            ),
            (
                ApiShape::Responses,
                &p,
                r#"{"model":"bot","input":"hi","instructions":"old"}"#,
                true,
                json!({"model":"real-model","input":"hi","instructions":"Be brief.","temperature":0.2,"store":false}),
            ),
            (
                ApiShape::Messages,
                &p,
                r#"{"model":"bot","max_tokens":10,"system":[{"type":"text","text":"old"}],"messages":[]}"#,
                true,
                json!({"model":"real-model","max_tokens":10,"messages":[],"system":"Be brief.","temperature":0.2}),
            ),
            (
                ApiShape::Completions,
                &p,
                r#"{"model":"bot","prompt":"once upon"}"#,
                true,
                json!({"model":"real-model","prompt":"once upon","temperature":0.2}),
            ),
            // escaped keys and nested values survive
            (
                ApiShape::ChatCompletions,
                &none,
                r#"{"model":"b","x\"y":{"a":[1,2,{"model":"n"}]}}"#,
                false,
                json!({"model":"real-model","x\"y":{"a":[1,2,{"model":"n"}]}}),
            ),
        ];
        for (shape, rel, body, shadow, want) in cases {
            assert_eq!(rewrite(shape, body, rel, shadow), want, "{body}");
        }
    }

    #[test]
    fn body_accessors() {
        let b = RequestBody::parse(br#"{"model":"a\"b","stream":true,"user":42}"#).unwrap();
        assert_eq!(b.model().as_deref(), Some("a\"b"));
        assert!(b.stream());
        assert_eq!(b.sticky_value("user").as_deref(), Some("42"));
        assert!(RequestBody::parse(b"[1]").is_err());
        assert!(RequestBody::parse(b"{\"model\":").is_err());
        assert!(RequestBody::parse(b"").is_err());
    }

    fn run_rewriter(alias: &str, sse: bool, input: &[u8], split: usize) -> Vec<u8> {
        let mut rw = ModelRewriter::new(alias, sse);
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            if let Some(b) = rw.push(Bytes::copy_from_slice(piece)) {
                out.extend_from_slice(&b);
            }
        }
        if let Some(b) = rw.finish() {
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn response_model_rewritten_at_any_split() {
        let sse = "data: {\"id\":\"c\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[]}\n\n: ping\n\ndata: {\"model\" : \"gpt-4o-2024-08-06\"}\n\ndata: [DONE]\n\n";
        let want_sse = sse.replace("\"gpt-4o-2024-08-06\"", "\"bot\"");
        let json = r#"{"id":"x","content":"say \"model\": \"no\"","model":"claude-x","usage":{}}"#;
        let want_json = json.replace("\"claude-x\"", "\"bot\"");
        for split in 1..=sse.len() {
            assert_eq!(
                run_rewriter("bot", true, sse.as_bytes(), split),
                want_sse.as_bytes()
            );
        }
        for split in 1..=json.len() {
            assert_eq!(
                run_rewriter("bot", false, json.as_bytes(), split),
                want_json.as_bytes()
            );
        }
    }

    #[test]
    fn response_without_model_passes_unchanged() {
        let cases: &[(&[u8], bool)] = &[
            (b"data: {\"choices\":[]}\n\n", true),
            (b"{\"error\":{\"message\":\"no\"}}", false),
            (b"{\"model\":null}", false),
            (b"partial line with no newline", true),
        ];
        for (input, sse) in cases {
            assert_eq!(run_rewriter("bot", *sse, input, 3), *input);
        }
    }
}
