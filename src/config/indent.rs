//! Plain words for a YAML indentation mistake, said beside the parser's message.
//!
//! A key indented two spaces too little after a partner's block gives "did not find expected '-'
//! indicator, while parsing a block collection", or, at the top level, "unknown field". Both are
//! true and neither says that `scopes` fell out of `partners[0]`. The text before the error line
//! is walked by indentation alone (no YAML parse: the file does not parse), tracking which mapping
//! or list each line belongs to, in the dotted paths problems use; the error line is then compared
//! with the blocks still open.

/// What an open block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mapping,
    List,
}

/// A mapping or list still open at the line being read.
#[derive(Debug)]
struct Block {
    /// Column (0-based) of its keys, or of its items' `-`.
    indent: usize,
    kind: Kind,
    path: String,
    /// Mapping: the last key read. List: the number of items so far.
    last_key: Option<String>,
    items: usize,
}

/// One line that says something about structure.
#[derive(Debug)]
struct Line<'a> {
    indent: usize,
    item: bool,
    /// The key on the line (after `- ` for an item), if any.
    key: Option<&'a str>,
    /// Column of that key.
    key_indent: usize,
    /// The value starts a block scalar (`|`, `>`): deeper lines are text.
    block_scalar: bool,
}

/// The hint for a problem the parser located at `line` (1-based), or `None` when the line's
/// indentation is not the evident cause. `unknown_field` says the parser refused the key on that
/// line as unknown, which a key dedented out of its mapping into an outer one also causes.
pub(super) fn hint(text: &str, line: usize, unknown_field: bool) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let target = parse_line(lines.get(line.checked_sub(1)?)?)?;
    let open = walk(&lines[..line - 1]);
    let kind = if target.item {
        Kind::List
    } else {
        Kind::Mapping
    };
    let what = match (target.item, target.key) {
        (false, Some(key)) => format!("`{key}`"),
        (true, Some(key)) => format!("the list item `{key}`"),
        (true, None) => "the list item".to_owned(),
        (false, None) => return None,
    };
    let of = if target.item { "items" } else { "keys" };
    let same: Vec<&Block> = open.iter().filter(|b| b.kind == kind).collect();
    let deeper = same.iter().find(|b| b.indent > target.indent);
    if same.iter().any(|b| b.indent == target.indent) {
        // Aligned with an open block: only an unknown key there says it may belong deeper.
        let deeper = deeper.filter(|_| unknown_field)?;
        return Some(format!(
            "indentation: {what} is not inside `{}`; if it belongs there, indent it {} spaces like its other {of}",
            deeper.path, deeper.indent
        ));
    }
    let deeper = deeper?;
    let mut hint = format!(
        "indentation: {what} is not inside `{}`: it is indented {} spaces, the {of} of `{}` {}",
        deeper.path, target.indent, deeper.path, deeper.indent
    );
    if let Some(outer) = same
        .iter()
        .rev()
        .find(|b| b.indent < target.indent && !b.path.is_empty())
    {
        hint.push_str(&format!(", those of `{}` {}", outer.path, outer.indent));
    }
    Some(hint)
}

/// The blocks open after `lines`, outermost first; the top level is a mapping with path "".
fn walk(lines: &[&str]) -> Vec<Block> {
    let mut open = vec![Block {
        indent: 0,
        kind: Kind::Mapping,
        path: String::new(),
        last_key: None,
        items: 0,
    }];
    let mut scalar_above: Option<usize> = None;
    for text in lines {
        let Some(line) = parse_line(text) else {
            continue;
        };
        if let Some(indent) = scalar_above {
            if line.indent > indent {
                continue;
            }
            scalar_above = None;
        }
        while open.len() > 1 && open.last().is_some_and(|b| b.indent > line.indent) {
            open.pop();
        }
        if line.item {
            let parent_is_list = open
                .last()
                .is_some_and(|b| b.kind == Kind::List && b.indent == line.indent);
            if !parent_is_list {
                let path = child_path(open.last());
                open.push(Block {
                    indent: line.indent,
                    kind: Kind::List,
                    path,
                    last_key: None,
                    items: 0,
                });
            }
            let Some(list) = open.last_mut() else {
                continue;
            };
            let path = format!("{}[{}]", list.path, list.items);
            list.items += 1;
            if let Some(key) = line.key {
                open.push(Block {
                    indent: line.key_indent,
                    kind: Kind::Mapping,
                    path,
                    last_key: Some(key.to_owned()),
                    items: 0,
                });
            }
        } else if let Some(key) = line.key {
            // A key at a list's column ends the list (`partners:` written with unindented items).
            if open.len() > 1
                && open
                    .last()
                    .is_some_and(|b| b.kind == Kind::List && b.indent == line.indent)
            {
                open.pop();
            }
            match open.last_mut() {
                Some(b) if b.kind == Kind::Mapping && b.indent == line.indent => {
                    b.last_key = Some(key.to_owned());
                }
                top => {
                    let path = child_path(top.map(|b| &*b));
                    open.push(Block {
                        indent: line.indent,
                        kind: Kind::Mapping,
                        path,
                        last_key: Some(key.to_owned()),
                        items: 0,
                    });
                }
            }
        }
        if line.block_scalar {
            scalar_above = Some(line.key_indent);
        }
    }
    open
}

