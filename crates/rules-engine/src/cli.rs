//! `grove rules test`: one rule evaluated on one message, without a gateway (a window is fed the
//! message and then closed, to show the row it would emit). The binary parses the arguments and
//! prints what this returns.

/// Evaluates the rule `sql` on one message: `Ok`, what to print on standard output (the outputs,
/// one per line, or why there is none); `Err`, why the rule cannot be tested (it does not compile,
/// or its evaluation failed).
pub fn test(sql: &str, topic: &str, payload: String, client_id: &str) -> Result<String, String> {
    let rule = compile(sql)?;
    let message = grove_rules::Message::new(topic, client_id, payload.into_bytes());
    let uuids = || uuid::Uuid::new_v4().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ctx = grove_rules::Context::new(now, &uuids);
    if !grove_rules::topic_matches(rule.topic_filter(), topic) {
        return Ok(format!(
            "no output: the topic {topic} does not match FROM '{}'\n",
            rule.topic_filter()
        ));
    }
    let outputs = match rule.window() {
        // One message through a window, then the window closed: the row it would emit.
        Some(mut w) => {
            let mut rows = w.on_message(&message, &ctx);
            let later = grove_rules::Context::new(now + 366 * 86_400_000, &uuids);
            rows.extend(w.poll(&later));
            rows
        }
        None => match rule.evaluate(&message, &ctx) {
            Ok(o) => o.into_iter().collect(),
            Err(e) => return Err(format!("evaluation failed: {e}")),
        },
    };
    let mut out = String::new();
    if outputs.is_empty() {
        out.push_str("no output: the WHERE clause did not let the message through\n");
    }
    for o in outputs {
        out.push_str(&String::from_utf8_lossy(&o.to_bytes()));
        out.push('\n');
    }
    Ok(out)
}

/// Compiles `sql`; `Err`: why it does not compile, with the line and column and a caret under
/// the place.
pub fn compile(sql: &str) -> Result<grove_rules::Rule, String> {
    grove_rules::Rule::compile(sql).map_err(|e| format!("the rule does not compile:\n{e}"))
}
