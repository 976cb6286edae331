//! `grove cloud status`: how to show the answer of a running gateway about its cloud link, asked
//! over MQTT on [`STATUS_TOPIC`] (answered on `…/accepted`) by the binary's one-request client.

use serde_json::Value;

#[cfg(doc)]
use crate::STATUS_TOPIC;

/// The status document for people: one line per [`lines`] entry.
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    for (label, text) in lines(doc) {
        match label.is_empty() {
            true => out.push_str(&text),
            false => out.push_str(&format!("{:<15}{text}", format!("{label}:"))),
        }
        out.push('\n');
    }
    out
}

/// The status document as labelled lines (the web console's cloud page shows the same); an
/// empty label: a note.
pub fn lines(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut line = |label: &str, text: String| out.push((label.to_owned(), text));
    let state = doc["state"].as_str().unwrap_or("unknown");
    line("link", state.to_owned());
    if state == "disabled" {
        line(
            "",
            "(no [cloud] section in the gateway's configuration)".into(),
        );
        return out;
    }
    line(
        "queue depth",
        format!(
            "{} messages ({} bytes), {} in flight",
            doc["queue_depth"], doc["queue_bytes"], doc["in_flight"]
        ),
    );
    let age = match doc["oldest_age_ms"].as_u64() {
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
        None => "-".to_owned(),
    };
    line("oldest", age);
    line("connects", doc["connects"].to_string());
    line("acknowledged", doc["acked"].to_string());
    line(
        "last error",
        doc["last_error"].as_str().unwrap_or("-").to_owned(),
    );
    if let Some(n) = doc["dead_letters"].as_u64().filter(|n| *n > 0) {
        let last = &doc["last_dead_letter"];
        line(
            "dead letters",
            format!(
                "{n} over the cloud's limits (last: {} on {})",
                last["reason"].as_str().unwrap_or("-"),
                last["topic"].as_str().unwrap_or("-")
            ),
        );
    }
    if let Some(ms) = doc["retry_in_ms"].as_u64() {
        line(
            "retrying",
            format!("{:.1} s after the last failure", ms as f64 / 1000.0),
        );
    }
    // The lines of the components riding on the link (the deployments' jobs), as they wrote them.
    for lines in doc["riders"]
        .as_object()
        .into_iter()
        .flat_map(|r| r.values())
    {
        for l in lines.as_array().into_iter().flatten() {
            if let (Some(label), Some(text)) = (l[0].as_str(), l[1].as_str()) {
                line(label, text.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_renders_each_field() {
        let text = render(&json!({
            "state": "disconnected", "queue_depth": 3, "queue_bytes": 40, "in_flight": 0,
            "oldest_age_ms": 1500, "connects": 2, "acked": 7, "last_error": "connection refused",
            "retry_in_ms": 2500, "dead_letters": 2,
            "last_dead_letter": {"topic": "big/1", "reason": "payload_too_large"},
            "riders": {"jobs": [["deployment", "committed d1"], ["job", "j1 SUCCEEDED"]]}
        }));
        for line in [
            "link:          disconnected",
            "queue depth:   3 messages (40 bytes), 0 in flight",
            "oldest:        1.5 s",
            "last error:    connection refused",
            "retrying:      2.5 s after the last failure",
            "dead letters:  2 over the cloud's limits (last: payload_too_large on big/1)",
            "deployment:    committed d1",
            "job:           j1 SUCCEEDED",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(render(&json!({"state": "disabled"})).contains("no [cloud] section"));
    }
}
