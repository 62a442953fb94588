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
use std::sync::LazyLock;

mod checks;
mod neighbourhood;

pub use checks::{regression, Check, CheckRule, CheckTarget, Pattern, Schema};
pub use neighbourhood::{Agreement, Windows};

/// Weights of the combined score (config `weights = { lexical, structure, length, refusal,
/// semantic, judge }`).
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
    /// Weight of the embedding similarity (`scoring.semantic`), when it was measured.
    pub semantic: f64,
    /// Weight of the blind LLM judge's verdict (`scoring.judge`), when it gave one.
    pub judge: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            lexical: 0.4,
            structure: 0.3,
            length: 0.1,
            refusal: 0.2,
            semantic: 0.0,
            judge: 0.0,
        }
    }
}

impl Weights {
    /// Weighted mean of the four weighted scorers, over those that apply to the pair (None: not
    /// applicable). A scorer with nothing to judge (structure of two plain texts, refusal when
    /// neither side refuses) would only add a constant 1 and hide how different the texts are.
    /// Negative or non-finite weights count as 0; if nothing is left the default weights are
    /// used, so the result is never NaN.
    fn mean(&self, p: &Parts) -> f64 {
        let usable = |w: f64| if w.is_finite() && w > 0.0 { w } else { 0.0 };
        let parts = [
            (usable(self.lexical), Some(p.lexical)),
            (usable(self.structure), p.structure),
            (usable(self.length), Some(p.length)),
            (usable(self.refusal), p.refusal),
            (usable(self.semantic), p.semantic),
            (usable(self.judge), p.judge),
        ];
        let applicable = parts.iter().filter_map(|(w, v)| Some((*w, (*v)?)));
        let total: f64 = applicable.clone().map(|(w, _)| w).sum();
        if total > 0.0 && total.is_finite() {
            applicable.map(|(w, v)| w * v).sum::<f64>() / total
        } else if *self != Self::default() {
            Self::default().mean(p)
        } else {
            p.lexical
        }
    }
}

/// The scorers' values for one pair, None where a scorer does not apply or was not measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Parts {
    lexical: f64,
    structure: Option<f64>,
    length: f64,
    refusal: Option<f64>,
    semantic: Option<f64>,
    judge: Option<f64>,
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
    /// The subject fails one of the route's checks that the reference passes.
    Check,
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
            Self::Check => "check",
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
    /// Cosine similarity of the two answers' embeddings, when `scoring.semantic` measured it.
    pub semantic: Option<f64>,
    /// 0 when the blind LLM judge preferred the reference, 1 otherwise, when it gave a verdict.
    pub judge: Option<f64>,
    /// Weighted mean of the scorers that apply, times finish; 0 on a hard failure.
    pub combined: f64,
    /// Set when a hard failure forced `combined` to 0.
    pub hard_failure: Option<HardFailure>,
    /// The check behind [`HardFailure::Check`].
    pub failed_check: Option<String>,
    /// Embedding routes: Spearman's rank correlation of the pairwise similarities of a window
    /// of inputs under both releases, clamped to [0, 1] (`neighbourhood.rs`).
    pub neighbourhood: Option<f64>,
    /// Embedding routes: nearest-neighbour overlap at k over the same window.
    pub knn: Option<f64>,
    /// Whether structure and refusal had anything to judge (else they are left out of the mean).
    structure_applies: bool,
    refusal_applies: bool,
    /// An embedding route's score: only `neighbourhood` and `knn` (the text scorers do not
    /// apply to vectors).
    embedding: bool,
}

impl Score {
    /// (name, value) for each of [`SCORERS`], in order, then `semantic` and `judge` when
    /// measured.
    pub fn by_scorer(&self) -> Vec<(&'static str, f64)> {
        let [lexical, structure, length, refusal, finish, combined] = SCORERS;
        if self.embedding {
            let mut out = vec![(combined, self.combined)];
            out.extend(self.tracked());
            return out;
        }
        let mut out = vec![
            (lexical, self.lexical),
            (structure, self.structure),
            (length, self.length),
            (refusal, self.refusal),
            (finish, self.finish),
            (combined, self.combined),
        ];
        out.extend(self.semantic.map(|v| ("semantic", v)));
        out.extend(self.judge.map(|v| ("judge", v)));
        out
    }

