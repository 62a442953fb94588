//! The simulated LLM judge: the prompt layout it understands, its quality heuristic and its
//! noisy verdicts.

use std::collections::HashSet;

use rand::Rng;
use serde_json::{json, Value};

use crate::meaning::{is_stop_word, meaning_class, states_wrong_facts, support_classes, words};

/// A judge's decision between answer A and answer B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Answer A is better.
    A,
    /// Answer B is better.
    B,
    /// Neither is better.
    Tie,
}

impl Verdict {
    /// `"A"`, `"B"` or `"tie"`, as in the judge's JSON answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::B => "B",
            Self::Tie => "tie",
        }
    }
}

/// How a judge model (`Style::Judge`) decides; the [`Behavior`](crate::Behavior) of a model
/// carries one.
///
/// Each answer gets a quality score (see [`judge_verdict`]). When the scores differ by at least
/// 1, the better answer wins with probability `decisiveness`; the rest goes 60/40 to a tie and
/// to the worse answer. Otherwise the verdict is a coin flip: a tie with probability `tie_rate`,
/// A or B with half of the rest each, plus `position_bias` for A and minus it for B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judge {
    /// Probability that the clearly better answer wins (default 0.95).
    pub decisiveness: f64,
    /// Probability of a tie between about equally good answers (default 0.2).
    pub tie_rate: f64,
    /// Preference for answer A between about equally good answers, taken from B (default 0.05).
    pub position_bias: f64,
}

impl Default for Judge {
    /// Decisiveness 0.95, tie rate 0.2, position bias +0.05 for A.
    fn default() -> Self {
        Self {
            decisiveness: 0.95,
            tie_rate: 0.2,
            position_bias: 0.05,
        }
    }
}

/// Scores this far apart make one answer clearly better.
const CLEAR_MARGIN: f64 = 1.0;

impl Judge {
    /// The verdict on answers `a` and `b` to `request` (see [`judge_verdict`]).
    pub fn verdict(
        &self,
        rubric: &str,
        request: &str,
        a: &str,
        b: &str,
        rng: &mut impl Rng,
    ) -> Verdict {
        self.decide(rubric, request, a, b, rng).0
    }

    /// The verdict and its one-sentence reason.
    pub(crate) fn decide(
        &self,
        rubric: &str,
        request: &str,
        a: &str,
        b: &str,
        rng: &mut impl Rng,
    ) -> (Verdict, String) {
        // The rubric is part of the contract but the heuristic below is fixed.
        let _ = rubric;
        let (first, second) = (assess(a, request), assess(b, request));
        let margin = first.score - second.score;
        let roll: f64 = rng.random();
        if margin.abs() >= CLEAR_MARGIN {
            let (better, worse, flawed, flaws) = if margin > 0.0 {
                (Verdict::A, Verdict::B, "B", &second.flaws)
            } else {
                (Verdict::B, Verdict::A, "A", &first.flaws)
            };
            let decisiveness = self.decisiveness.clamp(0.0, 1.0);
            let tie = (1.0 - decisiveness) * 0.6;
            if roll < decisiveness {
                let reason = format!(
                    "Answer {} is better: answer {flawed} {}.",
                    better.as_str(),
                    flaws.join(" and ")
                );
                (better, reason)
            } else if roll < decisiveness + tie {
                (Verdict::Tie, "Both answers have problems.".to_owned())
            } else {
                let reason = format!("Answer {} reads more naturally.", worse.as_str());
                (worse, reason)
            }
        } else {
            let tie = self.tie_rate.clamp(0.0, 1.0);
            let a_share = ((1.0 - tie) / 2.0 + self.position_bias).clamp(0.0, 1.0 - tie);
            if roll < a_share {
                (Verdict::A, "Answer A is slightly clearer.".to_owned())
            } else if roll < a_share + tie {
                (
                    Verdict::Tie,
                    "Both answers are about equally good.".to_owned(),
                )
            } else {
                (Verdict::B, "Answer B is slightly clearer.".to_owned())
            }
        }
    }
}

/// A judge's verdict between answers `a` and `b` to `request` under `rubric`, with the default
/// [`Judge`] (the one a `Style::Judge` model uses unless its behaviour says otherwise).
///
/// Each answer starts at 0 and loses 5 if empty, 3 if it refuses, 2 if it talks like a pirate
/// (two or more of arr, matey, ye, yer, ahoy, aye, yo, ho), 3 if it is off topic (fewer than
/// half of its words, stop words aside, share a meaning class with the built-in support corpus
/// or the request), 3 if it states one of the corpus's facts wrongly (the judge knows them:
/// "within three days" where the corpus says thirty...), 1.5 if it is broken JSON or cut off
/// mid-sentence. A clearly worse answer (by 1 or more) loses with probability 0.95; between
/// about equally good ones the verdict is random: A 0.45, B 0.35, tie 0.2. The rubric is read
/// but does not change the heuristic.
pub fn judge_verdict(rubric: &str, request: &str, a: &str, b: &str, rng: &mut impl Rng) -> Verdict {
    Judge::default().verdict(rubric, request, a, b, rng)
}