/// The path of the value under a mapping's last key, or of a list's next item.
fn child_path(parent: Option<&Block>) -> String {
    match parent {
        Some(Block {
            kind: Kind::Mapping,
            path,
            last_key: Some(key),
            ..
        }) if path.is_empty() => key.clone(),
        Some(Block {
            kind: Kind::Mapping,
            path,
            last_key: Some(key),
            ..
        }) => format!("{path}.{key}"),
        Some(Block {
            kind: Kind::List,
            path,
            items,
            ..
        }) => format!("{path}[{}]", items.saturating_sub(1)),
        Some(b) => b.path.clone(),
        None => String::new(),
    }
}

/// Reads a line's indentation, list dash and key; `None` for blank and comment lines.
fn parse_line(text: &str) -> Option<Line<'_>> {
    let indent = text.len() - text.trim_start_matches(' ').len();
    let rest = &text[indent..];
    if rest.trim().is_empty() || rest.starts_with('#') {
        return None;
    }
    let (item, body, key_indent) = match rest.strip_prefix('-') {
        Some(after) if after.is_empty() || after.starts_with(' ') => {
            let body = after.trim_start_matches(' ');
            (true, body, indent + 1 + (after.len() - body.len()))
        }
        _ => (false, rest, indent),
    };
    let (key, value) = match body.find(": ").or_else(|| {
        body.trim_end()
            .strip_suffix(':')
            .map(|k| k.len())
            .filter(|_| !body.starts_with(['"', '\'', '[', '{']))
    }) {
        Some(end) if !body[..end].contains(['#', '[', '{']) => {
            (Some(body[..end].trim()), body[end + 1..].trim())
        }
        _ => (None, ""),
    };
    let value = value.split(" #").next().unwrap_or_default();
    Some(Line {
        indent,
        item,
        key,
        key_indent,
        block_scalar: value.starts_with(['|', '>']),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTNERS: &str = "\
server:
  listen: x
partners:
  - id: acme
    owner: a
    identities:
      - spiffe: spiffe://a/b
      - subject_cn: acme
    scopes: [r]
";

    fn with_line(n: usize, line: &str) -> String {
        let mut lines: Vec<&str> = PARTNERS.lines().collect();
        lines[n - 1] = line;
        lines.join("\n")
    }

    #[test]
    fn a_key_dedented_out_of_a_list_item_is_named_with_its_block() {
        let text = with_line(9, "  scopes: [r]");
        assert_eq!(
            hint(&text, 9, false).unwrap(),
            "indentation: `scopes` is not inside `partners[0]`: it is indented 2 spaces, the keys of `partners[0]` 4"
        );
    }

    #[test]
    fn a_key_dedented_to_the_top_level_is_named_when_the_parser_calls_it_unknown() {
        let text = with_line(9, "scopes: [r]");
        assert_eq!(
            hint(&text, 9, true).unwrap(),
            "indentation: `scopes` is not inside `partners[0]`; if it belongs there, indent it 4 spaces like its other keys"
        );
        // A correctly placed key the parser refuses for another reason gets no hint.
        assert_eq!(hint(&text, 9, false), None);
    }

    #[test]
    fn a_key_between_two_blocks_names_both() {
        let text = with_line(9, "     scopes: [r]");
        assert_eq!(
            hint(&text, 9, false).unwrap(),
            "indentation: `scopes` is not inside `partners[0].identities[1]`: it is indented 5 spaces, the keys of `partners[0].identities[1]` 8, those of `partners[0]` 4"
        );
    }

    #[test]
    fn a_list_item_dedented_out_of_its_list_is_named_with_the_list() {
        let text = with_line(8, "    - subject_cn: acme");
        assert_eq!(
            hint(&text, 8, false).unwrap(),
            "indentation: the list item `subject_cn` is not inside `partners[0].identities`: it is indented 4 spaces, the items of `partners[0].identities` 6, those of `partners` 2"
        );
    }

    #[test]
    fn well_indented_lines_and_block_scalars_give_no_hint() {
        assert_eq!(hint(PARTNERS, 9, false), None);
        assert_eq!(hint(PARTNERS, 8, false), None);
        let text = "a:\n  b: |\n    text: not a key\n  c: 1\n";
        assert_eq!(hint(text, 4, true), None);
    }
}
