//! The values that come in by more than one way (the configuration file, the admin API, the
//! command line, Alertmanager's webhook), each checked by one function here, so the ways in
//! cannot disagree about what is valid: route names, shares, and the bound on free text kept
//! from a request (rollback and alert reasons).

/// Longest route name, in bytes. A route name is a metric label and a URL path segment.
pub const MAX_ROUTE_NAME_BYTES: usize = 128;

/// Longest free text kept from a request (a rollback's reason, an alert's name and summary),
/// in bytes. Longer text is cut to this (at a character boundary, marked with `…`) in what is
/// stored, logged and answered: a rollback is the safe direction, so it is never refused for
/// the length of its prose.
pub const MAX_REASON_BYTES: usize = 1024;

/// Why `name` cannot be a route's name, if it cannot: it must be non-empty, at most
/// [`MAX_ROUTE_NAME_BYTES`], and use only ASCII letters, digits, `_`, `.` and `-`.
pub fn route_name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_ROUTE_NAME_BYTES {
        return Some(format!(
            "route name of {} bytes is longer than {MAX_ROUTE_NAME_BYTES}",
            name.len()
        ));
    }
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    (!valid).then(|| {
        format!(
            "route name {name:?} must be non-empty and use only letters, digits, '_', '.' \
             and '-' (it becomes a metric label)"
        )
    })
}

/// Why `share` cannot be a route's share, if it cannot: a finite number in [0, 1] (NaN and
/// infinities are refused).
pub fn share_problem(share: f64) -> Option<String> {
    (!(0.0..=1.0).contains(&share)).then(|| format!("must be between 0 and 1, got {share}"))
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` at the end when it was
/// cut (the mark is counted in the `max`).
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names() {
        let check = |name: &str, ok: bool| {
            assert_eq!(route_name_problem(name).is_none(), ok, "{name:?}");
        };
        check("support-bot_2.x", true);
        check(&"a".repeat(MAX_ROUTE_NAME_BYTES), true);
        check("", false);
        check("support bot", false);
        check("a/b", false);
        check("é", false);
        check(&"a".repeat(MAX_ROUTE_NAME_BYTES + 1), false);
        assert_eq!(
            route_name_problem("").as_deref(),
            Some(
                "route name \"\" must be non-empty and use only letters, digits, '_', '.' and \
                 '-' (it becomes a metric label)"
            )
        );
        // A long name is not echoed whole.
        let long = route_name_problem(&"x".repeat(300_000)).unwrap();
        assert_eq!(long, "route name of 300000 bytes is longer than 128");
    }

    #[test]
    fn shares() {
        for ok in [0.0, 0.25, 1.0, -0.0] {
            assert_eq!(share_problem(ok), None, "{ok}");
        }
        for (bad, said) in [
            (f64::NAN, "must be between 0 and 1, got NaN"),
            (f64::INFINITY, "must be between 0 and 1, got inf"),
            (f64::NEG_INFINITY, "must be between 0 and 1, got -inf"),
            (-1.0, "must be between 0 and 1, got -1"),
            (2.0, "must be between 0 and 1, got 2"),
            (1.000_001, "must be between 0 and 1, got 1.000001"),
        ] {
            assert_eq!(share_problem(bad).as_deref(), Some(said), "{bad}");
        }
    }

    #[test]
    fn cut_text() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("exactly10!", 10), "exactly10!");
        assert_eq!(cut("0123456789ab", 10), "0123456…");
        // Never in the middle of a character: 'é' is 2 bytes.
        let accents = cut(&"é".repeat(10), 10);
        assert_eq!(accents, "ééé…");
        assert!(accents.len() <= 10);
        let big = cut(&"y".repeat(300_000), MAX_REASON_BYTES);
        assert_eq!(big.len(), MAX_REASON_BYTES);
        assert!(big.ends_with('…'));
    }
}
