//! Simulated embedding models with spaces of their own, for embedding-route tests: the same
//! meaning model as [`embed`](crate::embed), seen through a fixed rotation (another space that
//! keeps every neighbourhood: a benign migration), or from a truncated input (a broken model
//! whose neighbourhoods collapse). Deterministic: the same text, model and dimensions always
//! give the same vector.

use crate::meaning::embed;

/// How a simulated embedding model maps text to vectors (per model, see
/// [`SimUpstream::set_embedding_space`](crate::SimUpstream::set_embedding_space)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmbeddingSpace {
    /// [`embed`](crate::embed) itself.
    #[default]
    Base,
    /// [`embed`](crate::embed) at 64 dimensions, set into the requested dimensions (zeros
    /// added, or cut to a projection when fewer are asked for) and turned by a fixed orthogonal
    /// transform drawn from `seed` (a signed permutation of the coordinates and three
    /// Householder reflections): vectors that cannot be compared with the base model's (their
    /// cosine with the base vector of the same text is near 0), yet at 64 dimensions or more
    /// every pairwise cosine, and so every neighbourhood, is the base model's at 64.
    Rotated {
        /// Picks the transform.
        seed: u64,
    },
    /// [`embed`](crate::embed) of the input's first `chars` characters only, as a model with a
    /// broken tokenizer limit would: inputs that begin alike collapse onto one vector.
    Truncated {
        /// Characters kept.
        chars: usize,
    },
}

/// The vector of `text` at `dims` dimensions in `space`.
pub fn embed_in(space: EmbeddingSpace, text: &str, dims: usize) -> Vec<f32> {
    match space {
        EmbeddingSpace::Base => embed(text, dims),
        EmbeddingSpace::Rotated { seed } => {
            let mut base = embed(text, ROTATED_BASE_DIMS);
            base.resize(dims.max(ROTATED_BASE_DIMS), 0.0);
            let mut turned = rotate(&base, seed);
            turned.truncate(dims);
            turned
        }
        EmbeddingSpace::Truncated { chars } => {
            let cut: String = text.chars().take(chars).collect();
            embed(&cut, dims)
        }
    }
}

/// The dimensions a [`EmbeddingSpace::Rotated`] model embeds at before its transform.
const ROTATED_BASE_DIMS: usize = 64;

/// A deterministic stream of numbers in [-1, 1) from `state`.
fn next(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    #[allow(clippy::cast_precision_loss)] // 53 bits are exact in f64
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

/// `v` through the orthogonal transform of `seed`: lengths and angles are kept exactly (up to
/// rounding), so pairwise cosines are too.
fn rotate(v: &[f32], seed: u64) -> Vec<f32> {
    let n = v.len();
    let mut state = seed ^ 0x726f_7461_7465;
    // A signed permutation: Fisher-Yates with the seeded stream.
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let j = (((next(&mut state) + 1.0) / 2.0 * (i + 1) as f64) as usize).min(i);
        order.swap(i, j);
    }
    let mut out: Vec<f64> = order
        .iter()
        .map(|&from| {
            let sign = if next(&mut state) < 0.0 { -1.0 } else { 1.0 };
            sign * f64::from(v[from])
        })
        .collect();
    // Three Householder reflections x -> x - 2 (u.x) u with unit u: they mix every coordinate.
    for _ in 0..3 {
        let u: Vec<f64> = (0..n).map(|_| next(&mut state)).collect();
        let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let dot: f64 = u.iter().zip(&out).map(|(a, b)| a * b).sum::<f64>() / norm;
        for (x, ui) in out.iter_mut().zip(&u) {
            *x -= 2.0 * dot * ui / norm;
        }
    }
    #[allow(clippy::cast_possible_truncation)] // f32 is the wire precision
    out.into_iter().map(|x| x as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cosine;

    const TEXTS: [&str; 4] = [
        "How do I reset my password?",
        "I forgot my password and cannot log in",
        "Where is my parcel? It has not arrived",
        "Can I get a refund for a damaged item?",
    ];

    #[test]
    fn a_rotation_keeps_every_pairwise_cosine_in_another_space() {
        let space = EmbeddingSpace::Rotated { seed: 7 };
        let base: Vec<Vec<f32>> = TEXTS.iter().map(|t| embed(t, 64)).collect();
        let rotated: Vec<Vec<f32>> = TEXTS.iter().map(|t| embed_in(space, t, 64)).collect();
        for i in 0..TEXTS.len() {
            assert!(
                cosine(&base[i], &rotated[i]).abs() < 0.5,
                "same text, other space"
            );
            for j in 0..TEXTS.len() {
                let (a, b) = (cosine(&base[i], &base[j]), cosine(&rotated[i], &rotated[j]));
                assert!((a - b).abs() < 1e-4, "{i},{j}: {a} vs {b}");
            }
        }
        assert_eq!(rotated[0], embed_in(space, TEXTS[0], 64), "deterministic");
        // At more dimensions: another length of vector, the same neighbourhoods.
        let wide: Vec<Vec<f32>> = TEXTS.iter().map(|t| embed_in(space, t, 96)).collect();
        assert_eq!(wide[0].len(), 96);
        for i in 0..TEXTS.len() {
            for j in 0..TEXTS.len() {
                let (a, b) = (cosine(&base[i], &base[j]), cosine(&wide[i], &wide[j]));
                assert!((a - b).abs() < 1e-4, "{i},{j}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn truncation_collapses_inputs_that_begin_alike() {
        let space = EmbeddingSpace::Truncated { chars: 7 };
        let a = embed_in(space, "query: reset my password", 32);
        let b = embed_in(space, "query: where is my parcel", 32);
        assert_eq!(a, b);
    }
}
