//! The console's rule editor on the configuration file: one rule's SQL replaced, the rest of the
//! file (comments, order, layout) kept as the operator wrote it (toml_edit), and the file
//! replaced atomically.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, Value};

/// `text` (a configuration file) with the `sql` of the rule named `name` set to `sql`: `[[rules]]`
/// tables and `rules = [{ ... }]` inline tables alike; `Err`: why not (not TOML, no such rule).
pub fn with_rule_sql(text: &str, name: &str, sql: &str) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the configuration file is not TOML: {e}"))?;
    let named = |n: Option<&Value>| n.and_then(Value::as_str) == Some(name);
    let found = match doc.get_mut("rules") {
        Some(Item::ArrayOfTables(rules)) => (rules.iter_mut())
            .find(|t: &&mut Table| named(t.get("name").and_then(Item::as_value)))
            .and_then(|t| t.get_mut("sql")?.as_value_mut())
            .map(|v| set_keeping_comments(v, sql))
            .is_some(),
        Some(Item::Value(Value::Array(rules))) => (rules.iter_mut())
            .filter_map(Value::as_inline_table_mut)
            .find(|t| named(t.get("name")))
            .and_then(|t| t.get_mut("sql"))
            .map(|v| set_keeping_comments(v, sql))
            .is_some(),
        _ => false,
    };
    match found {
        true => Ok(doc.to_string()),
        false => Err(format!(
            "no rule named {name:?} in the configuration file (the rules running may come from a deployment)"
        )),
    }
}

/// Sets `slot` to the string `sql`, keeping the spaces and comment around the old value.
fn set_keeping_comments(slot: &mut Value, sql: &str) {
    let decor = slot.decor().clone();
    *slot = sql.into();
    *slot.decor_mut() = decor;
}

/// Replaces the file at `path` with `text`: written beside it, synced, then renamed over it, so
/// that a crash leaves the old file or the new one, never a part.
pub fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".console-edit");
    let beside = path.with_file_name(name);
    let mut file = std::fs::File::create(&beside)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&beside, path)
}

#[cfg(test)]
mod tests {
    use super::with_rule_sql;

    #[test]
    fn a_rules_sql_is_replaced_and_the_rest_of_the_file_is_kept() {
        let text = r#"# the site's gateway
[broker]
bind = "127.0.0.1:1883" # loopback only

[[rules]]
name = "hot"
sql = "SELECT * FROM 'a'"   # too broad
actions = [{ republish = { topic = "out" } }]

[[rules]]
name = "cold"
sql = "SELECT * FROM 'b'"
actions = [{ republish = { topic = "out" } }]
"#;
        let changed = with_rule_sql(text, "cold", "SELECT t FROM 'b' WHERE t < 0").unwrap();
        assert_eq!(
            changed,
            text.replace(
                "sql = \"SELECT * FROM 'b'\"",
                "sql = \"SELECT t FROM 'b' WHERE t < 0\""
            )
        );
        let changed = with_rule_sql(text, "hot", "SELECT * FROM 'a/+'").unwrap();
        assert_eq!(
            changed,
            text.replace(
                "sql = \"SELECT * FROM 'a'\"   # too broad",
                "sql = \"SELECT * FROM 'a/+'\"   # too broad"
            )
        );
    }

    #[test]
    fn inline_rules_are_found_and_a_missing_rule_is_said() {
        let text = "rules = [{ name = \"r\", sql = \"SELECT * FROM 'a'\", actions = [] }]\n";
        let changed = with_rule_sql(text, "r", "SELECT x FROM 'a'").unwrap();
        assert!(changed.contains("sql = \"SELECT x FROM 'a'\""), "{changed}");
        let missing = with_rule_sql(text, "other", "SELECT 1 FROM 'a'").unwrap_err();
        assert!(missing.contains("no rule named \"other\""), "{missing}");
        let broken = with_rule_sql("rules = [", "r", "x").unwrap_err();
        assert!(broken.contains("not TOML"), "{broken}");
    }
}
