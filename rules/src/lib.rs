//! `grove-rules`: the AWS IoT SQL dialect (version 2016-03-23) for Grove's rules engine, plus edge
//! windows, a topic-filter index and substitution templates.
//!
//! The crate is pure: no tokio, no sockets, no clock, no random numbers. The host passes the message,
//! the time (`now_ms`) and a UUID source in, and gets JSON (or raw bytes) back.
//!
//! # Use
//!
//! ```
//! use grove_rules::{Context, Message, Output, Rule, RuleIndex};
//!
//! let rule = Rule::compile("SELECT temp, topic(2) AS id FROM 'sensors/+/t' WHERE temp > 30")?;
//! let mut index = RuleIndex::new();
//! index.insert(rule.topic_filter(), 0usize)?;
//!
//! let msg = Message::new("sensors/d1/t", "d1", br#"{"temp": 31.5}"#.to_vec());
//! let uuids = || "00000000-0000-4000-8000-000000000000".to_string();
//! let ctx = Context::new(1_700_000_000_000, &uuids);
//! assert_eq!(index.matches(msg.topic()), vec![0]);
//! let out = rule.evaluate(&msg, &ctx)?;
//! assert_eq!(out, Some(Output::Json(serde_json::json!({"temp": 31.5, "id": "d1"}))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`Rule::compile`] parses and checks once; errors ([`CompileError`]) carry line, column, a caret
//!   line and what was expected. [`Rule::evaluate`] runs the compiled form (no text is looked at again).
//! - [`Window`] (from [`Rule::window`]) runs rules with `GROUP BY <window>`.
//! - [`RuleIndex`] finds the rules whose `FROM` filter matches a topic.
//! - [`Template`] renders `${...}` substitution templates (republish topics) against the original
//!   message.
//! - [`ErrorActionPayload`] is AWS's error-action message shape.
//!
//! # The language
//!
//! AWS's reference is the specification: <https://docs.aws.amazon.com/iot/latest/developerguide/iot-sql-reference.html>
//! (the markdown sources live in `awsdocs/aws-iot-docs`, `developerguide/iot-sql-*.md`). Supported:
//! `SELECT [VALUE]` with `*` (alone or beside other items), expressions, `AS` aliases (dotted aliases
//! build nested objects), nested paths `a.b.c`, `get(x, i)`, object and array literals, string
//! literals in single or double quotes, backtick-quoted names; `FROM 'filter'` with `+`/`#` (also
//! `$aws/...`); `WHERE` (evaluated before SELECT, cannot see aliases); `CASE v WHEN .. THEN .. ELSE ..
//! END`; `SET @a = expr, @b = expr` before SELECT, with `@a` usable in SET, SELECT and WHERE (and
//! `@a.key`); the whole operator table (`AND OR NOT = <> < <= > >= + - * / %`) with AWS's types, including
//! Undefined. Functions: `topic() topic(n) clientid() timestamp() newuuid() sql_version()`, `abs ceil
//! floor round trunc mod remainder power sqrt sign exp ln log sin cos tan asin acos atan atan2 sinh cosh
//! tanh bitand bitor bitxor bitnot`, `lower upper concat substring length trim ltrim rtrim lpad rpad
//! startswith endswith replace indexof chr numbytes`, `cast(x AS Int|Integer|Decimal|Double|String|
//! Varchar|Bool|Boolean)`, `isNull isUndefined get nanvl`, `encode(*, 'base64')`, `decode(x,
//! 'base64')`, `parse_time(pattern, ms[, zone])`.
//!
//! Rejected when the rule is compiled, each with its own message: cloud-only functions (`aws_lambda`,
//! `get_dynamodb`, `get_thing_shadow`, `get_secret`, `machinelearning_predict`, `get_registry_data`,
//! `accountid`, `principal`, `traceid`, `get_mqtt_property`, `get_user_properties`); AWS functions
//! Grove does not implement yet (`regexp_*`, the hash functions `md5`..`sha512`, `rand`, `transform`,
//! `time_to_epoch`); unknown functions; wrong argument counts; unknown `cast` types; an encoding other
//! than `'base64'`; aggregates outside windowed rules; `HOPPINGWINDOW`s that would put a message in
//! more than 1,000 windows; expressions deeper than 128 levels or with more than 32 levels of
//! parentheses (so that untrusted rule text cannot overflow the stack). Nested `SELECT` and comments
//! are not supported (they are syntax errors), and SET variables cannot be used in substitution
//! templates (AWS allows that; Grove reports an error).
//!
//! Grove extensions (AWS would reject these rules, so they cannot disagree with it): `a[0]` indexing
//! (the same as `get(a, 0)`), `!=` for `<>`, the searched `CASE WHEN cond THEN .. END`,
//! the window clauses below and `window_start()`/`window_end()`.
//!
//! # Number model, and where Grove differs from AWS
//!
//! AWS has Int (up to 34 digits) and Decimal (34-digit precision, magnitudes 1E-999 to 9.999E999).
//! Grove holds Int in an `i64` and Decimal in an `f64`:
//!
//! - Int arithmetic is exact while it fits in an `i64` (±9.2·10¹⁸); on overflow the result becomes a
//!   Decimal (AWS would still be exact up to 34 digits). JSON integers beyond `i64` are read as Decimal.
//! - Decimal arithmetic is IEEE double: about 15-17 significant digits, so `0.1 + 0.2` is
//!   `0.30000000000000004` on Grove and `0.3` on AWS. Rules that compare or print decimals that need more
//!   than double precision can differ. Functions AWS documents as "rounded to double precision" (`sqrt`,
//!   `power`, `exp`, `ln`, `log`, the trigonometric ones) agree.
//! - Decimals are printed in their shortest round-trip form (`2.5`, `10.0`, `1e21`); AWS prints Java
//!   `BigDecimal`s, which can differ in form for very large or small numbers.
//! - Division or modulo by zero, and results that are NaN or infinite, are Undefined.
//! - `cast(x AS Decimal)` returns an Int for whole values, as AWS documents for SQL 2016-03-23.
//! - `cast(x AS Int)` floors a Decimal or a numeric string: `cast(2.7 AS Int)` is `2` and
//!   `cast(-2.7 AS Int)` (or `cast('-2.7' AS Int)`) is `-3`; function arguments that must be Int
//!   (indexes, `substring`, `lpad`, the bit functions) are floored the same way. AWS's pages
//!   disagree here: the `cast` function page says a Decimal is "rounded down", while the
//!   data-types page's conversion table says "rounded to the nearest Int" for a Decimal and
//!   "truncates the decimal places" for a numeric String (which would give `-2`). Grove follows the
//!   function page, the one about `cast` itself, for both; AWS's behaviour on negative fractions is
//!   not verified, so a rule whose result depends on it should say `floor`, `trunc` or `round`.
//!
//! Other differences:
//!
//! - String lengths and indexes (`length`, `substring`, `indexof`, `get` on strings) count Unicode
//!   scalar values; AWS (Java) counts UTF-16 units, which differs only for characters outside the
//!   Basic Multilingual Plane (emoji).
//! - `parse_time` supports the Joda pattern letters `G y M d D E a H h k K m s S Z z` and zones `UTC`,
//!   `GMT` and fixed offsets (`+01:00`); named zones such as `America/Belize` give Undefined.
//! - An unaliased SELECT item is named by its last path key or function name (`topic(2)` gives
//!   `topic`), other expressions `_1`, `_2`... by position; AWS does not document this, so alias
//!   computed items when the output must match.
//! - Undefined elements of array literals are dropped (AWS does not document this case).
//! - `decode(x, 'base64')` returns Null when the input is not base64, the parsed JSON when the decoded
//!   bytes are JSON, and otherwise the decoded text.
//! - `SELECT *` on a non-JSON payload outputs the raw bytes ([`Output::Binary`]); `*` next to other
//!   items adds the payload's keys only if the payload is a JSON object.
//! - WHERE lets a message through when it evaluates to true or to the string `"true"` (any case), the
//!   standard conversion to Boolean; anything else, Undefined included, drops it.
//! - Output objects keep the SELECT order of their keys (this crate enables serde_json's
//!   `preserve_order`), as AWS's output does; JSON equality does not depend on it.
//!
//! # Testing
//!
//! `cargo test -p grove-rules` runs the table-driven semantics (`tests/semantics.rs`), windows,
//! templates and the index laws. The parser, compiler and evaluator have a cargo-fuzz target
//! (`fuzz/`, target `compile`): `bash rules/ci.sh` fuzzes it for 30 s, as the test command does,
//! and `FUZZ_SECONDS=3600 bash rules/ci.sh` is the longer run, before a release.
//!
//! # Windows (edge aggregation)
//!
//! Written as in eKuiper: one window function in GROUP BY, optionally with other group keys, aggregates
//! in SELECT and HAVING:
//!
//! ```sql
//! SELECT avg(temp) AS t, max(temp) AS tmax, count(*) AS n, topic(2) AS device
//! FROM 'sensors/+/telemetry'
//! WHERE temp > -40
//! GROUP BY TUMBLINGWINDOW(ss, 60), topic(2)
//! HAVING count(*) >= 3
//! ```
//!
//! Window functions: `TUMBLINGWINDOW(unit, length)`, `HOPPINGWINDOW(unit, length, hop)`,
//! `COUNTWINDOW(n)`, with units `ms ss mi hh dd`. Aggregates: `avg min max sum count` (`count(*)`
//! counts messages). The window's clock is the host's: see [`Window`] for the exact semantics
//! (epoch-aligned windows, closing when `now_ms >= end`, WHERE applied per message).

mod ast;
mod compile;
mod error;
mod error_action;
mod eval;
mod functions;
mod index;
#[cfg(test)]
mod laws;
mod lexer;
mod parser;
mod template;
mod time;
mod value;
mod window;

pub use compile::Rule;
pub use error::{CompileError, CompileErrorKind, EvalError, TopicFilterError};
pub use error_action::{ErrorActionPayload, Failure};
pub use eval::{Context, Message, Output, UuidSource};
pub use index::{topic_matches, validate_filter, RuleIndex};
pub use template::Template;
pub use window::{Window, WindowRow};
