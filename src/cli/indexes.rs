//! `understudy status` on embedding routes: the index serving and, for each index that stopped
//! serving, whether it is still a rollback target and for how long.

use serde_json::Value;

/// Embedding routes: the index serving, and for each index that stopped serving whether it is
/// still a rollback target and for how long (the `index_retention` countdown).
pub fn index_notes(routes: &[Value]) -> String {
    let mut out = String::new();
    for r in routes {
        let name = r["name"].as_str().unwrap_or("");
        if let Some(index) = r["index"].as_str() {
            out.push_str(&format!("\n{name}: serving index {index}"));
        }
        for i in r["indexes"].as_array().into_iter().flatten() {
            let index = i["name"].as_str().unwrap_or("");
            let releases: Vec<String> = i["releases"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| format!("#{v}"))
                .collect();
            let releases = releases.join(", ");
            let until = i["retained_until"].as_str().unwrap_or("?");
            let line = match i["state"].as_str().unwrap_or("") {
                "retained" => {
                    let left = std::time::Duration::from_secs(
                        i["retention_left_secs"].as_u64().unwrap_or(0),
                    );
                    format!(
                        "index {index} ({releases}) retained: rollback target for {} more (until {until})",
                        humantime::format_duration(left)
                    )
                }
                "expired" => format!(
                    "index {index} ({releases}) retention ended at {until}: no longer a rollback target"
                ),
                "dropped" => format!(
                    "index {index} ({releases}) dropped at {}: no longer a rollback target",
                    i["dropped_at"].as_str().unwrap_or("?")
                ),
                _ => continue,
            };
            out.push_str(&format!("\n{name}: {line}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embedding_routes_show_their_indexes_and_the_retention_countdown() {
        let route = json!({"name": "docs", "index": "docs-large", "indexes": [
            {"name": "docs-old", "state": "dropped", "releases": [1], "dropped_at": "2026-11-01T00:00:00.000Z"},
            {"name": "docs-small", "state": "retained", "releases": [2, 3], "retention_left_secs": 5400,
             "retained_until": "2026-11-30T12:00:00.000Z"},
            {"name": "docs-mid", "state": "expired", "releases": [4], "retained_until": "2026-11-29T00:00:00.000Z"},
            {"name": "docs-large", "state": "serving", "releases": [5]},
        ]});
        let notes = index_notes(&[route]);
        let lines: Vec<&str> = notes.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            [
                "docs: serving index docs-large",
                "docs: index docs-old (#1) dropped at 2026-11-01T00:00:00.000Z: no longer a rollback target",
                "docs: index docs-small (#2, #3) retained: rollback target for 1h 30m more (until 2026-11-30T12:00:00.000Z)",
                "docs: index docs-mid (#4) retention ended at 2026-11-29T00:00:00.000Z: no longer a rollback target",
            ]
        );
        assert_eq!(index_notes(&[json!({"name": "bot"})]), "");
    }
}
