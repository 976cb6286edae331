//! AWS substitution templates: `${expr}` inside an action's text (a republish topic such as
//! `alerts/${topic(2)}/temp`), evaluated against the original message, not the SELECT output, as AWS
//! documents at <https://docs.aws.amazon.com/iot/latest/developerguide/iot-substitution-templates.html>.
//!
//! The expression is any expression the rule language accepts (functions, operators, payload paths);
//! aliases from SELECT are not visible. A string result is inserted as it is, other values in their
//! string form (arrays and objects as JSON), and Undefined or Null as the empty string.

use std::sync::Arc;

use crate::compile::{compile_template_expr, eval_standalone};
use crate::error::CompileError;
use crate::eval::{CExpr, Context, Message};
use crate::parser::parse_template_expr;

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Expr(CExpr),
}

/// A compiled substitution template: cheap to clone (the compiled pieces are shared, like a
/// [`crate::Rule`]'s program; a gateway keeps a rule set's actions in more than one place). Two
/// templates are equal when their text is.
#[derive(Debug, Clone)]
pub struct Template {
    /// The text it was compiled from, which decides equality (compiling is deterministic).
    text: Arc<str>,
    pieces: Arc<[Piece]>,
}

impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Template {}

impl Template {
    /// Compiles `text`; a `$` not followed by `{` is literal text. Errors point into `text`.
    pub fn parse(text: &str) -> Result<Template, CompileError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut pos = 0;
        while let Some(found) = text[pos..].find("${") {
            let open = pos + found;
            literal.push_str(&text[pos..open]);
            let (expr, end) = parse_template_expr(text, open + 2)?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Expr(compile_template_expr(text, &expr)?));
            pos = end;
        }
        literal.push_str(&text[pos..]);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template {
            text: text.into(),
            pieces: pieces.into(),
        })
    }

    /// The text it was compiled from, as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the template has no `${...}` (so it renders to the same text for every message).
    pub fn is_static(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Text(_)))
    }

    /// Renders the template for `msg`.
    pub fn render(&self, msg: &Message, ctx: &Context<'_>) -> String {
        let mut out = String::new();
        for piece in self.pieces.iter() {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Expr(e) => {
                    if let Some(s) = eval_standalone(e, msg, ctx).to_str() {
                        out.push_str(&s);
                    }
                }
            }
        }
        out
    }
}
