//! Scoring: pure functions that compare a candidate's output with the stable release's output
//! for the same request (or stable with itself, for the noise floor) and give numbers in [0, 1],
//! 1 meaning "as good as / the same as stable".
//!
//! Each scorer is a small `pub fn`; [`score`] runs them all, combines them with the route's
//! [`Weights`] and detects the hard failures that force the combined score to 0.
//! Text is compared on word tokens hashed to `u64` (lower-cased, punctuation stripped), so no
//! `String` is built per word and long outputs are compared in near-linear time.

use crate::observe::{FinishReason, Observation, ToolCall};
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;

/// Weights of the combined score (config `weights = { lexical, structure, length, refusal }`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Weight of [`lexical`].
    pub lexical: f64,
    /// Weight of [`structure`].
    pub structure: f64,
    /// Weight of [`length`].
    pub length: f64,
    /// Weight of [`refusal`].
    pub refusal: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            lexical: 0.4,
            structure: 0.3,
            length: 0.1,
            refusal: 0.2,
        }
    }
}

impl Weights {
    /// Weighted mean of the four weighted scorers, over those that apply to the pair (None: not
    /// applicable). A scorer with nothing to judge (structure of two plain texts, refusal when
    /// neither side refuses) would only add a constant 1 and hide how different the texts are.
    /// Negative or non-finite weights count as 0; if nothing is left the default weights are
    /// used, so the result is never NaN.
    fn mean(&self, lexical: f64, structure: Option<f64>, length: f64, refusal: Option<f64>) -> f64 {
        let usable = |w: f64| if w.is_finite() && w > 0.0 { w } else { 0.0 };
        let parts = [
            (usable(self.lexical), Some(lexical)),
            (usable(self.structure), structure),
            (usable(self.length), Some(length)),
            (usable(self.refusal), refusal),
        ];
        let applicable = parts.iter().filter_map(|(w, v)| Some((*w, (*v)?)));
        let total: f64 = applicable.clone().map(|(w, _)| w).sum();
        if total > 0.0 && total.is_finite() {
            applicable.map(|(w, v)| w * v).sum::<f64>() / total
        } else if *self != Self::default() {
            Self::default().mean(lexical, structure, length, refusal)
        } else {
            lexical
        }
    }
}

/// Names of the individual scorers, used as the `scorer` label of understudy_shadow_score.
pub const SCORERS: [&str; 6] = [
    "lexical",
    "structure",
    "length",
    "refusal",
    "finish",
    "combined",
];

/// Why a sample scored 0 regardless of the individual scorers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HardFailure {
    /// The subject failed: HTTP status, timeout, transport error or malformed response.
    Error,
    /// The subject produced no text and no tool call where the reference did.
    Empty,
    /// The reference's text was valid JSON and the subject's is not.
    BrokenJson,
    /// A subject tool call has arguments that are not valid JSON where the reference's were valid.
    BrokenToolCall,
    /// The subject refuses where the reference answered.
    Refusal,
}

impl HardFailure {
    /// Stable snake_case name, for logs, the store and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Empty => "empty",
            Self::BrokenJson => "broken_json",
            Self::BrokenToolCall => "broken_tool_call",
            Self::Refusal => "refusal",
        }
    }
}

/// The scores of one sample, each in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// [`lexical`] of the outputs (text, then tool call names and arguments).
    pub lexical: f64,
    /// See [`structure`].
    pub structure: f64,
    /// [`length`] of the outputs (text, then tool call names and arguments).
    pub length: f64,
    /// See [`refusal`].
    pub refusal: f64,
    /// See [`finish`].
    pub finish: f64,
    /// Weighted mean of lexical, structure, length and refusal, times finish; 0 on a hard failure.
    pub combined: f64,
    /// Set when a hard failure forced `combined` to 0.
    pub hard_failure: Option<HardFailure>,
}

impl Score {
    /// (name, value) for each of [`SCORERS`], in order.
    pub fn by_scorer(&self) -> [(&'static str, f64); 6] {
        let [lexical, structure, length, refusal, finish, combined] = SCORERS;
        [
            (lexical, self.lexical),
            (structure, self.structure),
            (length, self.length),
            (refusal, self.refusal),
            (finish, self.finish),
            (combined, self.combined),
        ]
    }
}

/// Compare `subject` (the candidate, or stable's second answer for the noise floor) with
/// `reference` (stable).
/// None when the reference itself failed (status/timeout/transport/malformed) or is empty:
/// there is nothing to compare against, so no sample.
///
/// Hard failures are checked in this order, the first one found is reported: the subject
/// failed ([`HardFailure::Error`]), is empty, refuses, breaks the reference's JSON, breaks a
/// tool call's arguments (not judged when the subject's capture was `truncated`). The
/// individual scores are filled in all the same.
pub fn score(reference: &Observation, subject: &Observation, weights: &Weights) -> Option<Score> {
    if reference.failure.is_some() || reference.is_empty() {
        return None;
    }
    let reference_shape = Shape::of(reference);
    let subject_shape = Shape::of(subject);
    let (reference_content, subject_content) = (content(reference), content(subject));
    let reference_words = word_hashes(&reference_content);
    let subject_words = word_hashes(&subject_content);
    let length = length_of(reference_words.len(), subject_words.len());
    let lexical = lexical_words(
        &reference_content,
        &subject_content,
        reference_words,
        subject_words,
    );
    let structure = structure_of(&reference_shape, &subject_shape);
    let refusal = refusal(reference, subject);
    let finish = finish(reference, subject);

    let hard_failure = if subject.failure.is_some() {
        Some(HardFailure::Error)
    } else if subject.is_empty() {
        Some(HardFailure::Empty)
    } else if refusal == 0.0 {
        Some(HardFailure::Refusal)
    } else if subject.truncated {
        // Cut by the observer's bound, not by the model: its JSON cannot be judged.
        None
    } else if reference_shape.json.is_some() && subject_shape.json.is_none() {
        Some(HardFailure::BrokenJson)
    } else if reference_shape.tool_args_valid() && !subject_shape.tool_args_valid() {
        Some(HardFailure::BrokenToolCall)
    } else {
        None
    };
    let combined = match hard_failure {
        Some(_) => 0.0,
        None => {
            let has_structure = |s: &Shape<'_>| s.json.is_some() || !s.tools.is_empty();
            let structure = (has_structure(&reference_shape) || has_structure(&subject_shape))
                .then_some(structure);
            let refusal = (refuses(reference) || refuses(subject)).then_some(refusal);
            (weights.mean(lexical, structure, length, refusal) * finish).clamp(0.0, 1.0)
        }
    };
    Some(Score {
        lexical,
        structure,
        length,
        refusal,
        finish,
        combined,
        hard_failure,
    })
}

/// What [`lexical`] and [`length`] compare: the text, followed by each tool call's name and
/// arguments, so that a call to the right tool with other argument values does not read as equal.
fn content(observation: &Observation) -> Cow<'_, str> {
    if observation.tool_calls.is_empty() {
        return Cow::Borrowed(&observation.text);
    }
    let mut content = observation.text.clone();
    for call in &observation.tool_calls {
        for part in [&call.name, &call.arguments] {
            content.push('\n');
            content.push_str(part);
        }
    }
    Cow::Owned(content)
}

