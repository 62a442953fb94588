//! Words and their meaning: the tokenizer, stop words, meaning classes (a word and its synonyms
//! share one), the embeddings built from them, and the text transforms of `Style::Paraphrase`,
//! `Style::Pirate` and `Style::WrongFacts`.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use crate::{FACTS, PARAPHRASES, PIRATE_WORDS, SUPPORT, SYNONYMS};

/// The lowercase words of `text`: runs of letters, digits and apostrophes (`’` counts as `'`),
/// without leading or trailing apostrophes. "Two-factor" is two words.
pub(crate) fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .map(|run| run.trim_matches(|c| c == '\'' || c == '’'))
        .filter(|run| !run.is_empty())
        .map(|run| run.to_lowercase().replace('’', "'"))
        .collect()
}

/// Very common words that carry no topic: skipped by [`embed`] and by the judge's topic check.
pub(crate) const STOP_WORDS: &[&str] = &[
    "a", "able", "about", "also", "am", "an", "and", "any", "are", "as", "at", "be", "been",
    "being", "but", "by", "can", "could", "did", "do", "does", "for", "from", "had", "has", "have",
    "he", "her", "here", "his", "how", "i", "i'm", "i've", "if", "in", "into", "is", "it", "it's",
    "its", "kindly", "let", "many", "may", "me", "might", "must", "my", "of", "off", "on", "or",
    "our", "out", "over", "per", "please", "shall", "she", "should", "so", "some", "such", "than",
    "that", "the", "their", "them", "then", "there", "these", "they", "this", "those", "till",
    "to", "too", "until", "up", "us", "very", "was", "we", "we'll", "we're", "were", "what",
    "when", "where", "which", "while", "who", "why", "will", "with", "would", "ye", "yer", "you",
    "you're", "your",
];

pub(crate) fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.binary_search(&word).is_ok()
}

/// Word -> the representative (alphabetically first member) of its meaning class, for the words
/// of the synonym tables; a word not in the map is its own class.
fn classes() -> &'static HashMap<String, String> {
    static CLASSES: OnceLock<HashMap<String, String>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut parent: HashMap<String, String> = HashMap::new();
        fn root(parent: &HashMap<String, String>, word: &str) -> String {
            let mut word = word.to_owned();
            while let Some(up) = parent.get(&word).filter(|up| **up != word) {
                word.clone_from(up);
            }
            word
        }
        let pairs = SYNONYMS.iter().chain(PARAPHRASES);
        for (from, to) in pairs {
            let mut members = words(from);
            members.extend(words(to));
            members.retain(|word| !is_stop_word(word));
            let Some((first, rest)) = members.split_first() else {
                continue;
            };
            for word in &members {
                parent.entry(word.clone()).or_insert_with(|| word.clone());
            }
            let first = root(&parent, first);
            for word in rest {
                let other = root(&parent, word);
                if other != first {
                    parent.insert(other, first.clone());
                }
            }
        }
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for word in parent.keys() {
            groups
                .entry(root(&parent, word))
                .or_default()
                .push(word.clone());
        }
        let mut classes = HashMap::new();
        for members in groups.into_values() {
            let representative = members.iter().min().cloned().unwrap_or_default();
            for word in members {
                classes.insert(word, representative.clone());
            }
        }
        classes
    })
}

/// The meaning class of a lowercase word: the same for a word and its synonyms.
pub(crate) fn meaning_class(word: &str) -> &str {
    classes().get(word).map_or(word, String::as_str)
}

/// The meaning classes of the support corpus and of every word of the synonym tables: what the
/// judge counts as on topic.
pub(crate) fn support_classes() -> &'static HashSet<String> {
    static SUPPORT_CLASSES: OnceLock<HashSet<String>> = OnceLock::new();
    SUPPORT_CLASSES.get_or_init(|| {
        let tables = SYNONYMS
            .iter()
            .chain(PARAPHRASES)
            .flat_map(|(from, to)| [*from, *to]);
        SUPPORT
            .iter()
            .copied()
            .chain(tables)
            .flat_map(words)
            .filter(|word| !is_stop_word(word))
            .map(|word| meaning_class(&word).to_owned())
            .collect()
    })
}

/// Weight of a word's own vector next to its class vector in [`embed`]: synonyms are close but
/// not identical.
const LEXICAL_WEIGHT: f64 = 0.15;

