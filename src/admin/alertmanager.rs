//! Alertmanager's webhook payload (version 4) read into the firing alerts that concern routes:
//! pure, so every refusal is testable without a server.

use serde::Deserialize;
use serde_json::Value;

use crate::control::Alert;

/// The label that names the route an alert is about.
const ROUTE_LABEL: &str = "understudy_route";

#[derive(Deserialize)]
struct Payload {
    version: String,
    alerts: Vec<PayloadAlert>,
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

/// The firing alerts labelled with a route, or why the payload is refused (a 400). Resolved
/// alerts and alerts without the label are skipped.
pub fn firing(body: Value) -> Result<Vec<Alert>, String> {
    let payload: Payload = serde_json::from_value(body)
        .map_err(|e| format!("not an Alertmanager webhook payload: {e}"))?;
    if payload.version != "4" {
        return Err(format!(
            "unsupported Alertmanager payload version {:?} (4 expected)",
            payload.version
        ));
    }
    let mut alerts = Vec::new();
    for a in payload.alerts {
        let Some(route) = a.labels.get(ROUTE_LABEL).and_then(Value::as_str) else {
            continue;
        };
        if a.status != "firing" {
            continue;
        }
        let starts = humantime::parse_rfc3339_weak(&a.starts_at)
            .map_err(|_| format!("alert startsAt {:?} is not an RFC 3339 time", a.starts_at))?;
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
        alerts.push(Alert {
            route: route.to_string(),
            reason,
            starts_at_ms,
        });
    }
    Ok(alerts)
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
        ]});
        let alerts = firing(body).unwrap();
        let got: Vec<(&str, &str, i64)> = alerts
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
    }

    #[test]
    fn refusals_say_why() {
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
                json!({"version": "4", "alerts": [alert("firing", json!({"understudy_route": "bot"}), None, "yesterday")]}),
                "alert startsAt \"yesterday\" is not an RFC 3339 time",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(firing(body).err().as_deref(), Some(expected));
        }
    }
}