/// At or below this many words on both sides, [`lexical`] uses a word-level edit distance
/// (quadratic, but at most `SHORT_WORDS²` steps); above it, linear n-gram overlap.
const SHORT_WORDS: usize = 48;

/// Similarity of two texts in [0, 1], on lower-cased words with punctuation stripped.
///
/// Short texts: 1 − word-level Levenshtein distance / longer word count. Long texts:
/// Sørensen–Dice overlap of the word multisets, (unigrams + 2 × bigrams) / 3, so that two texts
/// drawn from the same vocabulary in a different order still score low. Texts without any word
/// (emoji, punctuation) are compared on their non-blank characters instead.
pub fn lexical(a: &str, b: &str) -> f64 {
    lexical_words(a, b, word_hashes(a), word_hashes(b))
}

/// [`lexical`] of two texts whose words are already hashed by [`word_hashes`].
fn lexical_words(a: &str, b: &str, words_a: Vec<u64>, words_b: Vec<u64>) -> f64 {
    if a == b {
        1.0
    } else if words_a.is_empty() && words_b.is_empty() {
        token_similarity(symbol_hashes(a), symbol_hashes(b))
    } else {
        token_similarity(words_a, words_b)
    }
}

fn token_similarity(a: Vec<u64>, b: Vec<u64>) -> f64 {
    let longest = a.len().max(b.len());
    if longest == 0 {
        1.0
    } else if longest <= SHORT_WORDS {
        1.0 - strsim::generic_levenshtein(&a, &b) as f64 / longest as f64
    } else {
        (dice(&a, &b) + 2.0 * dice(&bigrams(&a), &bigrams(&b))) / 3.0
    }
}

/// Added to both word counts in [`length`], so that 1 word against 2 is not read as half.
const LENGTH_SMOOTHING: f64 = 5.0;

/// Ratio of the shorter to the longer text, in words, smoothed:
/// `(min + 5) / (max + 5)`. Two empty texts score 1.
pub fn length(a: &str, b: &str) -> f64 {
    length_of(word_hashes(a).len(), word_hashes(b).len())
}

fn length_of(words_a: usize, words_b: usize) -> f64 {
    let (x, y) = (words_a as f64, words_b as f64);
    (x.min(y) + LENGTH_SMOOTHING) / (x.max(y) + LENGTH_SMOOTHING)
}

/// Whether the outputs have the same shape, in [0, 1]:
/// - text: both JSON (object or array, bare or in a ```` ```json ```` block) → Jaccard similarity
///   of their key paths with value types; only one JSON → 0;
/// - tool calls (paired by name): same count and names, each pair's argument key paths
///   (with value types) compared by Jaccard; a missing or differently named call → 0;
/// - the mean of the parts that apply; 1 when neither side has JSON or tool calls.
pub fn structure(reference: &Observation, subject: &Observation) -> f64 {
    structure_of(&Shape::of(reference), &Shape::of(subject))
}

/// 0 if the subject refuses (see [`is_refusal`], or finished by content filter) and the
/// reference did not, else 1.
pub fn refusal(reference: &Observation, subject: &Observation) -> f64 {
    if refuses(subject) && !refuses(reference) {
        0.0
    } else {
        1.0
    }
}

/// How many characters from the start of a text [`is_refusal`] looks at.
const REFUSAL_PREFIX_CHARS: usize = 200;

/// Lower-case refusal phrases, with straight apostrophes.
const REFUSAL_PHRASES: [&str; 14] = [
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i can't",
    "i am sorry, but i cannot",
    "i'm sorry, i can't",
    "i'm sorry, i cannot",
    "i cannot help with",
    "i can't help with",
    "i cannot assist",
    "i can't assist",
    "i'm unable to",
    "i am unable to",
    "i won't be able to help",
    "as an ai",
];

/// Whether the first ~200 characters of `text` contain a typical refusal ("I'm sorry, but I
/// can't", "I cannot help with", "I can't assist", "I'm unable to", "As an AI", ...),
/// case-insensitively and with curly apostrophes read as straight ones.
pub fn is_refusal(text: &str) -> bool {
    let mut head = String::with_capacity(REFUSAL_PREFIX_CHARS + 16);
    for c in text.trim_start().chars().take(REFUSAL_PREFIX_CHARS) {
        match c {
            '\u{2018}' | '\u{2019}' | '\u{02BC}' => head.push('\''),
            c if c.is_ascii() => head.push(c.to_ascii_lowercase()),
            c => head.extend(c.to_lowercase()),
        }
    }
    REFUSAL_PHRASES.iter().any(|phrase| head.contains(phrase))
}