/// A deterministic embedding of `text` with `dims` dimensions (unit length, or all zeros when
/// the text has no word outside the stop words).
///
/// Each word but the stop words adds the fixed pseudo-random unit vector of its meaning class (a
/// word and its synonyms in the simulator's tables share a class; other words are their own)
/// plus 0.15 times a vector of its own, so texts of similar meaning get similar vectors
/// whatever their wording: a heavy paraphrase stays above 0.9 cosine, unrelated texts are near 0.
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut sum = vec![0.0f64; dims];
    for word in words(text) {
        if is_stop_word(&word) {
            continue;
        }
        add_direction(&mut sum, 0x0063_6c61_7373, meaning_class(&word), 1.0);
        add_direction(&mut sum, 0x776f_7264, &word, LEXICAL_WEIGHT);
    }
    let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
    #[allow(clippy::cast_possible_truncation)] // f32 is the wire precision
    sum.iter()
        .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
        .collect()
}

/// Adds `weight` times the pseudo-random unit vector of (`salt`, `key`) to `sum`.
fn add_direction(sum: &mut [f64], salt: u64, key: &str, weight: f64) {
    let mut state = crate::fnv(crate::fnv(crate::FNV_OFFSET, key), &salt.to_string());
    let mut direction: Vec<f64> = Vec::with_capacity(sum.len());
    while direction.len() < sum.len() {
        // Box-Muller: two uniform numbers in (0, 1] give two independent normal ones, so the
        // direction is uniform on the sphere.
        let u1 = unit_interval(splitmix(&mut state));
        let u2 = unit_interval(splitmix(&mut state));
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        direction.push(radius * angle.cos());
        direction.push(radius * angle.sin());
    }
    direction.truncate(sum.len());
    let norm = direction.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        for (total, x) in sum.iter_mut().zip(&direction) {
            *total += weight * x / norm;
        }
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A number in (0, 1] from 53 random bits.
fn unit_interval(bits: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // 53 bits are exact in f64
    let value = ((bits >> 11) + 1) as f64;
    value / (1u64 << 53) as f64
}

/// The cosine similarity of two vectors (0 if either is all zeros; the shorter length counts).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut norm_a, mut norm_b) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        norm_a += x * x;
        norm_b += y * y;
    }
    if norm_a == 0.0 || norm_b == 0.0 {
        0.0
    } else {
        dot / (norm_a.sqrt() * norm_b.sqrt())
    }
}

/// Word-level Jaccard similarity of the two texts' sets of [`words`] (1 for two empty texts).
pub(crate) fn jaccard(a: &str, b: &str) -> f64 {
    let a: HashSet<String> = words(a).into_iter().collect();
    let b: HashSet<String> = words(b).into_iter().collect();
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    #[allow(clippy::cast_precision_loss)] // word counts are small
    let ratio = a.intersection(&b).count() as f64 / union as f64;
    ratio
}

// ---------------------------------------------------------------------------------------------
// Text transforms

/// A space-separated token of a text: leading punctuation, the word, trailing punctuation.
struct Token<'a> {
    lead: &'a str,
    core: &'a str,
    trail: &'a str,
}

fn tokens(text: &str) -> Vec<Token<'_>> {
    text.split(' ')
        .map(|token| {
            let start = token.len() - token.trim_start_matches(is_edge_punctuation).len();
            let (lead, rest) = token.split_at(start);
            let end = rest.trim_end_matches(is_edge_punctuation).len();
            let (core, trail) = rest.split_at(end);
            Token { lead, core, trail }
        })
        .collect()
}

fn is_edge_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() && c != '\''
}

/// `replacement` with its first letter upper-cased if `original` starts with an upper-case one.
fn match_case(original: &str, replacement: &str) -> String {
    let capital = original.starts_with(|c: char| c.is_uppercase());
    let mut out = String::with_capacity(replacement.len());
    let mut chars = replacement.chars();
    if let Some(first) = chars.next() {
        if capital {
            out.extend(first.to_uppercase());
        } else {
            out.push(first);
        }
        out.push_str(chars.as_str());
    }
    out
}

/// Rewrite rules by the lowercase first word of their left side: its words and the right side,
/// in table order (earlier tables first).
type Rules = HashMap<&'static str, Vec<(Vec<&'static str>, &'static str)>>;

fn rules(tables: &[&[(&'static str, &'static str)]]) -> Rules {
    let mut rules: Rules = HashMap::new();
    for (from, to) in tables.iter().copied().flatten() {
        let words: Vec<&'static str> = from.split(' ').collect();
        if let Some(first) = words.first() {
            rules.entry(*first).or_default().push((words, *to));
        }
    }
    rules
}

