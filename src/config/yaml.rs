//! Text → [`schema::File`], and a refusal of the text placed where an operator should look.
//!
//! One parser reads the file: serde-saphyr deserialises it, and its error carries the position
//! where it stopped. The field at that position comes from [`Index`], which walks the same
//! parser's events, so the position and the dotted path cannot disagree. The parser's messages
//! are written for Rust developers in places (`use Option<String>`, `invalid u64`); those an
//! operator meets are reworded here.

use std::path::Path;

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{Budget, Error, MessageFormatter};

use super::locate::{Index, Pos};
use super::{schema, Place, Problem};

/// Parses `text`, or says what is wrong with it and where.
pub(super) fn read(text: &str, file: &Path) -> Result<schema::File, Problem> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|err| problem(&err, text, file))
}

/// How `certgate.yaml` is read: YAML 1.2 scalars, no merge keys or unknown tags, duplicate keys
/// refused, and the parser's default budgets (nesting depth 64, 250,000 nodes, 50,000 aliases,
/// bounded alias replay) against alias bombs and deep nesting.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: Some(Budget::default()),
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        // `<<` pulls values in from elsewhere, where no dotted path can locate them.
        merge_keys: serde_saphyr::MergeKeyPolicy::Error,
        // `yes`, `on` and friends are strings in YAML 1.2, not booleans.
        strict_booleans: true,
        reject_unsupported_tags: true,
        // certgate places the problem itself, as file:line:column; no source excerpt.
        with_snippet: false,
    }
}

/// Turns a parser error (syntax, a value of the wrong shape, a budget) into a problem: the
/// position from the error, and the field at that position from the parser's events.
fn problem(err: &Error, text: &str, file: &Path) -> Problem {
    // An error met while replaying an alias is about the value the alias stands for.
    let mut err = err;
    while let Error::AliasError { error, .. } = err {
        err = error;
    }
    let mut message = message(err);
    let Some(pos) = err.location().map(|l| Pos {
        line: usize::try_from(l.line()).unwrap_or(usize::MAX),
        column: usize::try_from(l.column()).unwrap_or(usize::MAX),
    }) else {
        return Problem {
            place: Place::File(file.to_owned()),
            message,
        };
    };

    // Only the text up to the error was read; nothing past it is needed to name the field.
    let index = Index::build_until(text, Some(pos));
    let mut place = pos;
    let field = match err {
        Error::SerdeUnknownField { .. } | Error::MergeKeyNotAllowed { .. } => {
            index.key_at(pos).unwrap_or_default().to_owned()
        }
        Error::DuplicateMappingKey { .. } => match index.duplicate_at(pos) {
            Some(dup) => {
                message = format!(
                    "duplicate key; first written at line {} column {}",
                    dup.first.line, dup.first.column
                );
                dup.path.clone()
            }
            None => index.key_at(pos).unwrap_or_default().to_owned(),
        },
        // Reported at the mapping's last key; the problem is the mapping's, so it is placed
        // where the mapping is written.
        Error::SerdeMissingField { .. } => {
            let mapping = index
                .mapping_of_key_at(pos)
                .or_else(|| index.value_at(pos))
                .unwrap_or_default()
                .to_owned();
            if let Some(at) = index.locate_key(&mapping) {
                place = at;
            }
            mapping
        }
        _ => {
            let path = index.value_at(pos).unwrap_or_default().to_owned();
            if let (Error::Unexpected { .. }, Some(found)) = (err, index.node(&path)) {
                message = format!("invalid type: {}, {message}", found.described());
            }
            path
        }
    };

    let unknown_field = matches!(err, Error::SerdeUnknownField { .. });
    if let Some(hint) = super::indent::hint(text, pos.line, unknown_field) {
        message = format!("{hint} (parser: {message})");
    }
    Problem {
        place: Place::Yaml {
            file: file.to_owned(),
            line: place.line,
            column: place.column,
            field,
        },
        message,
    }
}

/// The message for `err`, in an operator's words where the parser's are a developer's.
fn message(err: &Error) -> String {
    match err {
        Error::NullIntoString { .. } => {
            "empty value: expected text (write \"\" for an empty string)".to_owned()
        }
        Error::InvalidScalar { ty, .. } => format!("invalid value: expected {}", number(ty)),
        Error::MultipleDocuments { .. } => {
            "a second YAML document: the configuration is one document".to_owned()
        }
        Error::MergeKeyNotAllowed { .. } | Error::MergeValueNotMapOrSeqOfMaps { .. } => {
            "merge keys (`<<`) are not supported: write the values out".to_owned()
        }
        Error::Eof { .. } => "no YAML document: the file is empty".to_owned(),
        Error::Budget { breach, .. } => format!(
            "{}: over a parser limit that stops alias bombs and runaway nesting",
            breach_words(breach)
        ),
        _ => printable(&serde_saphyr::DefaultMessageFormatter.format_message(err)),
    }
}

/// `u64` → words, for a number the schema expects.
fn number(ty: &str) -> String {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "bool" => "true or false".to_owned(),
        other => other.to_owned(),
    }
}

/// Which budget was exceeded, with the limit.
fn breach_words(breach: &BudgetBreach) -> String {
    let limits = Budget::default();
    match breach {
        BudgetBreach::Events { .. } => format!("more than {} YAML events", limits.max_events),
        BudgetBreach::Aliases { .. } => format!("more than {} aliases", limits.max_aliases),
        BudgetBreach::Anchors { .. } => format!("more than {} anchors", limits.max_anchors),
        BudgetBreach::Depth { .. } => format!("nested deeper than {} levels", limits.max_depth),
        BudgetBreach::Nodes { .. } => format!("more than {} nodes", limits.max_nodes),
        BudgetBreach::ScalarBytes { .. } => format!(
            "more than {} bytes of values",
            limits.max_total_scalar_bytes
        ),
        BudgetBreach::AliasAnchorRatio { aliases, anchors } => {
            format!("{aliases} aliases for {anchors} anchors")
        }
        other => format!("{other:?}"),
    }
}

/// The parser's message with control characters (which a key in the file may hold) escaped, so a
/// problem prints as one line.
fn printable(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}