/// Whether the finish reasons agree: 1 if of the same kind (any two `Other` agree) or if either
/// is unknown; 0 when the subject was cut (`Length`) where the reference finished
/// (`Stop`/`ToolCalls`); 0.5 for other mismatches.
pub fn finish(reference: &Observation, subject: &Observation) -> f64 {
    match (&reference.finish_reason, &subject.finish_reason) {
        (None, _) | (_, None) => 1.0,
        (Some(r), Some(s)) if std::mem::discriminant(r) == std::mem::discriminant(s) => 1.0,
        (Some(FinishReason::Stop | FinishReason::ToolCalls), Some(FinishReason::Length)) => 0.0,
        _ => 0.5,
    }
}

fn refuses(observation: &Observation) -> bool {
    observation.finish_reason == Some(FinishReason::ContentFilter) || is_refusal(&observation.text)
}

/// What [`structure`] and the JSON hard failures look at, computed once per observation.
struct Shape<'a> {
    /// Sorted, deduplicated key-path hashes of the text's JSON; None when the text is not JSON.
    json: Option<Vec<u64>>,
    /// Tool calls sorted by name.
    tools: Vec<ToolShape<'a>>,
}

/// A tool call's name and argument key-path hashes (None: arguments are not valid JSON).
type ToolShape<'a> = (&'a str, Option<Vec<u64>>);

impl<'a> Shape<'a> {
    fn of(observation: &'a Observation) -> Self {
        let mut tools: Vec<_> = observation.tool_calls.iter().map(tool_shape).collect();
        tools.sort_by_key(|(name, _)| *name);
        Self {
            json: parse_json_text(&observation.text).map(|v| key_paths(&v)),
            tools,
        }
    }

    /// At least one tool call, and every one's arguments are valid JSON.
    fn tool_args_valid(&self) -> bool {
        !self.tools.is_empty() && self.tools.iter().all(|(_, args)| args.is_some())
    }
}

fn tool_shape(call: &ToolCall) -> ToolShape<'_> {
    let arguments = call.arguments.trim();
    // Some APIs send "" for a call without arguments: that is an empty object, not broken JSON.
    let paths = if arguments.is_empty() {
        Some(key_paths(&Value::Object(serde_json::Map::new())))
    } else {
        serde_json::from_str::<Value>(arguments)
            .ok()
            .map(|v| key_paths(&v))
    };
    (call.name.as_str(), paths)
}

fn structure_of(reference: &Shape<'_>, subject: &Shape<'_>) -> f64 {
    let mut parts = 0.0;
    let mut sum = 0.0;
    if reference.json.is_some() || subject.json.is_some() {
        parts += 1.0;
        if let (Some(a), Some(b)) = (&reference.json, &subject.json) {
            sum += jaccard(a, b);
        }
    }
    let calls = reference.tools.len().max(subject.tools.len());
    if calls > 0 {
        parts += 1.0;
        let matched: f64 = reference
            .tools
            .iter()
            .zip(&subject.tools)
            .map(|(a, b)| call_similarity(a, b))
            .sum();
        sum += matched / calls as f64;
    }
    if parts == 0.0 {
        1.0
    } else {
        sum / parts
    }
}

/// Same name: Jaccard similarity of the argument key paths (1 if both are broken). Else 0.
fn call_similarity((name_a, args_a): &ToolShape<'_>, (name_b, args_b): &ToolShape<'_>) -> f64 {
    match (args_a, args_b) {
        _ if name_a != name_b => 0.0,
        (Some(a), Some(b)) => jaccard(a, b),
        (None, None) => 1.0,
        _ => 0.0,
    }
}

/// The JSON object or array in `text`: the whole trimmed text, or else the content of its
/// first ```` ```json ```` fenced block. Scalars ("42", "true") do not count as JSON output.
fn parse_json_text(text: &str) -> Option<Value> {
    const FENCE: &str = "```json";
    let text = text.trim();
    let candidate = if text.starts_with(['{', '[']) {
        text
    } else if !text.contains(FENCE) {
        // The common case, and `contains` is much faster than `find` on long prose.
        return None;
    } else {
        let body = text.get(text.find(FENCE)? + FENCE.len()..)?;
        body.get(..body.find("```")?)?.trim()
    };
    match serde_json::from_str::<Value>(candidate) {
        Ok(value @ (Value::Object(_) | Value::Array(_))) => Some(value),
        _ => None,
    }
}