/// The rule whose (possibly multi-word) left side matches the tokens at `index`: its word count
/// and right side. Only the last matched token may carry punctuation after it, and only the first
/// before it.
fn lookup(rules: &Rules, tokens: &[Token<'_>], index: usize) -> Option<(usize, &'static str)> {
    let first = tokens.get(index)?.core.to_lowercase();
    rules.get(first.as_str())?.iter().find_map(|(words, to)| {
        let window = tokens.get(index..index + words.len())?;
        let matches = window
            .iter()
            .zip(words)
            .enumerate()
            .all(|(at, (token, word))| {
                let clean = at + 1 == words.len() || token.trail.is_empty();
                let lead_ok = at == 0 || token.lead.is_empty();
                clean && lead_ok && token.core.eq_ignore_ascii_case(word)
            });
        matches.then_some((words.len(), *to))
    })
}

/// Rewrites `text` with `rules` (left sides lowercase, right sides in natural case), keeping
/// punctuation and the capital of a rewritten sentence start; "a"/"an" before a rewritten word
/// follows its first letter.
fn rewrite(text: &str, rules: &Rules) -> String {
    let tokens = tokens(text);
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut index = 0;
    while let Some(token) = tokens.get(index) {
        match lookup(rules, &tokens, index) {
            Some((count, to)) => {
                let last = &tokens[index + count - 1];
                let replaced = match_case(token.core, to);
                if let Some(article) = out.last_mut() {
                    fix_article(article, &replaced);
                }
                out.push(format!("{}{replaced}{}", token.lead, last.trail));
                index += count;
            }
            None => {
                out.push(format!("{}{}{}", token.lead, token.core, token.trail));
                index += 1;
            }
        }
    }
    out.join(" ")
}

/// Turns `article` ("a", "an", "A", "An") into the one that goes before `word`.
fn fix_article(article: &mut String, word: &str) {
    let vowel = word.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']);
    let fixed = match (article.as_str(), vowel) {
        ("a", true) => "an",
        ("A", true) => "An",
        ("an", false) => "a",
        ("An", false) => "A",
        _ => return,
    };
    *article = fixed.to_owned();
}

/// `Style::Paraphrase`: every word or phrase of the paraphrase table, else of the synonym table,
/// replaced.
pub(crate) fn paraphrase(text: &str) -> String {
    static RULES: OnceLock<Rules> = OnceLock::new();
    rewrite(text, RULES.get_or_init(|| rules(&[PARAPHRASES, SYNONYMS])))
}

/// `Style::Pirate`: "Arr, matey! ", the pirate words, " Yo ho!".
pub(crate) fn pirate(text: &str) -> String {
    static RULES: OnceLock<Rules> = OnceLock::new();
    let text = rewrite(text, RULES.get_or_init(|| rules(&[PIRATE_WORDS])));
    format!("Arr, matey! {text} Yo ho!")
}

/// The lowest word-level Jaccard similarity `Style::WrongFacts` keeps with the Echo answer.
const WRONG_FACTS_OVERLAP: f64 = 0.85;
/// The most facts `Style::WrongFacts` changes in one answer.
const WRONG_FACTS_MAX: usize = 2;

/// `Style::WrongFacts`: the facts of [`FACTS`] found in `text` (in order), each replaced by its
/// wrong version as long as the word-level Jaccard similarity with `text` stays at 0.85 or more,
/// at most two; at least one is always changed (the one that keeps the most overlap), if any.
pub(crate) fn wrong_facts(text: &str) -> String {
    let mut found: Vec<(usize, &str, &str)> = FACTS
        .iter()
        .filter_map(|(right, wrong)| text.find(right).map(|at| (at, *right, *wrong)))
        .collect();
    found.sort_unstable();
    let mut changed = text.to_owned();
    let mut count = 0;
    for (_, right, wrong) in &found {
        if count == WRONG_FACTS_MAX {
            break;
        }
        let attempt = changed.replacen(right, wrong, 1);
        if jaccard(text, &attempt) >= WRONG_FACTS_OVERLAP {
            changed = attempt;
            count += 1;
        }
    }
    if count == 0 {
        let best = found
            .iter()
            .map(|(_, right, wrong)| text.replacen(right, wrong, 1))
            .max_by(|a, b| jaccard(text, a).total_cmp(&jaccard(text, b)));
        if let Some(best) = best {
            changed = best;
        }
    }
    changed
}

/// Whether `text` states one of the wrong facts of [`FACTS`] (word-level, case-insensitive).
pub(crate) fn states_wrong_facts(text: &str) -> bool {
    static WRONG: OnceLock<Vec<String>> = OnceLock::new();
    let wrong = WRONG.get_or_init(|| {
        FACTS
            .iter()
            .map(|(_, wrong)| format!(" {} ", words(wrong).join(" ")))
            .collect()
    });
    let padded = format!(" {} ", words(text).join(" "));
    wrong.iter().any(|phrase| padded.contains(phrase.as_str()))
}
