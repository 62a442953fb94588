//! Alertmanager's webhook payload (version 4) read into the firing alerts that concern routes:
//! pure, so every refusal is testable without a server. A payload that is not one is refused
//! whole; within one, each alert stands alone: the valid ones are kept, each invalid one is
//! reported with its index and why, so one malformed alert never drops the others.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::control::Alert;
use crate::domain::{cut, route_name_problem, MAX_REASON_BYTES};

/// The label that names the route an alert is about.
const ROUTE_LABEL: &str = "understudy_route";
/// Longest problem said about one invalid alert, in bytes (serde's messages quote values).
const MAX_PROBLEM_BYTES: usize = 256;

#[derive(Deserialize)]
struct Payload {
    version: String,
    /// Each alert read on its own, so one malformed alert does not refuse the batch.
    alerts: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PayloadAlert {
    status: String,
    #[serde(default)]
    labels: serde_json::Map<String, Value>,
    #[serde(default)]
    annotations: serde_json::Map<String, Value>,
    starts_at: String,
}

/// What a payload asks for: the firing alerts labelled with a route, and the alerts labelled
/// with a route that could not be read.
#[derive(Debug, Default)]
pub struct Batch {
    pub alerts: Vec<Alert>,
    pub invalid: Vec<InvalidAlert>,
}

/// An alert of the batch that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvalidAlert {
    /// Its position in the payload's `alerts`, from 0.
    pub index: usize,
    /// Its route label, when that is a valid route name.
    pub route: Option<String>,
    pub error: String,
}

impl std::fmt::Display for InvalidAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "alert {}: {}", self.index, self.error)
    }
}

/// The batch of a payload, or why the payload itself is refused (a 400). Resolved alerts and
/// alerts without the route label are skipped, whatever else they hold. A reason (alert name
/// and summary) is cut to [`MAX_REASON_BYTES`].
pub fn firing(body: Value) -> Result<Batch, String> {
    let payload: Payload = serde_json::from_value(body)
        .map_err(|e| format!("not an Alertmanager webhook payload: {e}"))?;
    if payload.version != "4" {
        return Err(format!(
            "unsupported Alertmanager payload version {:?} (4 expected)",
            cut(&payload.version, 16)
        ));
    }
    let mut batch = Batch::default();
    for (index, value) in payload.alerts.into_iter().enumerate() {
        let Some(label) = value.get("labels").and_then(|l| l.get(ROUTE_LABEL)) else {
            continue;
        };
        let route = label
            .as_str()
            .filter(|r| route_name_problem(r).is_none())
            .map(str::to_owned);
        match alert(value, route.as_deref()) {
            Ok(Some(a)) => batch.alerts.push(a),
            Ok(None) => {}
            Err(error) => batch.invalid.push(InvalidAlert {
                index,
                route,
                error: cut(&error, MAX_PROBLEM_BYTES),
            }),
        }
    }
    Ok(batch)
}

