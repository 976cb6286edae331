//! Errors at the crate's boundary: [`CompileError`] for everything found before a rule runs (syntax,
//! unknown or cloud-only functions, wrong arity, misplaced aggregates), [`EvalError`] for the few things
//! that can go wrong while it runs, and [`TopicFilterError`] for bad `FROM` filters.
//!
//! A compile error carries the position (1-based line and column, counted in characters) and renders
//! the offending line with a caret under the position, so a config loader can show it unchanged.

use std::fmt;

/// What kind of problem a [`CompileError`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileErrorKind {
    /// The text does not follow the grammar; `expected` says what would have been accepted there.
    Syntax {
        /// What the parser would have accepted at this position, e.g. "FROM" or "an expression".
        expected: String,
        /// What it found instead, e.g. "'WHERE'" or "end of input".
        found: String,
    },
    /// The text parses but cannot run: an unknown function, a cloud-only function, a wrong number of
    /// arguments, an aggregate outside a windowed rule, and so on.
    Type(String),
}

/// A rule (or substitution template) that cannot be compiled, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CompileError {
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column (in characters) of the problem.
    pub column: usize,
    /// Byte offset of the problem in the source text.
    pub offset: usize,
    /// What went wrong.
    pub kind: CompileErrorKind,
    /// The source line holding the problem, kept so that `Display` can draw the caret.
    pub source_line: String,
}

impl CompileError {
    /// Builds an error at byte `offset` of `src`, computing line, column and the source line.
    pub(crate) fn at(src: &str, offset: usize, kind: CompileErrorKind) -> Self {
        let offset = offset.min(src.len());
        // Offsets always come from the lexer, so they sit on char boundaries; `floor` keeps this
        // robust even if one did not.
        let mut cut = offset;
        while !src.is_char_boundary(cut) {
            cut -= 1;
        }
        let before = &src[..cut];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = src[line_start..cut].chars().count() + 1;
        let line_end = src[line_start..]
            .find('\n')
            .map_or(src.len(), |i| line_start + i);
        CompileError {
            line,
            column,
            offset,
            kind,
            source_line: src[line_start..line_end].trim_end_matches('\r').to_string(),
        }
    }

    /// A syntax error at `offset`: `expected` what, `found` what.
    pub(crate) fn syntax(
        src: &str,
        offset: usize,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Self::at(
            src,
            offset,
            CompileErrorKind::Syntax {
                expected: expected.into(),
                found: found.into(),
            },
        )
    }

    /// A semantic ("type") error at `offset`.
    pub(crate) fn semantic(src: &str, offset: usize, message: impl Into<String>) -> Self {
        Self::at(src, offset, CompileErrorKind::Type(message.into()))
    }

    /// The one-line message without position or caret, e.g. "expected FROM, found 'WHERE'".
    pub fn message(&self) -> String {
        match &self.kind {
            CompileErrorKind::Syntax { expected, found } => {
                format!("expected {expected}, found {found}")
            }
            CompileErrorKind::Type(message) => message.clone(),
        }
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tabs are drawn as one space so that the caret lines up with the character it points at.
        let shown: String = self
            .source_line
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        writeln!(
            f,
            "{} at line {}, column {}",
            self.message(),
            self.line,
            self.column
        )?;
        writeln!(f, "  {shown}")?;
        write!(f, "  {}^", " ".repeat(self.column - 1))
    }
}

/// A problem while running a compiled rule. AWS's semantics turn almost every runtime problem into
/// `Undefined`, so this is only about using the API the wrong way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// `Rule::evaluate` was called on a rule with `GROUP BY <window>`; feed such rules through
    /// [`crate::Window`] instead.
    #[error(
        "rule aggregates over a window; feed it through Window::on_message/poll, not evaluate"
    )]
    Windowed,
}

/// A topic filter (from `FROM '...'` or given to the index) that MQTT does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicFilterError {
    /// The filter is the empty string.
    #[error("topic filter is empty")]
    Empty,
    /// `#` appears somewhere other than as the whole last level.
    #[error("'#' must be the whole last level of a topic filter: {0:?}")]
    MisplacedHash(String),
    /// `+` appears inside a level instead of as the whole level.
    #[error("'+' must be a whole level of a topic filter: {0:?}")]
    MisplacedPlus(String),
    /// The filter contains a NUL character, which MQTT forbids.
    #[error("topic filter contains NUL: {0:?}")]
    Nul(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_points_at_the_column_on_the_right_line() {
        let src = "SELECT a\nFROM 'x' WHERE";
        let err = CompileError::syntax(src, src.len(), "an expression", "end of input");
        assert_eq!((err.line, err.column), (2, 15));
        assert_eq!(
            err.to_string(),
            "expected an expression, found end of input at line 2, column 15\n  FROM 'x' WHERE\n                ^"
        );
    }
}
