//! The semantic scorer: cosine similarity of two answers' embeddings from an OpenAI-compatible
//! `POST /v1/embeddings` (OpenAI, vLLM, Ollama, llama.cpp, TEI), all texts of a sample in one
//! call, each cut to `max_input_chars`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::remote::{bounded, post_json, ScorerFailure};
use crate::config::SemanticConfig;
use crate::state::RemoteScorer;
use crate::upstream::UpstreamClient;

#[derive(Deserialize)]
struct Embeddings {
    data: Vec<Embedding>,
}

#[derive(Deserialize)]
struct Embedding {
    index: usize,
    embedding: Vec<f64>,
}

/// The similarity of `reference` to each of `subjects` (the candidate, and stable's second
/// answer for the noise floor), in [0, 1] (negative cosines count as 0).
pub async fn similarities(
    client: &UpstreamClient,
    scorer: &RemoteScorer<SemanticConfig>,
    reference: &str,
    subjects: &[&str],
    timeout: Duration,
) -> Result<Vec<f64>, ScorerFailure> {
    if !scorer.admit(1) {
        return Err(ScorerFailure::Budget);
    }
    let max = scorer.cfg.max_input_chars;
    let input: Vec<&str> = std::iter::once(reference)
        .chain(subjects.iter().copied())
        .map(|t| bounded(t, max))
        .collect();
    let input_len = input.len();
    let body = json!({ "model": scorer.cfg.model, "input": input }).to_string();
    let answer = post_json(
        client,
        &scorer.upstream,
        "/v1/embeddings",
        &[],
        body.into_bytes(),
        timeout,
    )
    .await?;
    // Parsing thousands of floats and the cosines: on the blocking pool, not the proxy's threads.
    tokio::task::spawn_blocking(move || cosines(&answer, input_len))
        .await
        .map_err(|_| ScorerFailure::Error)?
}

/// The cosine of the first embedding in `answer` with each of the others.
fn cosines(answer: &[u8], inputs: usize) -> Result<Vec<f64>, ScorerFailure> {
    let parsed: Embeddings =
        serde_json::from_slice(answer).map_err(|_| ScorerFailure::Unparseable)?;
    let mut vectors: Vec<Option<Vec<f64>>> = vec![None; inputs];
    for e in parsed.data {
        if let Some(slot) = vectors.get_mut(e.index) {
            *slot = Some(e.embedding);
        }
    }
    let vectors: Vec<Vec<f64>> = vectors
        .into_iter()
        .collect::<Option<_>>()
        .ok_or(ScorerFailure::Unparseable)?;
    let (first, rest) = vectors.split_first().ok_or(ScorerFailure::Unparseable)?;
    rest.iter()
        .map(|v| cosine(first, v).ok_or(ScorerFailure::Unparseable))
        .collect()
}

/// Cosine similarity clamped to [0, 1]; None for vectors of different lengths or zero vectors.
pub fn cosine(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    (denominator > 0.0 && denominator.is_finite()).then(|| (dot / denominator).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::{cosine, cosines, ScorerFailure};

    #[test]
    fn cosine_of_vectors() {
        assert_eq!(cosine(&[1.0, 0.0], &[2.0, 0.0]), Some(1.0));
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 3.0]), Some(0.0));
        assert_eq!(
            cosine(&[1.0, 0.0], &[-1.0, 0.0]),
            Some(0.0),
            "opposite counts as 0"
        );
        let c = cosine(&[1.0, 1.0], &[1.0, 0.0]).unwrap();
        assert!((c - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn embeddings_answers() {
        let answer = br#"{"data":[{"index":1,"embedding":[0,1]},{"index":0,"embedding":[1,0]},{"index":2,"embedding":[1,1]}]}"#;
        let c = cosines(answer, 3).unwrap();
        assert_eq!(c[0], 0.0);
        assert!((c[1] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        let missing = br#"{"data":[{"index":0,"embedding":[1,0]}]}"#;
        assert_eq!(cosines(missing, 2), Err(ScorerFailure::Unparseable));
        assert_eq!(cosines(b"<html>", 2), Err(ScorerFailure::Unparseable));
    }
}
