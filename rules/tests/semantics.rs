//! Table-driven semantic tests of the dialect, through the public API only.
//!
//! Every case goes through one helper, [`check`]: compile the SQL, evaluate it on one message, compare
//! the output with the expected JSON (or `-` for "no output"). Expression cases are written as
//! `(expression, payload, expected)` and run as `SELECT VALUE <expression> FROM 'a/b'`, so an Undefined
//! result shows up as "no output". Expected values follow AWS's documentation (the function and operator
//! pages, with their own examples reused where they exist) and the number model in the crate docs.

use std::cell::Cell;

use grove_rules::{Context, Message, Output, Rule};
use serde_json::Value;

/// The fixed clock of every case: 2023-11-14T22:13:20Z.
const NOW: i64 = 1_700_000_000_000;

/// A payload with one of everything.
const P: &str = r#"{"a":{"b":{"c":5}},"arr":[10,20,{"x":"y"}],"s":"hello","n":null,"t":true,"d":2.5,"i":7,"neg":-3,"num":"12.5","obj":{"k":"v"}}"#;

/// Compiles `sql`, evaluates it on a message published on `topic` by client `dev-1`, and compares the
/// output with `expected`: JSON text, `-` for no output, or `bin:<text>` for a raw (non-JSON) output.
fn check(sql: &str, topic: &str, payload: &str, expected: &str) {
    let rule = Rule::compile(sql).unwrap_or_else(|e| panic!("{sql}\n{e}"));
    let msg = Message::new(topic, "dev-1", payload.as_bytes().to_vec());
    let counter = Cell::new(0);
    let uuids = || {
        counter.set(counter.get() + 1);
        format!("uuid-{}", counter.get())
    };
    let ctx = Context::new(NOW, &uuids);
    let got = rule.evaluate(&msg, &ctx).expect("not windowed");
    let want = match expected {
        "-" => None,
        bin if bin.starts_with("bin:") => Some(Output::Binary(
            bin.trim_start_matches("bin:").as_bytes().to_vec(),
        )),
        json => Some(Output::Json(
            serde_json::from_str::<Value>(json)
                .unwrap_or_else(|e| panic!("bad expected {json}: {e}")),
        )),
    };
    assert_eq!(got, want, "\n  sql: {sql}\n  payload: {payload}");
}

fn check_exprs(cases: &[(&str, &str, &str)]) {
    for (expr, payload, expected) in cases {
        check(
            &format!("SELECT VALUE {expr} FROM 'a/b'"),
            "a/b",
            payload,
            expected,
        );
    }
}

#[test]
fn arithmetic_operators() {
    check_exprs(&[
        ("1 + 2", "{}", "3"),
        ("1 + 2.5", "{}", "3.5"),
        ("1.5 + 1.5", "{}", "3.0"),
        ("i + d", P, "9.5"),
        ("9223372036854775807 + 1", "{}", "9.223372036854776e18"),
        ("true + 1", "{}", "-"),
        ("null + 1", "{}", "-"),
        ("missing + 1", "{}", "-"),
        ("[1] + [2]", "{}", "-"),
        ("5 - 2", "{}", "3"),
        ("5 - 2.5", "{}", "2.5"),
        ("'5' - 2", "{}", "3.0"),
        ("'5' - '2'", "{}", "3.0"),
        ("num - 0.5", P, "12.0"),
        ("'x' - 1", "{}", "-"),
        ("true - 1", "{}", "-"),
        ("null - 1", "{}", "-"),
        ("3 * 4", "{}", "12"),
        ("3 * 0.5", "{}", "1.5"),
        ("'3' * 2", "{}", "6.0"),
        ("3 * 'x'", "{}", "-"),
        ("4611686018427387904 * 4", "{}", "1.8446744073709552e19"),
        ("7 / 2", "{}", "3"),
        ("-7 / 2", "{}", "-3"),
        ("7.0 / 2", "{}", "3.5"),
        ("'7' / 2", "{}", "3.5"),
        ("7 / 0", "{}", "-"),
        ("7.0 / 0", "{}", "-"),
        ("7 % 3", "{}", "1"),
        ("-7 % 3", "{}", "-1"),
        ("7.5 % 2", "{}", "1.5"),
        ("'7' % 3", "{}", "1.0"),
        ("7 % 0", "{}", "-"),
        ("-(3)", "{}", "-3"),
        ("-d", P, "-2.5"),
        ("-neg", P, "3"),
        ("-'3'", "{}", "-3.0"),
        ("-'x'", "{}", "-"),
        ("-true", "{}", "-"),
        ("-missing", "{}", "-"),
        ("1 + 2 * 3", "{}", "7"),
        ("(1 + 2) * 3", "{}", "9"),
        ("10 - 4 - 3", "{}", "3"),
        ("5--3", "{}", "8"),
        ("2 * 3 % 4", "{}", "2"),
        ("0.1 + 0.2", "{}", "0.30000000000000004"),
    ]);
}

