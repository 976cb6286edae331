//! Fuzzes the rule compiler and, when a rule compiles, its evaluation: any input must give a rule or a
//! `CompileError`, never a panic, a stack overflow or a hang. The same bytes are also tried as a
//! substitution template. Messages are fixed so that what varies is the SQL.
#![no_main]

use grove_rules::{Context, Message, Rule, Template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let uuids = || "00000000-0000-4000-8000-000000000000".to_string();
    let ctx = Context::new(1_700_000_000_000, &uuids);
    let msg = Message::new(
        "sensors/d1/t",
        "dev-1",
        br#"{"temp": 31.5, "s": "x", "arr": [1, "2", {"k": 3}], "n": null, "o": {"a": {"b": 1}}}"#
            .to_vec(),
    );
    if let Ok(rule) = Rule::compile(text) {
        match rule.window() {
            Some(mut window) => {
                window.on_message(&msg, &ctx);
                window.poll(&Context::new(1_800_000_000_000, &uuids));
            }
            None => {
                let _ = rule.evaluate(&msg, &ctx);
                let _ = rule.evaluate(&Message::new("a", "b", b"\xff raw".to_vec()), &ctx);
            }
        }
    }
    if let Ok(template) = Template::parse(text) {
        template.render(&msg, &ctx);
    }
});