/// Sorted, deduplicated hashes of every key path in `value` with the type of its value.
/// Array elements share one path segment, so arrays of the same records collapse.
fn key_paths(value: &Value) -> Vec<u64> {
    fn walk(value: &Value, path: u64, out: &mut Vec<u64>) {
        let kind = match value {
            Value::Null => 1,
            Value::Bool(_) => 2,
            Value::Number(_) => 3,
            Value::String(_) => 4,
            Value::Array(_) => 5,
            Value::Object(_) => 6,
        };
        out.push(mix(path, kind));
        match value {
            Value::Array(items) => {
                let element = mix(path, u64::from(b'['));
                items.iter().for_each(|item| walk(item, element, out));
            }
            Value::Object(map) => {
                for (key, item) in map {
                    let child = key.bytes().fold(mix(path, u64::from(b'.')), |h, byte| {
                        mix(h, u64::from(byte))
                    });
                    walk(item, child, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, 0, &mut out);
    out.sort_unstable();
    out.dedup();
    out
}

/// FxHash-style step: cheap, good enough to tell words and key paths apart.
fn mix(hash: u64, value: u64) -> u64 {
    (hash.rotate_left(5) ^ value).wrapping_mul(0x517c_c1b7_2722_0a95)
}

/// Hashes of the words of `text`, in order. Words are runs of letters and digits, lower-cased;
/// each CJK-range character (U+2E80 and up: scripts written without spaces) is a word of its
/// own; everything else separates words.
fn word_hashes(text: &str) -> Vec<u64> {
    // A word takes at least one byte and is followed by a separator or the end of the text.
    let mut out = vec![0; text.len() / 2 + 1];
    let mut words = WordReader {
        slots: &mut out,
        len: 0,
        word: 0,
        in_word: false,
    };
    let mut rest = text;
    loop {
        let ascii = words.ascii(rest.as_bytes());
        let mut chars = rest.get(ascii..).unwrap_or_default().chars();
        let Some(c) = chars.next() else { break };
        words.char(c);
        rest = chars.as_str();
    }
    words.end_word();
    let len = words.len;
    out.truncate(len);
    out.iter_mut().for_each(|h| *h = mix(*h, 0));
    out
}

/// State of [`word_hashes`]: the words read so far are packed in `slots[..len]`; a last pass
/// mixes them into well-spread hashes.
struct WordReader<'a> {
    slots: &'a mut [u64],
    len: usize,
    /// The word being read, packed.
    word: u64,
    in_word: bool,
}

impl WordReader<'_> {
    /// Reads the ASCII bytes at the start of `bytes`, returns how many.
    ///
    /// Without branching on words: this runs over every sampled output, and where a word ends
    /// is unpredictable, so a branch per word cost more than all the rest. Each byte folds into
    /// `word` (7 bits per character: words of up to 9 characters are packed exactly, longer
    /// ones wrap around), which is written at `slots[len]` every time while `len` only moves
    /// on where a word has just ended.
    fn ascii(&mut self, bytes: &[u8]) -> usize {
        let (mut len, mut word, mut in_word) = (self.len, self.word, self.in_word);
        let mut read = bytes.len();
        for (i, &byte) in bytes.iter().enumerate() {
            let Some(&lower) = ASCII_WORD_BYTES.get(usize::from(byte)) else {
                read = i;
                break;
            };
            let is_word_byte = lower != 0;
            if let Some(slot) = self.slots.get_mut(len) {
                *slot = word;
            }
            len += usize::from(in_word & !is_word_byte);
            word =
                (word.rotate_left(7) ^ u64::from(lower)) & u64::from(is_word_byte).wrapping_neg();
            in_word = is_word_byte;
        }
        (self.len, self.word, self.in_word) = (len, word, in_word);
        read
    }

    /// Reads one non-ASCII character.
    fn char(&mut self, c: char) {
        if !c.is_alphanumeric() {
            self.end_word();
        } else if c >= '\u{2E80}' {
            self.end_word();
            // The top bit keeps it apart from short ASCII words, which use 63 bits at most.
            self.put(u64::from(c) | 1 << 63);
        } else {
            self.word = c
                .to_lowercase()
                .fold(self.word, |h, l| mix(h, u64::from(l)));
            self.in_word = true;
        }
    }

    fn end_word(&mut self) {
        if self.in_word {
            self.put(self.word);
        }
        (self.word, self.in_word) = (0, false);
    }

    fn put(&mut self, packed: u64) {
        if let Some(slot) = self.slots.get_mut(self.len) {
            *slot = packed;
            self.len += 1;
        }
    }
}

/// For each ASCII byte: its lower-case form if it is a letter or digit, else 0.
const ASCII_WORD_BYTES: [u8; 128] = {
    let mut table = [0; 128];
    let mut byte: u8 = 0;
    while byte < 128 {
        if byte.is_ascii_alphanumeric() {
            table[byte as usize] = byte.to_ascii_lowercase();
        }
        byte += 1;
    }
    table
};

fn symbol_hashes(text: &str) -> Vec<u64> {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| mix(u64::from(c), 0))
        .collect()
}

fn bigrams(words: &[u64]) -> Vec<u64> {
    words
        .iter()
        .zip(words.iter().skip(1))
        .map(|(&a, &b)| mix(a, b))
        .collect()
}

/// Sørensen–Dice coefficient of two multisets of hashes. Both empty → 1.
/// Counts `a` in a hash table and takes `b` out of it: linear, where sorting was the bottleneck.
fn dice(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let mut counts = Counts::with_capacity(a.len());
    a.iter().for_each(|&h| counts.insert(h));
    let shared = b.iter().filter(|&&h| counts.remove(h)).count();
    2.0 * shared as f64 / (a.len() + b.len()) as f64
}

/// A multiset of hashes: open addressing with linear probing, at most half full. The slot is
/// picked by the hash's high bits (the well-mixed ones); key 0 marks an empty slot, so keys
/// are stored with their lowest bit set.
struct Counts {
    keys: Vec<u64>,
    counts: Vec<u32>,
    shift: u32,
}

impl Counts {
    fn with_capacity(items: usize) -> Self {
        let slots = (2 * items).next_power_of_two().max(16);
        Self {
            keys: vec![0; slots],
            counts: vec![0; slots],
            shift: 64 - slots.trailing_zeros(),
        }
    }

    /// The slot holding `key`, or the empty slot where it belongs.
    fn slot(&self, key: u64) -> usize {
        let mask = self.keys.len() - 1;
        let mut i = (key >> self.shift) as usize;
        while let Some(&k) = self.keys.get(i) {
            if k == key || k == 0 {
                break;
            }
            i = (i + 1) & mask;
        }
        i
    }

    fn insert(&mut self, hash: u64) {
        let key = hash | 1;
        let i = self.slot(key);
        if let (Some(k), Some(count)) = (self.keys.get_mut(i), self.counts.get_mut(i)) {
            *k = key;
            *count += 1;
        }
    }

    /// Takes one `hash` out; false if there was none left.
    fn remove(&mut self, hash: u64) -> bool {
        let i = self.slot(hash | 1);
        match self.counts.get_mut(i) {
            Some(count @ 1..) => {
                *count -= 1;
                true
            }
            _ => false,
        }
    }
}

/// Jaccard index of two sorted, deduplicated sets. Both empty → 1.
fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let shared = common(a, b);
    let union = a.len() + b.len() - shared;
    if union == 0 {
        1.0
    } else {
        shared as f64 / union as f64
    }
}

