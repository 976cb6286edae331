//! Substitution templates (`${...}` in action fields), through the public API: one helper, one case
//! per line, evaluated against the original message as AWS does.

use grove_rules::{Context, Message, Template};

const PAYLOAD: &str =
    r#"{"temp": 31.5, "id": "dev-7", "tags": ["a", "b"], "loc": {"x": 1}, "n": null}"#;

/// Renders `template` for a message on `sensors/d1/t` and compares with `expected`.
fn check(template: &str, expected: &str) {
    let t = Template::parse(template).unwrap_or_else(|e| panic!("{template}\n{e}"));
    let msg = Message::new("sensors/d1/t", "client-9", PAYLOAD.as_bytes().to_vec());
    let uuids = || "uuid-1".to_string();
    let ctx = Context::new(1_700_000_000_000, &uuids);
    assert_eq!(t.render(&msg, &ctx), expected, "{template}");
}

#[test]
fn renders() {
    let cases = [
        ("${topic()}/republish", "sensors/d1/t/republish"),
        ("alerts/${topic(2)}/temp", "alerts/d1/temp"),
        ("static/topic", "static/topic"),
        ("", ""),
        ("${id}", "dev-7"),
        ("${temp + 1}", "32.5"),
        ("${temp > 30}", "true"),
        ("${tags}", r#"["a","b"]"#),
        ("${loc}", r#"{"x":1}"#),
        ("${loc.x}", "1"),
        ("${missing}/x", "/x"),
        ("${n}", ""),
        (
            "${clientid()}-${timestamp()}-${newuuid()}",
            "client-9-1700000000000-uuid-1",
        ),
        (
            "${replace(topic(), '/', '-') + '-' + timestamp()}",
            "sensors-d1-t-1700000000000",
        ),
        ("${ {'a': 1}.a }", "1"),
        ("${'}'}", "}"),
        ("$notatemplate $ {x}", "$notatemplate $ {x}"),
        ("${upper(get(tags, 1))}${lower('X')}", "Bx"),
        ("${parse_time('yyyy', timestamp(), 'UTC')}", "2023"),
    ];
    for (template, expected) in cases {
        check(template, expected);
    }
}

#[test]
fn static_templates_are_recognised() {
    assert!(Template::parse("a/b").expect("parses").is_static());
    assert!(!Template::parse("a/${topic(1)}")
        .expect("parses")
        .is_static());
}

/// (template, column, message) for templates that do not compile.
#[test]
fn errors() {
    let cases = [
        ("a/${", 5, "expected an expression, found end of input"),
        (
            "a/${topic(1)",
            13,
            "expected '}' to close ${...}, found end of input",
        ),
        ("${foo(1)}", 3, "unknown function foo()"),
        (
            "${aws_lambda('f', 1)}",
            3,
            "aws_lambda() needs the AWS cloud and is not available on a Grove gateway",
        ),
        ("x/${a b}", 7, "expected '}' to close ${...}, found 'b'"),
        (
            "${@a}",
            3,
            "@a: SET variables are not available in Grove substitution templates",
        ),
    ];
    for (template, column, message) in cases {
        let err = Template::parse(template).expect_err(template);
        assert_eq!(
            (err.column, err.message()),
            (column, message.to_string()),
            "{template}"
        );
    }
}
