//! Benchmarks of the scorers on pairs of English-like outputs of 1, 4 and 16 KB: a reference and
//! a benignly varied copy (about one word in ten replaced, one sentence in nine dropped).
//!
//! Each iteration takes the next of several different pairs: on one pair repeated, the CPU
//! learns the input's branches and the figures come out better than on live traffic.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use understudy::hot_paths::{
    finish, length, lexical, refusal, score, structure, FinishReason, Observation, Weights, Windows,
};

const WORDS: [&str; 48] = [
    "the", "a", "of", "to", "and", "in", "is", "it", "you", "that", "for", "on", "with", "your",
    "can", "will", "we", "this", "order", "account", "password", "email", "support", "team",
    "refund", "payment", "invoice", "device", "settings", "link", "days", "message", "click",
    "open", "send", "check", "help", "new", "page", "number", "plan", "month", "card", "request",
    "delivery", "address", "security", "customer",
];

/// Distinct pairs per size that the benchmarks cycle through.
const PAIRS: u64 = 8;

/// A reference output of about `bytes` bytes and a benignly varied copy of it.
fn pair(bytes: usize, seed: u64) -> (Observation, Observation) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut reference, mut varied) = (String::new(), String::new());
    let mut sentence = 0;
    while reference.len() < bytes {
        let words = rng.random_range(8..20);
        let drop = sentence % 9 == 4;
        for i in 0..words {
            let word = WORDS.choose(&mut rng).copied().unwrap_or("the");
            let other = if rng.random_bool(0.1) {
                WORDS.choose(&mut rng).copied().unwrap_or("a")
            } else {
                word
            };
            let end = if i + 1 == words { ". " } else { " " };
            reference.push_str(word);
            reference.push_str(end);
            if !drop {
                varied.push_str(other);
                varied.push_str(end);
            }
        }
        sentence += 1;
    }
    (observation(reference), observation(varied))
}

fn observation(text: String) -> Observation {
    Observation {
        status: 200,
        text,
        finish_reason: Some(FinishReason::Stop),
        ..Observation::default()
    }
}

fn scorers(c: &mut Criterion) {
    let weights = Weights::default();
    for kb in [1, 4, 16] {
        let pairs: Vec<_> = (0..PAIRS).map(|seed| pair(kb * 1024, seed)).collect();
        let mut group = c.benchmark_group(format!("score_{kb}kb"));
        group.throughput(Throughput::Bytes(2 * kb as u64 * 1024));
        let mut bench = |name: &str, f: &dyn Fn(&Observation, &Observation)| {
            let mut next = pairs.iter().cycle();
            group.bench_function(name, |b| {
                b.iter(|| {
                    if let Some((reference, subject)) = next.next() {
                        f(black_box(reference), black_box(subject));
                    }
                })
            });
        };
        bench("lexical", &|r, s| {
            black_box(lexical(&r.text, &s.text));
        });
        bench("structure", &|r, s| {
            black_box(structure(r, s));
        });
        bench("length", &|r, s| {
            black_box(length(&r.text, &s.text));
        });
        bench("refusal", &|r, s| {
            black_box(refusal(r, s));
        });
        bench("finish", &|r, s| {
            black_box(finish(r, s));
        });
        bench("score", &|r, s| {
            black_box(score(r, s, &weights));
        });
        group.finish();
    }
}

/// An embedding mirror's scoring: one request's input added to a full window of 64 inputs
/// (pairs of 1536-dimension vectors, as text-embedding-3-small gives) and the agreement of the
/// window measured (2016 pairwise cosines per model, their ranks, the 5 nearest neighbours).
fn neighbourhood(c: &mut Criterion) {
    const DIMS: usize = 1536;
    let mut rng = StdRng::seed_from_u64(16);
    let mut vector = || -> Vec<f32> { (0..DIMS).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let inputs: Vec<(Vec<f32>, Vec<f32>)> = (0..128).map(|_| (vector(), vector())).collect();
    let mut windows = Windows::default();
    for (a, b) in &inputs[..64] {
        windows
            .of(1, 2)
            .candidate_pairs
            .push(std::slice::from_ref(a), std::slice::from_ref(b));
    }
    let mut next = inputs.iter().cycle();
    c.bench_function("neighbourhood_64x1536", |b| {
        b.iter(|| {
            if let Some((a, v)) = next.next() {
                let w = windows.of(1, 2);
                w.candidate_pairs
                    .push(std::slice::from_ref(a), std::slice::from_ref(v));
                black_box(w.candidate_pairs.agreement());
            }
        })
    });
}

criterion_group!(benches, scorers, neighbourhood);
criterion_main!(benches);