/// The product's judge prompt: the layout a `Style::Judge` model understands.
pub fn judge_prompt(rubric: &str, request: &str, a: &str, b: &str) -> String {
    format!(
        "<rubric>\n{rubric}\n</rubric>\n<request>\n{request}\n</request>\n\
         <answer id=\"A\">\n{a}\n</answer>\n<answer id=\"B\">\n{b}\n</answer>\n\
         Which answer is better under the rubric? Reply with JSON only: \
         {{\"verdict\": \"A\" | \"B\" | \"tie\", \"reason\": \"...\"}}"
    )
}

/// The parts of a judge prompt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Layout<'a> {
    pub(crate) rubric: &'a str,
    pub(crate) request: &'a str,
    pub(crate) a: &'a str,
    pub(crate) b: &'a str,
}

impl<'a> Layout<'a> {
    /// Reads the layout of [`judge_prompt`]: the opening tags in order, each part ending at the
    /// last closing tag before the next opening one (so a part may itself contain a closing tag),
    /// surrounding whitespace trimmed. `None` if a tag is missing.
    pub(crate) fn parse(message: &'a str) -> Option<Self> {
        const OPENERS: [&str; 4] = [
            "<rubric>",
            "<request>",
            "<answer id=\"A\">",
            "<answer id=\"B\">",
        ];
        const CLOSERS: [&str; 4] = ["</rubric>", "</request>", "</answer>", "</answer>"];
        let mut starts = [0usize; 4];
        let mut from = 0;
        for (start, opener) in starts.iter_mut().zip(OPENERS) {
            let at = from + message.get(from..)?.find(opener)?;
            *start = at + opener.len();
            from = *start;
        }
        let mut parts = [""; 4];
        for (index, part) in parts.iter_mut().enumerate() {
            let start = starts[index];
            let end = match starts.get(index + 1) {
                Some(next) => next - OPENERS[index + 1].len(),
                None => message.len(),
            };
            let segment = message.get(start..end)?;
            let close = segment.rfind(CLOSERS[index])?;
            *part = segment.get(..close)?.trim();
        }
        let [rubric, request, a, b] = parts;
        Some(Self {
            rubric,
            request,
            a,
            b,
        })
    }
}

/// What `Style::JudgeGarbled` answers: nothing a strict verdict parser accepts.
const GARBLED: [&str; 3] = [
    "I think the first one is better.",
    "Both answers have their merits, so it is hard to say which one wins.",
    "{\"verdict\": \"maybe\", \"reason\": \"unsure\"}",
];

/// The text answer of a judge model to a judge prompt: the JSON verdict, or with `garbled` one of
/// the unparseable answers. `None` if `message` does not follow the layout.
pub(crate) fn reply(
    judge: &Judge,
    garbled: bool,
    message: &str,
    rng: &mut impl Rng,
) -> Option<String> {
    let layout = Layout::parse(message)?;
    if garbled {
        return Some(GARBLED[rng.random_range(0..GARBLED.len())].to_owned());
    }
    let (verdict, reason) = judge.decide(layout.rubric, layout.request, layout.a, layout.b, rng);
    Some(json!({"verdict": verdict.as_str(), "reason": reason}).to_string())
}

/// An answer's quality score and the flaws that lowered it.
#[derive(Debug)]
pub(crate) struct Assessment {
    pub(crate) score: f64,
    pub(crate) flaws: Vec<&'static str>,
}

const REFUSAL_MARKERS: &[&str] = &[
    "i can't help with",
    "i cannot help with that",
    "i can't assist",
    "i cannot assist",
    "i'm unable to",
    "i am unable to",
    "i won't be able to help",
];

const PIRATE_MARKERS: &[&str] = &["ahoy", "arr", "aye", "ho", "matey", "ye", "yer", "yo"];

/// Scores one answer (0 is flawless) for [`judge_verdict`].
pub(crate) fn assess(answer: &str, request: &str) -> Assessment {
    let mut assessment = Assessment {
        score: 0.0,
        flaws: Vec::new(),
    };
    let mut flaw = |name: &'static str, cost: f64| {
        assessment.score -= cost;
        assessment.flaws.push(name);
    };
    let text = answer.trim();
    let tokens = words(text);
    if tokens.is_empty() {
        flaw("is empty", 5.0);
        return assessment;
    }
    let lower = text.to_lowercase().replace('’', "'");
    if REFUSAL_MARKERS.iter().any(|marker| lower.contains(marker)) {
        flaw("refuses", 3.0);
    }
    let pirate = tokens
        .iter()
        .filter(|word| PIRATE_MARKERS.contains(&word.as_str()))
        .count();
    if pirate >= 2 {
        flaw("talks like a pirate", 2.0);
    }
    let request_words: HashSet<String> = words(request)
        .iter()
        .map(|word| meaning_class(word).to_owned())
        .collect();
    let content: Vec<&String> = tokens
        .iter()
        .filter(|word| !is_stop_word(word) && !PIRATE_MARKERS.contains(&word.as_str()))
        .collect();
    let known = content
        .iter()
        .filter(|word| {
            let class = meaning_class(word);
            support_classes().contains(class) || request_words.contains(class)
        })
        .count();
    if !content.is_empty() && known * 2 < content.len() {
        flaw("is off topic", 3.0);
    }
    if states_wrong_facts(text) {
        flaw("states wrong facts", 3.0);
    }
    if text.starts_with('{') && serde_json::from_str::<Value>(text).is_err() {
        flaw("is broken JSON", 1.5);
    } else if !text.ends_with(['.', '!', '?', '"', '\'', ')', ']', '}', '`']) {
        flaw("is cut off", 1.5);
    }
    assessment
}