#[test]
fn string_concatenation_with_plus() {
    check_exprs(&[
        ("'a' + 'b'", "{}", "\"ab\""),
        ("'a' + 1", "{}", "\"a1\""),
        ("1 + 'a'", "{}", "\"1a\""),
        ("'1' + 2", "{}", "\"12\""),
        ("'a' + 1.5", "{}", "\"a1.5\""),
        ("'a' + true", "{}", "\"atrue\""),
        ("'a' + [1,2]", "{}", "\"a[1,2]\""),
        ("'a' + {'k': 1}", "{}", r#""a{\"k\":1}""#),
        ("'a' + null", "{}", "-"),
        ("'a' + missing", "{}", "-"),
        ("s + '!'", P, "\"hello!\""),
        ("topic() + '/x'", "{}", "\"a/b/x\""),
    ]);
}

#[test]
fn comparison_operators() {
    check_exprs(&[
        ("1 < 2", "{}", "true"),
        ("2 <= 2", "{}", "true"),
        ("3 > 2.5", "{}", "true"),
        ("2.5 >= 3", "{}", "false"),
        ("'10' > 9", "{}", "true"),
        ("'10' > '9'", "{}", "true"),
        ("num > 12", P, "true"),
        ("'abc' > 'abd'", "{}", "-"),
        ("null < 1", "{}", "-"),
        ("true > false", "{}", "-"),
        ("missing > 1", "{}", "-"),
        ("[1] < [2]", "{}", "-"),
        ("9007199254740993 > 9007199254740992", "{}", "true"),
        ("1 = 1", "{}", "true"),
        ("1 = 1.0", "{}", "true"),
        ("'1' = 1", "{}", "false"),
        ("'a' = 'a'", "{}", "true"),
        ("'a' = 'A'", "{}", "false"),
        ("true = true", "{}", "true"),
        ("true = 'true'", "{}", "false"),
        ("null = null", "{}", "true"),
        ("n = null", P, "true"),
        ("null = 0", "{}", "false"),
        ("missing = 1", "{}", "-"),
        ("1 = missing", "{}", "-"),
        ("missing = missing", "{}", "-"),
        ("[1,2] = [1,2]", "{}", "true"),
        ("[1,2] = [2,1]", "{}", "false"),
        ("[1,[2]] = [1.0,[2]]", "{}", "true"),
        ("{'a':1,'b':2} = {'b':2,'a':1}", "{}", "true"),
        ("{'a':1} = {'a':2}", "{}", "false"),
        ("{'a':1} = {'a':1,'b':2}", "{}", "false"),
        ("obj = {'k':'v'}", P, "true"),
        ("arr = [10,20,{'x':'y'}]", P, "true"),
        ("1 <> 2", "{}", "true"),
        ("1 <> 1", "{}", "false"),
        ("'a' <> 1", "{}", "true"),
        ("null <> null", "{}", "false"),
        ("missing <> 1", "{}", "-"),
        ("1 != 2", "{}", "true"),
        ("[1] <> [1]", "{}", "false"),
    ]);
}

#[test]
fn logical_operators() {
    check_exprs(&[
        ("true AND true", "{}", "true"),
        ("true AND false", "{}", "false"),
        ("'true' AND 'TRUE'", "{}", "true"),
        ("t AND 'True'", P, "true"),
        ("'yes' AND true", "{}", "-"),
        ("1 AND true", "{}", "-"),
        ("false AND missing", "{}", "-"),
        ("false OR true", "{}", "true"),
        ("false OR false", "{}", "false"),
        ("'false' OR 'false'", "{}", "false"),
        ("null OR true", "{}", "-"),
        ("NOT true", "{}", "false"),
        ("NOT 'false'", "{}", "true"),
        ("NOT 1", "{}", "-"),
        ("NOT missing", "{}", "-"),
        ("NOT NOT true", "{}", "true"),
        ("NOT 1 = 2", "{}", "true"),
        ("1 < 2 AND 2 < 3", "{}", "true"),
        ("true OR false AND false", "{}", "true"),
        ("not true or true", "{}", "true"),
    ]);
}

#[test]
fn paths_indexing_and_get() {
    check_exprs(&[
        ("a.b.c", P, "5"),
        ("a.b", P, r#"{"c":5}"#),
        ("a.x", P, "-"),
        ("a.b.c.d", P, "-"),
        ("s.x", P, "-"),
        ("n", P, "null"),
        ("n.x", P, "-"),
        ("missing", P, "-"),
        ("`s`", P, "\"hello\""),
        ("arr", P, r#"[10,20,{"x":"y"}]"#),
        ("arr[0]", P, "10"),
        ("arr[2].x", P, "\"y\""),
        ("arr[3]", P, "-"),
        ("arr[-1]", P, "-"),
        ("arr['1']", P, "20"),
        ("arr[1.7]", P, "20"),
        ("arr[missing]", P, "-"),
        ("obj['k']", P, "\"v\""),
        ("get(arr, 1)", P, "20"),
        ("get(a, 'b')", P, r#"{"c":5}"#),
        ("get(a.b, 'c')", P, "5"),
        ("get(get(arr, 2), 'x')", P, "\"y\""),
        ("get('abc', 1)", "{}", "\"b\""),
        ("get(['a', 'b', 'c'], 1)", "{}", "\"b\""),
        ("get({'a':'b'}, 'a')", "{}", "\"b\""),
        ("get(s, 10)", P, "-"),
        ("get(a, 1)", P, "-"),
        ("get(obj, 5)", P, "-"),
        ("get(5, 0)", "{}", "-"),
        ("{'k': i}.k", P, "7"),
        ("[1,2,3][1]", "{}", "2"),
        ("(a).b.c", P, "5"),
        ("a.b.c", "[1,2]", "-"),
        ("a", "not json", "-"),
        ("`deep key`", r#"{"deep key": 1}"#, "1"),
    ]);
}

#[test]
fn literals() {
    check_exprs(&[
        ("{'lat': 1, 'lon': missing}", "{}", r#"{"lat":1}"#),
        ("{\"k\": [1, {'x': s}]}", P, r#"{"k":[1,{"x":"hello"}]}"#),
        ("{}", "{}", "{}"),
        ("[]", "{}", "[]"),
        ("[1, 'a', null, true]", "{}", r#"[1,"a",null,true]"#),
        ("[i, missing]", P, "[7]"),
        ("NULL", "{}", "null"),
        ("TRUE", "{}", "true"),
        ("False", "{}", "false"),
        ("'it''s'", "{}", "\"it's\""),
        ("'it\\'s'", "{}", "\"it's\""),
        ("\"double\"", "{}", "\"double\""),
        ("1e3", "{}", "1000.0"),
        ("5E-1", "{}", "0.5"),
        ("-5", "{}", "-5"),
        ("-2.5", "{}", "-2.5"),
        ("123456789012", "{}", "123456789012"),
    ]);
}

#[test]
fn case_expressions() {
    check_exprs(&[
        (
            "CASE s WHEN 'hello' THEN 1 WHEN 'x' THEN 2 ELSE 3 END",
            P,
            "1",
        ),
        ("CASE s WHEN 'x' THEN 2 END", P, "-"),
        ("CASE s WHEN 'x' THEN 2 ELSE 'other' END", P, "\"other\""),
        ("CASE missing WHEN 1 THEN 1 ELSE 2 END", P, "-"),
        ("CASE i WHEN 7.0 THEN 'seven' END", P, "\"seven\""),
        (
            "CASE i WHEN 1 THEN 'a' WHEN 7 THEN 'b' WHEN 7 THEN 'c' END",
            P,
            "\"b\"",
        ),
        ("CASE n WHEN null THEN 'null' END", P, "\"null\""),
        ("CASE i WHEN missing THEN 1 ELSE 2 END", P, "2"),
        ("CASE WHEN i > 5 THEN 'big' ELSE 'small' END", P, "\"big\""),
        ("CASE WHEN i > 50 THEN 'big' END", P, "-"),
        ("case i when 7 then upper(s) end", P, "\"HELLO\""),
    ]);
}

#[test]
fn context_functions() {
    check_exprs(&[
        ("topic()", "{}", "\"a/b\""),
        ("topic(1)", "{}", "\"a\""),
        ("topic(2)", "{}", "\"b\""),
        ("topic(3)", "{}", "-"),
        ("topic(0)", "{}", "-"),
        ("topic('2')", "{}", "\"b\""),
        ("topic(1.9)", "{}", "\"a\""),
        ("topic(i - 5)", P, "\"b\""),
        ("clientid()", "{}", "\"dev-1\""),
        ("timestamp()", "{}", "1700000000000"),
        ("newuuid()", "{}", "\"uuid-1\""),
        ("[newuuid(), newuuid()]", "{}", r#"["uuid-1","uuid-2"]"#),
        ("sql_version()", "{}", "\"2016-03-23\""),
        ("Topic(1)", "{}", "\"a\""),
    ]);
    check(
        "SELECT VALUE topic(3) FROM '$aws/things/+/shadow/#'",
        "$aws/things/t1/shadow/update",
        "{}",
        "\"t1\"",
    );
}

#[test]
fn math_functions() {
    check_exprs(&[
        ("abs(-5)", "{}", "5"),
        ("abs(-5.5)", "{}", "5.5"),
        ("abs('-5.123')", "{}", "5.123"),
        ("abs(true)", "{}", "-"),
        ("abs(null)", "{}", "-"),
        ("abs(missing)", "{}", "-"),
        ("ceil(1.2)", "{}", "2"),
        ("ceil(-1.2)", "{}", "-1"),
        ("ceil(5)", "{}", "5"),
        ("ceil('1.5')", "{}", "2"),
        ("ceil('x')", "{}", "-"),
        ("floor(1.2)", "{}", "1"),
        ("floor(-1.2)", "{}", "-2"),
        ("floor('2.9')", "{}", "2"),
        ("floor([1,2,3])", "{}", "-"),
        ("round(1.2)", "{}", "1"),
        ("Round(1.5)", "{}", "2"),
        ("round(1.7)", "{}", "2"),
        ("round(-1.1)", "{}", "-1"),
        ("round(-1.5)", "{}", "-2"),
        ("round(2.5)", "{}", "3"),
        ("round(5)", "{}", "5"),
        ("round('2.5')", "{}", "3"),
        ("round([1])", "{}", "-"),
        ("trunc(2.3, 0)", "{}", "2"),
        ("trunc(2.3123, 2)", "{}", "2.31"),
        ("trunc(2.888, 2)", "{}", "2.88"),
        ("trunc(2.00, 5)", "{}", "2"),
        ("trunc(0.29, 2)", "{}", "0.29"),
        ("trunc(-2.567, 1)", "{}", "-2.5"),
        ("trunc(5, 2)", "{}", "5"),
        ("trunc('3.14159', 3)", "{}", "3.141"),
        ("trunc(1.5, -1)", "{}", "1"),
        ("trunc(true, 1)", "{}", "-"),
        ("mod(8, 3)", "{}", "2"),
        ("mod(-8, 3)", "{}", "-2"),
        ("mod(8.5, 3)", "{}", "2.5"),
        ("mod('8', 3)", "{}", "2.0"),
        ("mod(8, 0)", "{}", "-"),
        ("remainder(8, 3)", "{}", "2"),
        ("power(2, 5)", "{}", "32.0"),
        ("power(2, 0.5)", "{}", "1.4142135623730951"),
        ("power('2', 3)", "{}", "8.0"),
        ("power(2, 'x')", "{}", "-"),
        ("power(0, -1)", "{}", "-"),
        ("sqrt(9)", "{}", "3.0"),
        ("sqrt(2)", "{}", "1.4142135623730951"),
        ("sqrt('16')", "{}", "4.0"),
        ("sqrt(-1)", "{}", "-"),
        ("sign(-7)", "{}", "-1"),
        ("sign(0)", "{}", "0"),
        ("sign(13)", "{}", "1"),
        ("sign(-0.5)", "{}", "-1"),
        ("sign('3.2')", "{}", "1"),
        ("sign(null)", "{}", "-"),
        ("exp(0)", "{}", "1.0"),
        ("ln(1)", "{}", "0.0"),
        ("ln(0)", "{}", "-"),
        ("ln(-1)", "{}", "-"),
        ("log(100)", "{}", "2.0"),
        ("sin(0)", "{}", "0.0"),
        ("cos(0)", "{}", "1.0"),
        ("tan(3)", "{}", "-0.1425465430742778"),
        ("asin(0)", "{}", "0.0"),
        ("acos(1)", "{}", "0.0"),
        ("acos(2)", "{}", "-"),
        ("atan(0)", "{}", "0.0"),
        ("atan2(1, 0)", "{}", "1.5707963267948966"),
        ("sinh(2.3)", "{}", "4.936961805545957"),
        ("cosh(2.3)", "{}", "5.037220649268761"),
        ("tanh(2.3)", "{}", "0.9800963962661914"),
        ("sin('x')", "{}", "-"),
        ("bitand(13, 5)", "{}", "5"),
        ("bitor(8, 5)", "{}", "13"),
        ("bitxor(13, 5)", "{}", "8"),
        ("bitnot(13)", "{}", "-14"),
        ("bitand(13.7, '5')", "{}", "5"),
        ("bitand('x', 1)", "{}", "-"),
    ]);
}

#[test]
fn string_functions() {
    check_exprs(&[
        ("lower('HELLO')", "{}", "\"hello\""),
        ("lower(['HELLO'])", "{}", r#""[\"hello\"]""#),
        ("lower(5)", "{}", "\"5\""),
        ("lower(null)", "{}", "-"),
        ("upper('hello')", "{}", "\"HELLO\""),
        ("upper(['hello'])", "{}", r#""[\"HELLO\"]""#),
        ("upper(t)", P, "\"TRUE\""),
        ("concat()", "{}", "-"),
        ("concat(1)", "{}", "1"),
        ("concat([1, 2, 3], 4)", "{}", "[1,2,3,4]"),
        ("concat([1, 2, 3], 'hello')", "{}", r#"[1,2,3,"hello"]"#),
        ("concat('con', 'cat')", "{}", "\"concat\""),
        ("concat(1, 'hello')", "{}", "\"1hello\""),
        ("concat('he','is','man')", "{}", "\"heisman\""),
        (
            "concat([1, 2, 3], 'hello', [4, 5, 6])",
            "{}",
            r#"[1,2,3,"hello",4,5,6]"#,
        ),
        ("concat(1, 2)", "{}", "-"),
        ("concat('a', null)", "{}", "-"),
        ("substring('012345', 0)", "{}", "\"012345\""),
        ("substring('012345', 2)", "{}", "\"2345\""),
        ("substring('012345', 2.745)", "{}", "\"2345\""),
        ("substring(123, 2)", "{}", "\"3\""),
        ("substring('012345', -1)", "{}", "\"012345\""),
        ("substring(true, 1.2)", "{}", "\"rue\""),
        ("substring(false, -2.411E247)", "{}", "\"false\""),
        ("substring('012345', 1, 3)", "{}", "\"12\""),
        ("substring('012345', -50, 50)", "{}", "\"012345\""),
        ("substring('012345', 3, 1)", "{}", "\"\""),
        ("substring('héllo', 1, 3)", "{}", "\"él\""),
        ("substring(null, 1)", "{}", "-"),
        ("substring('abc', 'x')", "{}", "-"),
        ("length('hi')", "{}", "2"),
        ("length(false)", "{}", "5"),
        ("length('héllo')", "{}", "5"),
        ("length(123)", "{}", "3"),
        ("length(null)", "{}", "-"),
        ("trim(' hi ')", "{}", "\"hi\""),
        ("Trim('\\thi\\n')", "{}", "\"hi\""),
        ("ltrim(' h i ')", "{}", "\"h i \""),
        ("rtrim(' h i ')", "{}", "\" h i\""),
        ("trim(5)", "{}", "\"5\""),
        ("trim(null)", "{}", "-"),
        ("lpad('hello', 2)", "{}", "\"  hello\""),
        ("lpad(1, 3)", "{}", "\"   1\""),
        ("lpad('a', 2.9)", "{}", "\"  a\""),
        ("lpad('a', -5)", "{}", "\"a\""),
        ("lpad('a', 'x')", "{}", "-"),
        ("rpad('hello', 2)", "{}", "\"hello  \""),
        ("rpad(1, 3)", "{}", "\"1   \""),
        ("length(rpad('a', 5000))", "{}", "1001"),
        ("startswith('ranger', 'ran')", "{}", "true"),
        ("startswith('ranger', 'x')", "{}", "false"),
        ("startswith(123, 1)", "{}", "true"),
        ("startswith(null, 'a')", "{}", "-"),
        ("endswith('cat', 'at')", "{}", "true"),
        ("endswith('cat', missing)", "{}", "-"),
        ("replace('abcd', 'bc', 'x')", "{}", "\"axd\""),
        ("replace('abcdabcd', 'b', 'x')", "{}", "\"axcdaxcd\""),
        ("replace(1212, 1, 3)", "{}", "\"3232\""),
        ("replace('a', null, 'b')", "{}", "-"),
        ("indexof('abcd', 'bc')", "{}", "1"),
        ("indexof('abcd', 'x')", "{}", "-1"),
        ("indexof('héllo', 'l')", "{}", "2"),
        ("indexof(12345, 34)", "{}", "2"),
        ("indexof(null, 'a')", "{}", "-"),
        ("chr(65)", "{}", "\"A\""),
        ("chr(49)", "{}", "\"1\""),
        ("chr(65.9)", "{}", "\"A\""),
        ("chr(200)", "{}", "-"),
        ("chr('x')", "{}", "-"),
        ("numbytes('hi')", "{}", "2"),
        ("numbytes('€')", "{}", "3"),
    ]);
}

#[test]
fn null_undefined_and_nanvl() {
    check_exprs(&[
        ("isNull(5)", "{}", "false"),
        ("isNull(null)", "{}", "true"),
        ("isNull(n)", P, "true"),
        ("isNull(missing)", "{}", "false"),
        ("isUndefined(5)", "{}", "false"),
        ("isUndefined(missing)", "{}", "true"),
        ("isUndefined(floor([1,2,3]))", "{}", "true"),
        ("isUndefined(null)", "{}", "false"),
        ("ISNULL(null)", "{}", "true"),
        ("nanvl(8, 3)", "{}", "8"),
        ("Nanvl(missing, 3)", "{}", "3"),
        ("nanvl(null, 3)", "{}", "3"),
        ("nanvl('x', 3)", "{}", "\"x\""),
        ("nanvl(sqrt(-1), 0)", "{}", "0"),
    ]);
}

#[test]
fn casts() {
    check_exprs(&[
        ("cast(true AS Int)", "{}", "1"),
        ("cast(false AS Int)", "{}", "0"),
        ("cast(2.7 AS Int)", "{}", "2"),
        ("cast(-2.7 AS Int)", "{}", "-3"),
        ("cast('42' AS Int)", "{}", "42"),
        ("cast('4.7' AS Integer)", "{}", "4"),
        ("cast('-2.7' AS Int)", "{}", "-3"),
        ("cast('x' AS Int)", "{}", "-"),
        ("cast(null AS Int)", "{}", "-"),
        ("cast([1] AS Int)", "{}", "-"),
        ("cast(10.0 AS Decimal)", "{}", "10"),
        ("cast(10.5 AS Decimal)", "{}", "10.5"),
        ("cast(3 AS Decimal)", "{}", "3"),
        ("cast('2.5' AS Decimal)", "{}", "2.5"),
        ("cast(true AS Decimal)", "{}", "1"),
        ("cast(3 AS Double)", "{}", "3.0"),
        ("cast(false AS Double)", "{}", "0.0"),
        ("cast('x' AS Double)", "{}", "-"),
        ("cast(5 AS String)", "{}", "\"5\""),
        ("cast(2.5 AS String)", "{}", "\"2.5\""),
        ("cast(true AS String)", "{}", "\"true\""),
        ("cast([1,'a'] AS String)", "{}", r#""[1,\"a\"]""#),
        ("cast({'a':1} AS varchar)", "{}", r#""{\"a\":1}""#),
        ("cast(null AS String)", "{}", "-"),
        ("cast(missing AS String)", "{}", "-"),
        ("cast(0 AS Boolean)", "{}", "false"),
        ("cast(2 AS Boolean)", "{}", "true"),
        ("cast(0.0 AS Bool)", "{}", "false"),
        ("cast('TRUE' AS Boolean)", "{}", "true"),
        ("cast('yes' AS Boolean)", "{}", "-"),
        ("cast(null AS Boolean)", "{}", "-"),
        ("CAST(num AS int) + 1", P, "13"),
    ]);
}

#[test]
fn encode_decode_and_time() {
    check_exprs(&[
        ("encode('hello', 'base64')", "{}", "\"aGVsbG8=\""),
        ("encode(5, 'base64')", "{}", "\"NQ==\""),
        ("encode(null, 'base64')", "{}", "-"),
        ("encode(*, 'base64')", "{\"x\":1}", "\"eyJ4IjoxfQ==\""),
        ("encode(*, 'BASE64')", "raw bytes", "\"cmF3IGJ5dGVz\""),
        (
            "decode('eyAidGVtcGVyYXR1cmUiOiAzMyB9Cg==', 'base64').temperature",
            "{}",
            "33",
        ),
        ("decode('aGVsbG8=', 'base64')", "{}", "\"hello\""),
        ("decode(encode('[1,2]', 'base64'), 'base64')[1]", "{}", "2"),
        ("decode('!!!', 'base64')", "{}", "null"),
        ("decode(null, 'base64')", "{}", "-"),
        ("parse_time('yyyy-MM-dd', 0)", "{}", "\"1970-01-01\""),
        (
            "parse_time('yyyy.MM.dd G ''at'' HH:mm:ss z', 100000000, 'UTC')",
            "{}",
            "\"1970.01.02 AD at 03:46:40 UTC\"",
        ),
        (
            "parse_time('HH:mm', timestamp(), '+01:00')",
            "{}",
            "\"23:13\"",
        ),
        (
            "parse_time('yyyy-MM-dd''T''HH:mm:ss.SSSZZ', timestamp())",
            "{}",
            "\"2023-11-14T22:13:20.000+00:00\"",
        ),
        ("parse_time('yyyy', 'x')", "{}", "-"),
        ("parse_time('yyyy', 0, 'Mars/Base')", "{}", "-"),
    ]);
}

/// Whole statements: SELECT lists, aliases, `*`, WHERE, binary payloads. Mostly AWS's own examples.
#[test]
fn statements() {
    let color = r#"{"color":"red","temperature":50}"#;
    let cases: &[(&str, &str, &str, &str)] = &[
        ("SELECT * FROM 'a/b'", "a/b", color, color),
        ("SELECT color FROM 'a/b'", "a/b", color, r#"{"color":"red"}"#),
        ("SELECT color AS my_color FROM 'a/b'", "a/b", color, r#"{"my_color":"red"}"#),
        ("SELECT color as my_color, temperature as fahrenheit FROM 'a/b'", "a/b", color, r#"{"my_color":"red","fahrenheit":50}"#),
        ("SELECT *, 15 as speed FROM 'a/b'", "a/b", color, r#"{"color":"red","temperature":50,"speed":15}"#),
        ("SELECT VALUE color FROM 'a/b'", "a/b", color, "\"red\""),
        ("SELECT color.red as red_value FROM 'a/b'", "a/b", r#"{"color":{"red":255,"green":0,"blue":0}}"#, r#"{"red_value":255}"#),
        ("SELECT (temperature - 32) * 5 / 9 AS celsius, upper(color) as my_color FROM 'a/b'", "a/b", color, r#"{"celsius":10,"my_color":"RED"}"#),
        ("SELECT foo.bar AS bar.baz FROM 'a/b'", "a/b", r#"{"foo":{"bar":1}}"#, r#"{"bar":{"baz":1}}"#),
        ("SELECT color AS x.y, temperature AS x.z FROM 'a/b'", "a/b", color, r#"{"x":{"y":"red","z":50}}"#),
        ("SELECT color AS x, temperature AS x.z FROM 'a/b'", "a/b", color, r#"{"x":{"z":50}}"#),
        ("SELECT color AS x, temperature AS x FROM 'a/b'", "a/b", color, r#"{"x":50}"#),
        ("SELECT *, color AS temperature FROM 'a/b'", "a/b", color, r#"{"color":"red","temperature":"red"}"#),
        ("SELECT missing FROM 'a/b'", "a/b", color, "{}"),
        ("SELECT VALUE missing FROM 'a/b'", "a/b", color, "-"),
        ("SELECT NULL AS n FROM 'a/b'", "a/b", color, r#"{"n":null}"#),
        ("SELECT color FROM 'a/b' WHERE temperature > 40", "a/b", color, r#"{"color":"red"}"#),
        ("SELECT color FROM 'a/b' WHERE temperature > 60", "a/b", color, "-"),
        ("SELECT color FROM 'a/b' WHERE 'true'", "a/b", color, r#"{"color":"red"}"#),
        ("SELECT color FROM 'a/b' WHERE 1", "a/b", color, "-"),
        ("SELECT color FROM 'a/b' WHERE missing > 1", "a/b", color, "-"),
        ("SELECT temperature AS t FROM 'a/b' WHERE t > 1", "a/b", color, "-"),
        ("SELECT topic(2) AS id FROM 'a/+'", "a/b", color, r#"{"id":"b"}"#),
        ("SELECT topic(2), clientid() FROM 'a/+'", "a/b", color, r#"{"topic":"b","clientid":"dev-1"}"#),
        ("SELECT temperature + 1, color FROM 'a/b'", "a/b", color, r#"{"_1":51,"color":"red"}"#),
        ("SELECT [lat,long] as lat_long FROM 'topic/subtopic'", "topic/subtopic", r#"{"lat": 47.696, "long": -122.332}"#, r#"{"lat_long":[47.696,-122.332]}"#),
        ("SELECT {'latitude': get(lat_long, 0),'longitude':get(lat_long, 1)} as lat_long FROM 'topic/subtopic'", "topic/subtopic", r#"{"lat_long": [47.606,-122.332]}"#, r#"{"lat_long":{"latitude":47.606,"longitude":-122.332}}"#),
        ("SELECT CASE color WHEN 'green' THEN 'go' WHEN 'yellow' THEN 'caution' WHEN 'red' THEN 'stop' ELSE 'you are not at a stop light' END as instructions FROM 'a/b'", "a/b", r#"{"color":"yellow"}"#, r#"{"instructions":"caution"}"#),
        ("SELECT decode(encoded_temp,\"base64\").temperature AS temp from 'topic/subtopic'", "topic/subtopic", r#"{"encoded_temp":"eyAidGVtcGVyYXR1cmUiOiAzMyB9Cg=="}"#, r#"{"temp":33}"#),
        ("select value color from 'a/b' where temperature > 1", "a/b", color, "\"red\""),
        ("SELECT color\n  FROM 'a/b'\n  WHERE temperature = 50\n;", "a/b", color, r#"{"color":"red"}"#),
        ("SELECT * FROM 'a/b'", "a/b", "\u{1}\u{2} not json", "bin:\u{1}\u{2} not json"),
        ("SELECT * FROM 'a/b' WHERE timestamp() % 2 = 0", "a/b", "raw", "bin:raw"),
        ("SELECT encode(*, 'base64') AS data, timestamp() AS ts FROM 'a/b'", "a/b", "hello", r#"{"data":"aGVsbG8=","ts":1700000000000}"#),
        ("SELECT * FROM 'a/b'", "a/b", "[1,2]", "[1,2]"),
        ("SELECT *, 1 AS x FROM 'a/b'", "a/b", "[1,2]", r#"{"x":1}"#),
        ("SELECT *, 1 AS x FROM 'a/b'", "a/b", "not json", r#"{"x":1}"#),
        ("SELECT VALUE [topic(1), i] FROM 'a/b'", "a/b", r#"{"i":1}"#, r#"["a",1]"#),
        ("SELECT VALUE 42 FROM 'a/b'", "a/b", "", "42"),
        ("SELECT `select` AS v FROM 'a/b'", "a/b", r#"{"select":1}"#, r#"{"v":1}"#),
        ("SET @c = (temp_fahrenheit - 32) * 5 / 9 SELECT @c AS celsius, humidity FROM 'device/data'", "device/data", r#"{"temp_fahrenheit": 75, "humidity": 60}"#, r#"{"celsius":23,"humidity":60}"#),
        ("SET @a = 1, @b = @a + 1 SELECT VALUE @b FROM 'a/b'", "a/b", "{}", "2"),
        ("SET @o = {'k': [1, 2]} SELECT VALUE @o.k[1] FROM 'a/b'", "a/b", "{}", "2"),
        ("SET @t = temperature SELECT color FROM 'a/b' WHERE @t > 30", "a/b", color, r#"{"color":"red"}"#),
        ("SET @t = temperature SELECT color FROM 'a/b' WHERE @t > 60", "a/b", color, "-"),
        ("set @x = topic(1) select @x as x, upper(@x) as y from 'a/b'", "a/b", color, r#"{"x":"a","y":"A"}"#),
        ("SET @m = missing SELECT @m AS m, isUndefined(@m) AS u FROM 'a/b'", "a/b", color, r#"{"u":true}"#),
        ("SELECT * FROM '$aws/things/+/shadow/update/accepted'", "$aws/things/t/shadow/update/accepted", r#"{"state":{}}"#, r#"{"state":{}}"#),
    ];
    for (sql, topic, payload, expected) in cases {
        check(sql, topic, payload, expected);
    }
}

/// Compile-time errors: (sql, line, column, message).
#[test]
fn compile_errors() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("SELECT aws_lambda('arn', *) FROM 'a'", 1, 8, "aws_lambda() needs the AWS cloud and is not available on a Grove gateway"),
        ("SELECT *, get_dynamodb('t', 'k', id, 'arn').x AS l FROM 'a'", 1, 11, "get_dynamodb() needs the AWS cloud and is not available on a Grove gateway"),
        ("SELECT * FROM 'a'\nWHERE get_thing_shadow('t', 'arn').state = 1", 2, 7, "get_thing_shadow() needs the AWS cloud and is not available on a Grove gateway"),
        ("SELECT md5('x') FROM 'a'", 1, 8, "md5() is not supported by Grove yet"),
        ("SELECT foo(1) FROM 'a'", 1, 8, "unknown function foo()"),
        ("SELECT substring('a') FROM 'a'", 1, 8, "substring() takes 2 or 3 argument(s), got 1"),
        ("SELECT timestamp(1) FROM 'a'", 1, 8, "timestamp() takes 0 argument(s), got 1"),
        ("SELECT cast(a AS Foo) FROM 'a'", 1, 8, "unknown type 'Foo' in cast; expected Int, Decimal, Double, String or Boolean"),
        ("SELECT encode(a, 'hex') FROM 'a'", 1, 18, "the encoding scheme must be the literal 'base64'"),
        ("SELECT decode(a, b) FROM 'a'", 1, 18, "the encoding scheme must be the literal 'base64'"),
        ("SELECT upper(*) FROM 'a'", 1, 14, "'*' as an argument is only allowed in encode(*, 'base64') and count(*)"),
        ("SELECT avg(temp) FROM 'a'", 1, 8, "aggregate avg() is only allowed in the SELECT or HAVING of a rule with GROUP BY TUMBLINGWINDOW, HOPPINGWINDOW or COUNTWINDOW"),
        ("SELECT a FROM 'a' GROUP BY topic(2)", 1, 28, "GROUP BY needs a window: TUMBLINGWINDOW(unit, n), HOPPINGWINDOW(unit, size, hop) or COUNTWINDOW(n)"),
        ("SELECT a FROM 'a' HAVING a > 1", 1, 26, "HAVING needs GROUP BY with a window"),
        ("SELECT VALUE a, b FROM 'a'", 1, 14, "SELECT VALUE takes exactly one expression (not '*')"),
        ("SELECT VALUE * FROM 'a'", 1, 14, "SELECT VALUE takes exactly one expression (not '*')"),
        ("SELECT VALUE a AS b FROM 'a'", 1, 14, "SELECT VALUE takes an expression without AS"),
        ("SELECT a FROM 'a/#/b'", 1, 15, "'#' must be the whole last level of a topic filter: \"a/#/b\""),
        ("SELECT a FROM 'a/b+'", 1, 15, "'+' must be a whole level of a topic filter: \"a/b+\""),
        ("SELECT a FROM ''", 1, 15, "topic filter is empty"),
        ("SELECT avg(a) FROM 'a' GROUP BY TUMBLINGWINDOW(xx, 60)", 1, 48, "time unit must be one of ms, ss, mi, hh, dd"),
        ("SELECT avg(a) FROM 'a' GROUP BY TUMBLINGWINDOW(ss, 0)", 1, 52, "window length must be a positive integer literal"),
        ("SELECT avg(a) FROM 'a' GROUP BY TUMBLINGWINDOW(ss)", 1, 33, "TUMBLINGWINDOW takes (unit, length)"),
        ("SELECT avg(a) FROM 'a' GROUP BY HOPPINGWINDOW(ss, 10, x)", 1, 55, "hop length must be a positive integer literal"),
        ("SELECT avg(a) FROM 'a' GROUP BY HOPPINGWINDOW(ms, 100000, 1)", 1, 59, "HOPPINGWINDOW would put each message in more than 1000 windows; use a larger hop"),
        ("SELECT avg(a) FROM 'a' GROUP BY COUNTWINDOW(5), TUMBLINGWINDOW(ss, 1)", 1, 49, "a rule can have only one window in GROUP BY"),
        ("SELECT avg(a) FROM 'a' GROUP BY SESSIONWINDOW(ss, 10, 5)", 1, 33, "SESSIONWINDOW is not supported by Grove; use TUMBLINGWINDOW, HOPPINGWINDOW or COUNTWINDOW"),
        ("SELECT TUMBLINGWINDOW(ss, 1) FROM 'a'", 1, 8, "TUMBLINGWINDOW() belongs in GROUP BY"),
        ("SELECT window_start() AS s FROM 'a'", 1, 8, "window_start() is only available in the SELECT or HAVING of a windowed rule"),
        ("SELECT avg(max(a)) FROM 'a' GROUP BY COUNTWINDOW(2)", 1, 12, "aggregates cannot be nested"),
        ("SELECT a FROM 'a' WHERE avg(a) > 1 GROUP BY COUNTWINDOW(2)", 1, 25, "aggregate avg() is only allowed in the SELECT or HAVING of a rule with GROUP BY TUMBLINGWINDOW, HOPPINGWINDOW or COUNTWINDOW"),
        ("SELECT sum(*) FROM 'a' GROUP BY COUNTWINDOW(2)", 1, 12, "'*' as an argument is only allowed in encode(*, 'base64') and count(*)"),
        ("SELECT a FROM 'a' WHERE", 1, 24, "expected an expression, found end of input"),
        ("SELECT @x FROM 'a'", 1, 8, "unknown variable @x; define it with SET @x = ... before SELECT"),
        ("SET @a = 1, @a = 2 SELECT 1 AS x FROM 'a'", 1, 13, "variable @a is assigned twice"),
        ("SET @a = @a + 1 SELECT 1 AS x FROM 'a'", 1, 10, "unknown variable @a; define it with SET @a = ... before SELECT"),
        ("SET @a = 1 FROM 'a'", 1, 12, "expected ',' or SELECT, found 'FROM'"),
        ("SET a = 1 SELECT 1 AS x FROM 'a'", 1, 5, "expected '@', found 'a'"),
        ("FROM 'a' SELECT 1", 1, 1, "expected SELECT or SET, found 'FROM'"),
        ("SET @a = avg(x) SELECT count(*) AS n FROM 'a' GROUP BY COUNTWINDOW(2)", 1, 10, "aggregate avg() is only allowed in the SELECT or HAVING of a rule with GROUP BY TUMBLINGWINDOW, HOPPINGWINDOW or COUNTWINDOW"),
        ("SELECT a,\n  b c\nFROM 'a'", 2, 5, "expected FROM, found 'c'"),
    ];
    for (sql, line, column, message) in cases {
        let err = Rule::compile(sql).expect_err(sql);
        assert_eq!(
            (err.line, err.column, err.message()),
            (*line, *column, message.to_string()),
            "{sql}"
        );
    }
}

/// The deepest trees the parser accepts still compile and evaluate (no stack overflow in debug builds
/// either), and deeper ones are refused with an error.
#[test]
fn deep_but_allowed_expressions_evaluate() {
    let sum = vec!["1"; 120].join(" + ");
    check(&format!("SELECT VALUE {sum} FROM 'a'"), "a", "{}", "120");
    let nested = format!("{}x{}", "[".repeat(30), "]".repeat(30));
    let expected = format!("{}1{}", "[".repeat(30), "]".repeat(30));
    check(
        &format!("SELECT VALUE {nested} FROM 'a'"),
        "a",
        r#"{"x":1}"#,
        &expected,
    );
    let too_deep = vec!["1"; 300].join(" + ");
    let err = Rule::compile(&format!("SELECT VALUE {too_deep} FROM 'a'")).expect_err("too deep");
    assert_eq!(err.message(), "expression nested more than 128 levels deep");
}

#[test]
fn error_display_has_a_caret_line() {
    let err = Rule::compile("SELECT temp,\n       aws_lambda('f', *) AS x\nFROM 'a/b'")
        .expect_err("cloud-only");
    assert_eq!(
        err.to_string(),
        "aws_lambda() needs the AWS cloud and is not available on a Grove gateway at line 2, column 8\n         aws_lambda('f', *) AS x\n         ^"
    );
}

#[test]
fn rule_accessors() {
    let sql = "SELECT * FROM 'sensors/+/t'";
    let rule = Rule::compile(sql).expect("compiles");
    assert_eq!(
        (rule.sql(), rule.topic_filter(), rule.is_windowed()),
        (sql, "sensors/+/t", false)
    );
    assert!(rule.window().is_none());
}

/// The gateway shares compiled rules, the index and window states across tokio tasks; this fails to
/// compile if one of them stops being `Send + Sync`.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Rule>();
    send_sync::<grove_rules::RuleIndex<usize>>();
    send_sync::<grove_rules::Template>();
    send_sync::<grove_rules::Window>();
    send_sync::<Message>();
    send_sync::<Output>();
};