    /// The scorers the judge tracks one by one (those that had something to judge), for each
    /// scorer's own quality.
    pub fn tracked(&self) -> Vec<(&'static str, f64)> {
        if self.embedding {
            let mut out = Vec::new();
            out.extend(self.neighbourhood.map(|v| ("neighbourhood", v)));
            out.extend(self.knn.map(|v| ("knn", v)));
            return out;
        }
        let mut out = vec![("lexical", self.lexical), ("length", self.length)];
        if self.structure_applies {
            out.push(("structure", self.structure));
        }
        if self.refusal_applies {
            out.push(("refusal", self.refusal));
        }
        out.extend(self.semantic.map(|v| ("semantic", v)));
        out.extend(self.judge.map(|v| ("judge", v)));
        out
    }

    /// With the remote scorers' values (None: not configured, failed or dropped) and a failed
    /// check, the combined score computed again.
    pub fn with_remote(
        mut self,
        semantic: Option<f64>,
        judge: Option<f64>,
        failed_check: Option<&str>,
        weights: &Weights,
    ) -> Score {
        self.semantic = semantic.map(|v| v.clamp(0.0, 1.0));
        self.judge = judge.map(|v| v.clamp(0.0, 1.0));
        if let (None, Some(name)) = (self.hard_failure, failed_check) {
            self.hard_failure = Some(HardFailure::Check);
            self.failed_check = Some(name.to_owned());
        }
        self.combined = self.combine(weights);
        self
    }

    fn combine(&self, weights: &Weights) -> f64 {
        if self.hard_failure.is_some() {
            return 0.0;
        }
        let parts = Parts {
            lexical: self.lexical,
            structure: self.structure_applies.then_some(self.structure),
            length: self.length,
            refusal: self.refusal_applies.then_some(self.refusal),
            semantic: self.semantic,
            judge: self.judge,
        };
        (weights.mean(&parts) * self.finish).clamp(0.0, 1.0)
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
    let has_structure = |s: &Shape<'_>| s.json.is_some() || !s.tools.is_empty();
    let mut score = Score {
        lexical,
        structure,
        length,
        refusal,
        finish,
        semantic: None,
        judge: None,
        combined: 0.0,
        hard_failure,
        failed_check: None,
        neighbourhood: None,
        knn: None,
        structure_applies: has_structure(&reference_shape) || has_structure(&subject_shape),
        refusal_applies: refuses(reference) || refuses(subject),
        embedding: false,
    };
    score.combined = score.combine(weights);
    Some(score)
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
    let text = text.trim_start();
    let end = text
        .char_indices()
        .nth(REFUSAL_PREFIX_CHARS)
        .map_or(text.len(), |(at, _)| at);
    REFUSALS.is_match(&text[..end])
}

/// [`REFUSAL_PHRASES`] as one case-insensitive alternation, any apostrophe for `'`: one pass over
/// the text, where lower-casing a copy and searching it once per phrase cost 25k instructions
/// per mirror (`benches/README.md`).
static REFUSALS: LazyLock<regex::Regex> = LazyLock::new(refusals);

#[expect(
    clippy::expect_used,
    reason = "escaped literals always compile (every test of is_refusal builds it)"
)]
fn refusals() -> regex::Regex {
    let phrases: Vec<String> = REFUSAL_PHRASES
        .iter()
        .map(|p| regex::escape(p).replace('\'', "['\u{2018}\u{2019}\u{02BC}]"))
        .collect();
    regex::Regex::new(&format!("(?i){}", phrases.join("|"))).expect("escaped literals compile")
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
mod tests;