/// One alert labelled with a route: the alert if it is firing, None if it is not, or why it
/// cannot be read. `route` is its label when that is a valid route name.
fn alert(value: Value, route: Option<&str>) -> Result<Option<Alert>, String> {
    let a: PayloadAlert =
        serde_json::from_value(value).map_err(|e| format!("not an Alertmanager alert: {e}"))?;
    if a.status != "firing" {
        return Ok(None);
    }
    let route = match (route, a.labels.get(ROUTE_LABEL)) {
        (Some(route), _) => route,
        (None, Some(Value::String(name))) => {
            return Err(format!(
                "label {ROUTE_LABEL}: {}",
                route_name_problem(name).unwrap_or_default()
            ))
        }
        (None, _) => return Err(format!("label {ROUTE_LABEL} is not a string")),
    };
    let starts = humantime::parse_rfc3339_weak(&a.starts_at).map_err(|_| {
        format!(
            "startsAt {:?} is not an RFC 3339 time",
            cut(&a.starts_at, 64)
        )
    })?;
    let starts_at_ms = starts
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let text = |map: &serde_json::Map<String, Value>, key| {
        map.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let name = Some(text(&a.labels, "alertname"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "alert".into());
    let summary = text(&a.annotations, "summary");
    let reason = if summary.is_empty() {
        name
    } else {
        format!("{name}: {summary}")
    };
    Ok(Some(Alert {
        route: route.to_owned(),
        reason: cut(&reason, MAX_REASON_BYTES),
        starts_at_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alert(status: &str, labels: Value, summary: Option<&str>, starts: &str) -> Value {
        json!({
            "status": status,
            "labels": labels,
            "annotations": summary.map_or(json!({}), |s| json!({"summary": s})),
            "startsAt": starts,
        })
    }

    #[test]
    fn firing_route_alerts_only() {
        let body = json!({"version": "4", "alerts": [
            alert("firing", json!({"alertname": "LowQuality", "understudy_route": "bot"}), Some("quality 0.41"), "2026-11-30T10:00:00.5Z"),
            alert("resolved", json!({"alertname": "LowQuality", "understudy_route": "bot"}), None, "2026-11-30T09:00:00Z"),
            alert("firing", json!({"alertname": "DiskFull"}), None, "2026-11-30T09:00:00Z"),
            alert("firing", json!({"understudy_route": "other"}), None, "1970-01-01T00:00:01Z"),
            // Not about a route: skipped however malformed.
            json!({"labels": {"alertname": "Other"}, "status": 7}),
        ]});
        let batch = firing(body).unwrap();
        let got: Vec<(&str, &str, i64)> = batch
            .alerts
            .iter()
            .map(|a| (a.route.as_str(), a.reason.as_str(), a.starts_at_ms))
            .collect();
        assert_eq!(
            got,
            [
                ("bot", "LowQuality: quality 0.41", 1_796_032_800_500),
                ("other", "alert", 1_000),
            ]
        );
        assert_eq!(batch.invalid, []);
    }

    #[test]
    fn payload_refusals_say_why() {
        let cases = [
            (
                json!({"alerts": []}),
                "not an Alertmanager webhook payload: missing field `version`",
            ),
            (
                json!({"version": "3", "alerts": []}),
                "unsupported Alertmanager payload version \"3\" (4 expected)",
            ),
            (
                json!({"version": "4", "alerts": "nope"}),
                "not an Alertmanager webhook payload: invalid type: string \"nope\", expected a sequence",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(firing(body).err().as_deref(), Some(expected));
        }
    }

    #[test]
    fn invalid_alerts_are_reported_and_the_valid_ones_kept() {
        let ok = |route: &str| {
            alert(
                "firing",
                json!({"understudy_route": route}),
                None,
                "2026-01-01T00:00:00Z",
            )
        };
        let long = "r".repeat(300);
        let body = json!({"version": "4", "alerts": [
            alert("firing", json!({"understudy_route": "bot"}), None, "yesterday"),
            ok("bot"),
            json!({"labels": {"understudy_route": "bot"}, "status": "firing"}),
            alert("firing", json!({"understudy_route": ""}), None, "2026-01-01T00:00:00Z"),
            alert("firing", json!({"understudy_route": long}), None, "2026-01-01T00:00:00Z"),
            alert("firing", json!({"understudy_route": 7}), None, "2026-01-01T00:00:00Z"),
            ok("other"),
        ]});
        let batch = firing(body).unwrap();
        let routes: Vec<&str> = batch.alerts.iter().map(|a| a.route.as_str()).collect();
        assert_eq!(routes, ["bot", "other"]);
        let said: Vec<(usize, Option<&str>, &str)> = batch
            .invalid
            .iter()
            .map(|i| (i.index, i.route.as_deref(), i.error.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                (0, Some("bot"), "startsAt \"yesterday\" is not an RFC 3339 time"),
                (2, Some("bot"), "not an Alertmanager alert: missing field `startsAt`"),
                (3, None, "label understudy_route: route name \"\" must be non-empty and use only letters, digits, '_', '.' and '-' (it becomes a metric label)"),
                (4, None, "label understudy_route: route name of 300 bytes is longer than 128"),
                (5, None, "label understudy_route is not a string"),
            ]
        );
    }

    #[test]
    fn long_reasons_are_cut() {
        let summary = "s".repeat(300_000);
        let body = json!({"version": "4", "alerts": [
            alert("firing", json!({"alertname": "LowQuality", "understudy_route": "bot"}), Some(&summary), "2026-01-01T00:00:00Z"),
        ]});
        let batch = firing(body).unwrap();
        let reason = &batch.alerts[0].reason;
        assert_eq!(reason.len(), MAX_REASON_BYTES);
        assert!(reason.starts_with("LowQuality: sss") && reason.ends_with('…'));
    }
}
