//! Tests of `score`: each scorer on hand-written pairs of answers, the combined score and its
//! hard failures, and properties over generated text.

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
    "your", "can", "be", "this", "we", "will", "order", "account", "password", "email", "support",
    "team", "refund", "payment", "invoice", "device", "settings", "link", "days", "message",
    "click", "open", "send", "check", "help", "new", "page", "number", "time", "plan", "month",
    "card", "bank", "request", "return", "delivery", "address", "question", "answer", "issue",
    "update", "security", "service", "product", "price", "customer",
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
    // Every phrase, in any case, is found on its own; one cut short is not.
    for phrase in REFUSAL_PHRASES {
        assert!(is_refusal(phrase), "{phrase:?}");
        assert!(is_refusal(&phrase.to_uppercase()), "{phrase:?}");
        assert!(!is_refusal(&phrase[..phrase.len() - 1]), "{phrase:?}");
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
        semantic: 0.0,
        judge: 0.0,
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
    let (reference, subject) = (obs(PASSWORD), obs(BILLING));
    let score = score(&reference, &subject, &Weights::default()).unwrap();
    let pairs = score.by_scorer();
    let names: Vec<&str> = pairs.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, SCORERS);
    let values: Vec<f64> = pairs.iter().map(|(_, value)| *value).collect();
    assert_eq!(
        values,
        [
            score.lexical,
            score.structure,
            score.length,
            score.refusal,
            score.finish,
            score.combined
        ]
    );
    let with = score
        .clone()
        .with_remote(Some(0.9), Some(0.0), None, &Weights::default());
    let names: Vec<&str> = with.by_scorer().iter().map(|(name, _)| *name).collect();
    assert_eq!(&names[6..], ["semantic", "judge"]);
}

#[test]
fn remote_scorers_join_the_mean_with_their_weight() {
    let (reference, subject) = (obs(PASSWORD), obs(PASSWORD));
    let local = score(&reference, &subject, &Weights::default()).unwrap();
    let weights = Weights {
        semantic: 1.0,
        judge: 1.0,
        ..Weights::default()
    };
    // Lexical 1 and length 1 (weights 0.4, 0.1), semantic 0.5, judge 0: (0.5 + 0.5) / 2.5.
    let both = local
        .clone()
        .with_remote(Some(0.5), Some(0.0), None, &weights);
    assert!((both.combined - 0.4).abs() < 1e-9, "{both:?}");
    // A scorer that gave nothing for this sample is left out of the mean.
    let only_semantic = local.clone().with_remote(Some(0.5), None, None, &weights);
    assert!((only_semantic.combined - 1.0 / 1.5).abs() < 1e-9);
    // A failed check is a hard failure with its name.
    let failed = local.with_remote(Some(1.0), Some(1.0), Some("order-number"), &weights);
    assert_eq!(failed.combined, 0.0);
    assert_eq!(failed.hard_failure, Some(HardFailure::Check));
    assert_eq!(failed.failed_check.as_deref(), Some("order-number"));
    let tracked: Vec<&str> = failed.tracked().iter().map(|(n, _)| *n).collect();
    assert_eq!(tracked, ["lexical", "length", "semantic", "judge"]);
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