/// Size of the intersection of two sorted multisets (each value counted min(count a, count b) times).
fn common(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut shared) = (0, 0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        match x.cmp(y) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Failure;
    use rand::rngs::StdRng;
    use rand::seq::IndexedRandom;
    use rand::{Rng, SeedableRng};
    use std::ops::RangeInclusive;

    const PASSWORD: &str = "To reset your password, open the Settings page and choose Security. \
        Click the button labelled Reset password and enter the email address linked to your \
        account. We will send you a message with a secure link within a few minutes. The link \
        stays valid for twenty four hours, so use it soon. If the message does not arrive, check \
        your spam folder and make sure the address is spelled correctly. After you choose a new \
        password, every device that was signed in will be signed out, and you will need to sign \
        in again with the new password. If you still cannot get in, contact our support team and \
        include your account number so we can help you faster.";

    /// PASSWORD with 12 of its 119 words swapped for synonyms.
    const PASSWORD_SYNONYMS: &str = "To reset your password, open the Settings screen and select \
        Security. Press the button labelled Reset password and type the email address linked to \
        your account. We will send you a message with a secure link within a few minutes. The \
        link remains valid for twenty four hours, so use it quickly. If the email does not \
        arrive, check your junk folder and make sure the address is spelled correctly. After you \
        pick a new password, every device that was logged in will be signed out, and you will \
        need to sign in again with the new password. If you still cannot get in, reach our \
        support team and include your account number so we can assist you faster.";

    /// Same domain (account support), unrelated content.
    const BILLING: &str = "Billing questions are handled by the finance department rather than \
        technical support. Invoices are issued on the first day of each month and can be \
        downloaded as PDF files from the Billing tab. Payments made by card are processed \
        immediately, while bank transfers may take up to three business days to appear. Refunds \
        for annual plans are prorated based on the unused months remaining in the term. Should \
        you need a copy of an older invoice, our records go back seven years and the finance \
        team can resend any of them on request. Tax identification numbers can be added to \
        future invoices at any time, and they will then appear on every invoice we send you.";

    const VOCABULARY: [&str; 60] = [
        "the", "a", "of", "to", "and", "in", "is", "it", "you", "that", "for", "on", "with", "as",
        "your", "can", "be", "this", "we", "will", "order", "account", "password", "email",
        "support", "team", "refund", "payment", "invoice", "device", "settings", "link", "days",
        "message", "click", "open", "send", "check", "help", "new", "page", "number", "time",
        "plan", "month", "card", "bank", "request", "return", "delivery", "address", "question",
        "answer", "issue", "update", "security", "service", "product", "price", "customer",
    ];

    /// Deterministic English-like text of about `words` words.
    fn english(rng: &mut StdRng, words: usize) -> String {
        let mut text = String::new();
        for i in 0..words {
            if let Some(word) = VOCABULARY.choose(rng) {
                text.push_str(word);
            }
            text.push_str(if i % 12 == 11 { ". " } else { " " });
        }
        text
    }

    fn obs(text: &str) -> Observation {
        Observation {
            status: 200,
            text: text.to_owned(),
            finish_reason: Some(FinishReason::Stop),
            ..Observation::default()
        }
    }

    fn finished(reason: Option<FinishReason>, text: &str) -> Observation {
        Observation {
            finish_reason: reason,
            ..obs(text)
        }
    }

    fn calls(calls: &[(&str, &str)]) -> Observation {
        Observation {
            tool_calls: calls
                .iter()
                .map(|(name, arguments)| ToolCall {
                    name: (*name).to_owned(),
                    arguments: (*arguments).to_owned(),
                })
                .collect(),
            ..finished(Some(FinishReason::ToolCalls), "")
        }
    }

    fn failed(failure: Failure) -> Observation {
        Observation {
            status: if let Failure::Status(code) = failure {
                code
            } else {
                0
            },
            failure: Some(failure),
            ..finished(None, "")
        }
    }

    fn first_third(text: &str) -> &str {
        let cut = text.len() / 3;
        let cut = (cut..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(cut);
        &text[..cut]
    }

    fn assert_in(what: &str, value: f64, range: RangeInclusive<f64>) {
        assert!(range.contains(&value), "{what}: {value} not in {range:?}");
    }

    #[test]
    fn lexical_cases() {
        let check = |a: &str, b: &str, range: RangeInclusive<f64>| {
            let value = lexical(a, b);
            assert_in(&format!("lexical({a:?}, {b:?})"), value, range);
            assert_eq!(
                value,
                lexical(b, a),
                "lexical is symmetric for {a:?} / {b:?}"
            );
        };
        check(PASSWORD, PASSWORD, 1.0..=1.0);
        check("", "", 1.0..=1.0);
        check("   ", "\n", 1.0..=1.0);
        check("", "Hello there", 0.0..=0.0);
        check("Hello, World!", "hello world", 1.0..=1.0);
        check("  Paris.", "paris", 1.0..=1.0);
        check(PASSWORD, &PASSWORD.to_uppercase(), 1.0..=1.0);
        // 10% of the words swapped for synonyms: long (n-gram) and short (edit distance) paths.
        check(PASSWORD, PASSWORD_SYNONYMS, 0.7..=0.95);
        check(
            "Your order shipped yesterday and should arrive on Friday at your home address.",
            "Your order shipped yesterday and should arrive on Friday at your house address.",
            0.9..=0.95,
        );
        // Same topic, unrelated content.
        check(PASSWORD, BILLING, 0.0..=0.4);
        check(
            "Your order shipped yesterday and should arrive on Friday.",
            "Refunds are processed within five business days of the return.",
            0.0..=0.4,
        );
        check("Yes.", "No.", 0.0..=0.0);
        // Words in another order are not the same answer.
        check(
            "first open settings then choose security",
            "choose security first then open settings",
            0.0..=0.5,
        );
        // Scripts without spaces are compared character by character.
        check("我喜欢猫", "我喜欢狗", 0.75..=0.75);
        // No words at all: compared on the non-blank characters.
        check("👍", " 👍 ", 1.0..=1.0);
        check("👍", "👎", 0.0..=0.0);
        check("👍", "Sounds good", 0.0..=0.0);
    }

    #[test]
    fn lexical_generated_texts() {
        let mut rng = StdRng::seed_from_u64(7);
        let a = english(&mut rng, 700);
        let b = english(&mut rng, 700);
        // Same vocabulary, independent word order: clearly low.
        assert_in("same vocabulary", lexical(&a, &b), 0.0..=0.4);
        // Every 10th word replaced by a word the text never uses.
        let varied: Vec<&str> = a
            .split(' ')
            .enumerate()
            .map(|(i, w)| if i % 10 == 5 { "meanwhile" } else { w })
            .collect();
        assert_in("10% replaced", lexical(&a, &varied.join(" ")), 0.7..=0.95);
    }

    #[test]
    fn length_cases() {
        let check = |a: &str, b: &str, expected: f64| {
            let value = length(a, b);
            assert!(
                (value - expected).abs() < 1e-12,
                "length({a:?}, {b:?}) = {value}, expected {expected}"
            );
            assert_eq!(value, length(b, a));
        };
        check("", "", 1.0);
        check("one", "one", 1.0);
        check("one", "one two", 6.0 / 7.0);
        check("", "one", 5.0 / 6.0);
        check("a, b; c!", "x y z", 1.0);
        check("我喜欢猫", "cats", 6.0 / 9.0);
        let long = "word ".repeat(100);
        let half = "word ".repeat(50);
        check(&long, &half, 55.0 / 105.0);
        check(&long, &"word ".repeat(33), 38.0 / 105.0);
    }

    #[test]
    fn is_refusal_cases() {
        let cases = [
            ("I'm sorry, but I can't help with that request.", true),
            ("I’m sorry, but I can’t share that.", true),
            ("I CANNOT HELP WITH this.", true),
            ("Sorry! I can't assist with hacking.", true),
            ("I'm unable to provide medical advice.", true),
            ("As an AI, I do not have opinions.", true),
            ("\n\n  I am sorry, but I cannot do that.", true),
            (
                "Thanks for asking. I’m sorry, I can’t discuss internal policies.",
                true,
            ),
            ("Sure! Here is how to reset your password.", false),
            (
                "I'm sorry to hear that your order is late. It ships today.",
                false,
            ),
            (
                "You can't reset it from the app, use the website instead.",
                false,
            ),
            ("", false),
        ];
        for (text, expected) in cases {
            assert_eq!(is_refusal(text), expected, "is_refusal({text:?})");
        }
        // Only the opening counts.
        let late = format!(
            "{} I'm unable to say more.",
            "Here is the answer. ".repeat(12)
        );
        assert!(!is_refusal(&late));
    }

    #[test]
    fn refusal_cases() {
        let answer = obs("Open Settings, then Security.");
        let refusal_text = obs("I'm sorry, but I can't help with that.");
        let filtered = finished(Some(FinishReason::ContentFilter), "Open Set");
        let cases = [
            (&answer, &answer, 1.0),
            (&answer, &refusal_text, 0.0),
            (&answer, &filtered, 0.0),
            (&refusal_text, &refusal_text, 1.0),
            (&filtered, &refusal_text, 1.0),
            (&refusal_text, &answer, 1.0),
        ];
        for (reference, subject, expected) in cases {
            assert_eq!(
                refusal(reference, subject),
                expected,
                "refusal({:?}, {:?})",
                reference.text,
                subject.text
            );
        }
    }

    #[test]
    fn finish_cases() {
        use FinishReason::*;
        let cases = [
            (Some(Stop), Some(Stop), 1.0),
            (Some(ToolCalls), Some(ToolCalls), 1.0),
            (Some(Length), Some(Length), 1.0),
            (Some(Other("end".into())), Some(Other("pause".into())), 1.0),
            (None, Some(Length), 1.0),
            (Some(Stop), None, 1.0),
            (Some(Stop), Some(Length), 0.0),
            (Some(ToolCalls), Some(Length), 0.0),
            (Some(Stop), Some(ToolCalls), 0.5),
            (Some(Length), Some(Stop), 0.5),
            (Some(Stop), Some(ContentFilter), 0.5),
            (Some(Other("end".into())), Some(Length), 0.5),
        ];
        for (reference, subject, expected) in cases {
            let value = finish(
                &finished(reference.clone(), "x"),
                &finished(subject.clone(), "x"),
            );
            assert_eq!(value, expected, "finish({reference:?}, {subject:?})");
        }
    }

    #[test]
    fn structure_cases() {
        let check = |reference: &Observation, subject: &Observation, expected: f64| {
            let value = structure(reference, subject);
            assert!(
                (value - expected).abs() < 1e-12,
                "structure({reference:?}, {subject:?}) = {value}, expected {expected}"
            );
            assert_eq!(
                value,
                structure(subject, reference),
                "structure is symmetric"
            );
        };
        check(&obs("Plain prose."), &obs("Other prose."), 1.0);
        check(
            &obs(r#"{"a": 1, "b": [1, 2]}"#),
            &obs(r#"{"a": 1, "b": [1, 2]}"#),
            1.0,
        );
        check(
            &obs(r#"{"a": 1, "b": "x"}"#),
            &obs(r#" {"b": "y", "a": 7} "#),
            1.0,
        );
        check(
            &obs(r#"{"a": 1, "b": 2}"#),
            &obs(r#"{"a": 1, "b": 2, "c": 3}"#),
            0.75,
        );
        check(&obs(r#"{"a": 1}"#), &obs(r#"{"a": "1"}"#), 1.0 / 3.0);
        check(
            &obs(r#"{"a": {"b": 1}}"#),
            &obs(r#"{"b": {"a": 1}}"#),
            1.0 / 5.0,
        );
        check(&obs(r#"[{"a": 1}, {"a": 2}]"#), &obs(r#"[{"a": 3}]"#), 1.0);
        check(&obs(r#"[{"a": 1}]"#), &obs(r#"{"a": 1}"#), 0.0);
        check(&obs(r#"{"a": 1}"#), &obs("The value of a is 1."), 0.0);
        check(&obs(r#"{"a": 1"#), &obs("prose"), 1.0);
        check(&obs("42"), &obs("forty-two"), 1.0);
        check(
            &obs(r#"{"a": 1}"#),
            &obs("Here you go:\n```json\n{\"a\": 2}\n```\nDone."),
            1.0,
        );
        check(&obs(r#"{"a": 1}"#), &obs("```json\n{\"a\": 2}"), 0.0);
        let weather = r#"{"city": "Paris", "unit": "c"}"#;
        check(
            &calls(&[("get_weather", weather)]),
            &calls(&[("get_weather", weather)]),
            1.0,
        );
        check(
            &calls(&[("get_weather", weather)]),
            &calls(&[("get_time", weather)]),
            0.0,
        );
        check(
            &calls(&[("get_weather", weather)]),
            &calls(&[("get_weather", r#"{"city": "Rome"}"#)]),
            2.0 / 3.0,
        );
        check(
            &calls(&[("a", "{}"), ("b", "{}")]),
            &calls(&[("b", "{}"), ("a", "{}")]),
            1.0,
        );
        check(
            &calls(&[("a", "{}"), ("b", "{}")]),
            &calls(&[("a", "{}")]),
            0.5,
        );
        check(&calls(&[("a", "")]), &calls(&[("a", " {} ")]), 1.0);
        check(&calls(&[("a", "{oops")]), &calls(&[("a", "{")]), 1.0);
        check(&calls(&[("a", "{}")]), &calls(&[("a", "{")]), 0.0);
        check(
            &calls(&[("get_weather", weather)]),
            &obs("It is sunny in Paris."),
            0.0,
        );
    }

    #[test]
    fn score_cases() {
        let check = |name: &str,
                     reference: Observation,
                     subject: Observation,
                     combined: RangeInclusive<f64>,
                     hard: Option<HardFailure>| {
            let Some(score) = score(&reference, &subject, &Weights::default()) else {
                panic!("{name}: no score");
            };
            assert_in(name, score.combined, combined);
            assert_eq!(score.hard_failure, hard, "{name}: {score:?}");
        };
        let weather = r#"{"city": "Paris", "unit": "c"}"#;
        let order = r#"{"order_id": 123, "status": "shipped", "items": [{"sku": "A1", "qty": 2}]}"#;

        check(
            "identical prose",
            obs(PASSWORD),
            obs(PASSWORD),
            1.0..=1.0,
            None,
        );
        check("identical json", obs(order), obs(order), 1.0..=1.0, None);
        let tool = || calls(&[("get_weather", weather)]);
        check("identical tool call", tool(), tool(), 1.0..=1.0, None);
        check(
            "synonyms",
            obs(PASSWORD),
            obs(PASSWORD_SYNONYMS),
            0.8..=0.99,
            None,
        );
        check(
            "json values differ",
            obs(order),
            obs(r#"{"order_id": 124, "status": "pending", "items": [{"sku": "B7", "qty": 1}]}"#),
            0.8..=0.99,
            None,
        );
        check(
            "json fenced",
            obs(order),
            obs(&format!("```json\n{order}\n```")),
            0.8..=0.99,
            None,
        );
        // Structure and refusal do not apply to plain prose: unrelated prose is judged on its
        // words and length alone, and reads clearly low.
        check(
            "unrelated prose",
            obs(PASSWORD),
            obs(BILLING),
            0.1..=0.4,
            None,
        );
        check(
            "unrelated json",
            obs(order),
            obs(r#"{"refund": {"amount": 10.5, "currency": "EUR"}}"#),
            0.0..=0.5,
            None,
        );
        check(
            "tool name differs",
            tool(),
            calls(&[("get_time", weather)]),
            0.0..=0.65,
            None,
        );
        check(
            "tool argument value differs",
            tool(),
            calls(&[("get_weather", r#"{"city": "Rome", "unit": "c"}"#)]),
            0.8..=0.99,
            None,
        );
        check(
            "truncated",
            obs(PASSWORD),
            finished(Some(FinishReason::Length), first_third(PASSWORD)),
            0.0..=0.4,
            None,
        );
        check(
            "reference was cut too",
            finished(Some(FinishReason::Length), PASSWORD),
            finished(Some(FinishReason::Length), PASSWORD_SYNONYMS),
            0.8..=0.99,
            None,
        );
        check(
            "refusal",
            obs(PASSWORD),
            obs("I'm sorry, but I can't help with that."),
            0.0..=0.0,
            Some(HardFailure::Refusal),
        );
        check(
            "content filter",
            obs(PASSWORD),
            finished(Some(FinishReason::ContentFilter), first_third(PASSWORD)),
            0.0..=0.0,
            Some(HardFailure::Refusal),
        );
        check(
            "both refuse",
            obs("I'm sorry, but I can't help with that."),
            obs("I’m sorry, but I can’t help with that."),
            1.0..=1.0,
            None,
        );
        check(
            "broken json",
            obs(order),
            obs(r#"{"order_id": 123, "status": "shipped", "items": [{"sku": "A1""#),
            0.0..=0.0,
            Some(HardFailure::BrokenJson),
        );
        check(
            "broken tool call",
            tool(),
            calls(&[("get_weather", r#"{"city": "Paris", "unit": "#)]),
            0.0..=0.0,
            Some(HardFailure::BrokenToolCall),
        );
        // Only a reference with valid tool calls makes a broken one a hard failure.
        check(
            "broken tool call instead of text",
            obs("It is sunny in Paris."),
            calls(&[("get_weather", "{")]),
            0.0..=0.7,
            None,
        );
        check(
            "json cut by the observer's bound",
            obs(order),
            Observation {
                truncated: true,
                ..obs(&order[..order.len() / 2])
            },
            0.0..=0.7,
            None,
        );
        check(
            "tool arguments cut by the observer's bound",
            tool(),
            Observation {
                truncated: true,
                ..calls(&[("get_weather", r#"{"city": "Par"#)])
            },
            0.0..=0.9,
            None,
        );
        check(
            "both tool calls broken",
            calls(&[("get_weather", "{")]),
            calls(&[("get_weather", "{")]),
            1.0..=1.0,
            None,
        );
        check(
            "empty",
            obs(PASSWORD),
            obs(" \n"),
            0.0..=0.0,
            Some(HardFailure::Empty),
        );
        for failure in [
            Failure::Status(500),
            Failure::Timeout,
            Failure::Transport,
            Failure::Malformed,
        ] {
            check(
                &format!("{failure:?}"),
                obs(PASSWORD),
                failed(failure.clone()),
                0.0..=0.0,
                Some(HardFailure::Error),
            );
        }
    }

    #[test]
    fn no_sample_without_a_reference() {
        let subject = obs(PASSWORD);
        let references = [
            failed(Failure::Status(503)),
            failed(Failure::Timeout),
            Observation {
                failure: Some(Failure::Malformed),
                ..obs(PASSWORD)
            },
            obs(""),
            obs("  \n "),
        ];
        for reference in references {
            assert_eq!(
                score(&reference, &subject, &Weights::default()),
                None,
                "{reference:?}"
            );
        }
    }

    #[test]
    fn hard_failure_keeps_individual_scores() {
        let subject = Observation {
            failure: Some(Failure::Status(502)),
            ..obs(PASSWORD)
        };
        let score = score(&obs(PASSWORD), &subject, &Weights::default()).unwrap();
        assert_eq!(score.hard_failure, Some(HardFailure::Error));
        assert_eq!(score.combined, 0.0);
        assert_eq!((score.lexical, score.length, score.finish), (1.0, 1.0, 1.0));
    }

    #[test]
    fn weights_shape_the_combined_score() {
        let (reference, subject) = (obs(PASSWORD), obs(BILLING));
        let only = |lexical, length| Weights {
            lexical,
            structure: 0.0,
            length,
            refusal: 0.0,
        };
        let lexical_only = score(&reference, &subject, &only(1.0, 0.0)).unwrap();
        assert_eq!(lexical_only.combined, lexical_only.lexical);
        let length_only = score(&reference, &subject, &only(0.0, 2.0)).unwrap();
        assert_eq!(length_only.combined, length_only.length);
        let default = score(&reference, &subject, &Weights::default()).unwrap();
        for unusable in [
            only(0.0, 0.0),
            only(f64::NAN, -1.0),
            only(f64::INFINITY, 0.0),
        ] {
            let fallback = score(&reference, &subject, &unusable).unwrap();
            assert_eq!(fallback.combined, default.combined, "{unusable:?}");
        }
    }

    #[test]
    fn by_scorer_follows_scorers() {
        let score = Score {
            lexical: 0.1,
            structure: 0.2,
            length: 0.3,
            refusal: 0.4,
            finish: 0.5,
            combined: 0.6,
            hard_failure: None,
        };
        let pairs = score.by_scorer();
        assert_eq!(pairs.map(|(name, _)| name), SCORERS);
        assert_eq!(
            pairs.map(|(_, value)| value),
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
        );
    }

    #[test]
    fn hard_failure_names() {
        let cases = [
            (HardFailure::Error, "error"),
            (HardFailure::Empty, "empty"),
            (HardFailure::BrokenJson, "broken_json"),
            (HardFailure::BrokenToolCall, "broken_tool_call"),
            (HardFailure::Refusal, "refusal"),
        ];
        for (failure, name) in cases {
            assert_eq!(failure.as_str(), name);
        }
    }

    /// Many random pairs, odd inputs included: every score stays in [0, 1], never NaN.
    #[test]
    fn scores_stay_in_range() {
        const FRAGMENTS: [&str; 24] = [
            "the",
            "Order",
            "shipped",
            "password",
            " ",
            "\n",
            ".",
            ",",
            "!!",
            "é",
            "ß",
            "中文",
            "👍",
            "{",
            "}",
            "[",
            "]",
            "\"a\":",
            "1",
            "```json",
            "```",
            "I'm sorry, but I can't",
            "\u{2019}",
            "\0",
        ];
        const ARGUMENTS: [&str; 6] = ["{}", "", "{\"x\": 1}", "{broken", "[1, 2]", "null"];
        let mut rng = StdRng::seed_from_u64(42);
        let text = |rng: &mut StdRng| -> String {
            let len = rng.random_range(0..40);
            (0..len)
                .filter_map(|_| FRAGMENTS.choose(rng).copied())
                .collect()
        };
        let reasons = [
            None,
            Some(FinishReason::Stop),
            Some(FinishReason::Length),
            Some(FinishReason::ToolCalls),
            Some(FinishReason::ContentFilter),
            Some(FinishReason::Other("x".into())),
        ];
        let observation = |rng: &mut StdRng| {
            let tool_calls = (0..rng.random_range(0..3))
                .map(|_| ToolCall {
                    name: ["a", "b"].choose(rng).copied().unwrap_or("a").to_owned(),
                    arguments: ARGUMENTS.choose(rng).copied().unwrap_or("").to_owned(),
                })
                .collect();
            Observation {
                status: 200,
                text: if rng.random_bool(0.2) {
                    english_like(rng)
                } else {
                    text(rng)
                },
                tool_calls,
                finish_reason: reasons.choose(rng).cloned().flatten(),
                failure: rng.random_bool(0.05).then_some(Failure::Timeout),
                ..Observation::default()
            }
        };
        let mut scored = 0;
        for _ in 0..3000 {
            let (reference, subject) = (observation(&mut rng), observation(&mut rng));
            assert_eq!(
                lexical(&reference.text, &subject.text),
                lexical(&subject.text, &reference.text)
            );
            assert_eq!(
                structure(&reference, &subject),
                structure(&subject, &reference)
            );
            assert_eq!(lexical(&subject.text, &subject.text), 1.0);
            let Some(score) = score(&reference, &subject, &Weights::default()) else {
                assert!(reference.failure.is_some() || reference.is_empty());
                continue;
            };
            scored += 1;
            let (reference_content, subject_content) = (content(&reference), content(&subject));
            assert_eq!(score.lexical, lexical(&reference_content, &subject_content));
            assert_eq!(score.length, length(&reference_content, &subject_content));
            assert_eq!(score.structure, structure(&reference, &subject));
            for (name, value) in score.by_scorer() {
                assert!(
                    (0.0..=1.0).contains(&value),
                    "{name} = {value} for {reference:?} / {subject:?}"
                );
            }
            if score.hard_failure.is_some() {
                assert_eq!(score.combined, 0.0);
            }
        }
        assert!(scored > 1000, "only {scored} pairs scored");
    }

    fn english_like(rng: &mut StdRng) -> String {
        let words = rng.random_range(0..200);
        english(rng, words)
    }
}
