//! OpenAI's `/v1/embeddings` answer: one vector per input, as a JSON array of floats or (with
//! `encoding_format: "base64"`, the OpenAI SDKs' default) base64 of little-endian `f32`s, and
//! the usage. The vectors are what an embedding route's shadow compares (neighbourhood
//! agreement, `score/neighbourhood.rs`).

use std::borrow::Cow;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::assembly::{Assembly, WireUsage};

/// The vectors of an embeddings answer, in input order. Compared bit for bit, so that an
/// [`Observation`](super::Observation) stays `Eq`.
#[derive(Debug, Clone, Default)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
}

impl PartialEq for Embeddings {
    fn eq(&self, other: &Self) -> bool {
        self.vectors.len() == other.vectors.len()
            && self.vectors.iter().zip(&other.vectors).all(|(a, b)| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            })
    }
}

impl Eq for Embeddings {}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    data: Vec<Item<'a>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Item<'a> {
    index: Option<usize>,
    #[serde(borrow)]
    embedding: &'a RawValue,
}

/// Why an answer is not a readable embeddings answer.
fn unreadable(what: &str) -> serde_json::Error {
    serde::de::Error::custom(what)
}

/// One vector from its wire form: an array of numbers, or a base64 string of f32 LE bytes.
fn vector(raw: &RawValue) -> serde_json::Result<Vec<f32>> {
    if let Ok(floats) = serde_json::from_str::<Vec<f32>>(raw.get()) {
        return Ok(floats);
    }
    let text: Cow<'_, str> = serde_json::from_str(raw.get())?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| unreadable(&format!("embedding: {e}")))?;
    if bytes.len() % 4 != 0 {
        return Err(unreadable("embedding: not a whole number of f32s"));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl Assembly {
    /// Reads a whole embeddings answer: its vectors in input order, and its usage.
    pub(super) fn embeddings_body(&mut self, bytes: &[u8]) -> serde_json::Result<()> {
        let body: Body<'_> = serde_json::from_slice(bytes)?;
        if let Some(usage) = body.usage {
            self.usage = usage.into();
        }
        let mut items: Vec<(usize, Vec<f32>)> = Vec::with_capacity(body.data.len());
        for (position, item) in body.data.iter().enumerate() {
            items.push((item.index.unwrap_or(position), vector(item.embedding)?));
        }
        items.sort_by_key(|(index, _)| *index);
        // Every input once: indexes 0..n.
        if items.iter().enumerate().any(|(i, (index, _))| i != *index) {
            return Err(unreadable("data: the indexes are not 0..n"));
        }
        self.embeddings.vectors = items.into_iter().map(|(_, v)| v).collect();
        Ok(())
    }

    /// Only the usage of an embeddings answer (nobody compares it): `data` must be there, but
    /// its vectors are not decoded.
    pub(super) fn embeddings_usage(bytes: &[u8]) -> serde_json::Result<Option<WireUsage>> {
        #[derive(Deserialize)]
        struct Usage<'a> {
            #[serde(borrow)]
            #[allow(dead_code, reason = "required to be present, not read")]
            data: &'a RawValue,
            usage: Option<WireUsage>,
        }
        let body: Usage<'_> = serde_json::from_slice(bytes)?;
        Ok(body.usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> serde_json::Result<Assembly> {
        let mut a = Assembly::new(1 << 20);
        a.embeddings_body(body.as_bytes())?;
        Ok(a)
    }

    #[test]
    fn floats_and_base64_read_alike() {
        // 1.0 and -0.5 as little-endian f32: 0000803f and 000000bf.
        let b64 = base64::engine::general_purpose::STANDARD
            .encode([0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xbf]);
        let body = format!(
            r#"{{"object":"list","data":[{{"object":"embedding","index":1,"embedding":"{b64}"}},
            {{"object":"embedding","index":0,"embedding":[0.25,0.5]}}],"model":"m",
            "usage":{{"prompt_tokens":7,"total_tokens":7}}}}"#
        );
        let a = read(&body).unwrap();
        assert_eq!(a.embeddings.vectors, vec![vec![0.25, 0.5], vec![1.0, -0.5]]);
        assert_eq!(a.usage.prompt_tokens, Some(7));
    }

    #[test]
    fn broken_answers_are_unreadable() {
        for body in [
            r#"{"data":[{"index":0,"embedding":"not base64!"}]}"#,
            r#"{"data":[{"index":0,"embedding":"AAAA"},{"index":0,"embedding":[1]}]}"#,
            r#"{"data":[{"index":0,"embedding":"AAA="}]}"#,
            r#"{"object":"list"}"#,
        ] {
            assert!(read(body).is_err(), "{body}");
        }
    }
}
