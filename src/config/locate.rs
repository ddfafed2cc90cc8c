//! Where each value sits in the YAML text.
//!
//! The deserialiser reports a position only for the error it stops at. Problems found later (an
//! unknown upstream, a duplicate identity) would otherwise name a field but no line, and an
//! operator with a 500-line file needs the line. So the events of the same parser the deserialiser
//! runs on (granit-parser, through serde-saphyr) are walked once more, and each dotted path
//! (`routes[1].upstream`, `upstreams.orders.endpoints[0]`) is mapped to where its key and value
//! start. One scanner counts lines and columns for both, so a shape error and a semantic error are
//! placed by the same rules, and the index can name the field at a shape error's position.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Marker, Parser};

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// What kind of node a path holds, to say what was found where something else was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    Scalar,
    Sequence,
    Mapping,
    Alias,
}

/// The positions recorded for one path.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Where the mapping key starts; `None` for sequence items and the root.
    key: Option<Pos>,
    /// Where the value starts (for a block mapping or sequence: its first entry).
    value: Pos,
    node: Node,
}

/// Dotted path → positions, built once per parse.
#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: HashMap<String, Entry>,
    /// Key position → the path of the mapping holding the key, and the key's own path.
    keys_at: HashMap<Pos, (String, String)>,
    /// Value position → its path; where several values start at one place, the deepest.
    values_at: HashMap<Pos, String>,
    /// Mapping keys written twice in one mapping, so a refusal can say where the first one is.
    duplicates: Vec<Duplicate>,
}

/// A key repeated within one mapping.
#[derive(Debug, Clone)]
pub(crate) struct Duplicate {
    pub(crate) path: String,
    pub(crate) first: Pos,
    pub(crate) again: Pos,
}

/// One open container while walking the event stream.
#[derive(Debug)]
enum Frame {
    Mapping {
        path: String,
        /// The key just read, waiting for its value; `None` while a key is expected.
        pending_key: Option<(String, Pos)>,
        keys: HashMap<String, Pos>,
    },
    Sequence {
        path: String,
        next: usize,
    },
    /// A mapping or sequence used as a mapping key: not addressable by a dotted path, so its
    /// contents are skipped and the whole node stands for one (unnamed) key.
    ComplexKey {
        depth: usize,
    },
}

/// Receives parser events and fills an [`Index`].
#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    index: Index,
}

// === impl Pos ===

impl Pos {
    /// Parser markers count lines from 1 and columns from 0.
    fn from_marker(mark: Marker) -> Self {
        Self {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

// === impl Node ===

impl Node {
    /// As said in a message: "invalid type: sequence, expected …".
    pub(crate) fn described(self) -> &'static str {
        match self {
            Node::Scalar => "scalar",
            Node::Sequence => "sequence",
            Node::Mapping => "mapping",
            Node::Alias => "alias",
        }
    }
}

// === impl Index ===

impl Index {
    /// Indexes the first document of `text`, which the deserialiser has accepted: its nesting
    /// and size budgets bound this walk too, and the parser's own nesting limits apply again. A
    /// syntax error ends the walk and keeps what came before it.
    pub(crate) fn build(text: &str) -> Self {
        Self::build_until(text, None)
    }

    /// Like [`Index::build`], but stops after the node at `stop`: where a shape error was
    /// reported, nothing past it was read or checked, and nothing past it is needed to name it.
    pub(crate) fn build_until(text: &str, stop: Option<Pos>) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        while let Some(Ok((event, span))) = parser.next_event() {
            let pos = Pos::from_marker(span.start);
            if stop.is_some_and(|stop| pos > stop) {
                break;
            }
            if !builder.on_event(event, pos) {
                break;
            }
        }
        builder.index
    }

    /// Where the value at `path` starts, if that exact path exists.
    pub(crate) fn value(&self, path: &str) -> Option<Pos> {
        self.entries.get(path).map(|e| e.value)
    }

    /// Where the key of the mapping entry at `path` starts, if it exists.
    pub(crate) fn key(&self, path: &str) -> Option<Pos> {
        self.entries.get(path).and_then(|e| e.key)
    }

    /// Like [`Index::locate`], but prefers the entry's key: for problems with the key itself (an
    /// empty upstream name), whose value may start lines below.
    pub(crate) fn locate_key(&self, path: &str) -> Option<Pos> {
        self.key(path).or_else(|| self.locate(path))
    }

    /// The best position for a problem about `path`: its value if present, else the nearest
    /// ancestor that exists. An ancestor is pointed at by its key when it has one, because a
    /// missing field belongs to the entry (`tls:`) more than to the entry's first child.
    pub(crate) fn locate(&self, path: &str) -> Option<Pos> {
        if let Some(pos) = self.value(path) {
            return Some(pos);
        }
        let mut current = path;
        while let Some(parent) = parent_path(current) {
            if let Some(entry) = self.entries.get(parent) {
                return Some(entry.key.unwrap_or(entry.value));
            }
            current = parent;
        }
        None
    }

    /// The duplicate whose second occurrence is at `again`.
    pub(crate) fn duplicate_at(&self, again: Pos) -> Option<&Duplicate> {
        self.duplicates.iter().find(|d| d.again == again)
    }

    /// The path of the key written at `pos`.
    pub(crate) fn key_at(&self, pos: Pos) -> Option<&str> {
        self.keys_at.get(&pos).map(|(_, key)| key.as_str())
    }

    /// The path of the mapping that holds the key written at `pos`.
    pub(crate) fn mapping_of_key_at(&self, pos: Pos) -> Option<&str> {
        self.keys_at.get(&pos).map(|(mapping, _)| mapping.as_str())
    }

    /// The path of the (deepest) value starting at `pos`.
    pub(crate) fn value_at(&self, pos: Pos) -> Option<&str> {
        self.values_at.get(&pos).map(String::as_str)
    }

    /// What kind of node the value at `path` is.
    pub(crate) fn node(&self, path: &str) -> Option<Node> {
        self.entries.get(path).map(|e| e.node)
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → `` (the root) → none.
fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

fn child_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

// === impl Builder ===

impl Builder {
    /// Records a value at `path`; the deepest path wins a shared start position.
    fn record(&mut self, path: &str, entry: Entry) {
        let deeper = match self.index.values_at.get(&entry.value) {
            Some(known) => known.len() < path.len(),
            None => true,
        };
        if deeper {
            self.index.values_at.insert(entry.value, path.to_owned());
        }
        // The first occurrence of a duplicated key keeps its positions.
        self.index.entries.entry(path.to_owned()).or_insert(entry);
    }

    /// Decides what a node starting at `pos` is: a key of the enclosing mapping (returns `None`)
    /// or a value, whose path is returned after recording its positions.
    fn place_node(&mut self, scalar: Option<&str>, pos: Pos, node: Node) -> Option<String> {
        let (path, key) = match self.stack.last_mut() {
            None => (String::new(), None),
            Some(Frame::ComplexKey { .. }) => return None,
            Some(Frame::Sequence { path, next }) => {
                let child = format!("{path}[{next}]");
                *next += 1;
                (child, None)
            }
            Some(Frame::Mapping {
                path,
                pending_key,
                keys,
            }) => match pending_key.take() {
                None => {
                    // A key. Non-scalar keys cannot be named in a dotted path.
                    let key = scalar.unwrap_or("?").to_owned();
                    let key_path = child_key(path, &key);
                    if let Some(first) = keys.get(&key) {
                        self.index.duplicates.push(Duplicate {
                            path: key_path.clone(),
                            first: *first,
                            again: pos,
                        });
                    } else {
                        keys.insert(key.clone(), pos);
                    }
                    self.index.keys_at.insert(pos, (path.clone(), key_path));
                    *pending_key = Some((key, pos));
                    return None;
                }
                Some((key, key_pos)) => (child_key(path, &key), Some(key_pos)),
            },
        };
        self.record(
            &path,
            Entry {
                key,
                value: pos,
                node,
            },
        );
        Some(path)
    }

    fn open(&mut self, pos: Pos, mapping: bool) {
        if let Some(Frame::ComplexKey { depth }) = self.stack.last_mut() {
            *depth += 1;
            return;
        }
        let node = if mapping {
            Node::Mapping
        } else {
            Node::Sequence
        };
        let frame = match self.place_node(None, pos, node) {
            Some(path) if mapping => Frame::Mapping {
                path,
                pending_key: None,
                keys: HashMap::new(),
            },
            Some(path) => Frame::Sequence { path, next: 0 },
            None => {
                // place_node consumed the key slot; the complex key's contents follow.
                Frame::ComplexKey { depth: 0 }
            }
        };
        self.stack.push(frame);
    }

    fn close(&mut self) {
        if let Some(Frame::ComplexKey { depth }) = self.stack.last_mut() {
            if *depth > 0 {
                *depth -= 1;
                return;
            }
        }
        self.stack.pop();
    }

    /// Takes one event; `false` once the first document has ended.
    fn on_event(&mut self, event: Event<'_>, pos: Pos) -> bool {
        let in_complex_key = matches!(self.stack.last(), Some(Frame::ComplexKey { .. }));
        match event {
            Event::Scalar(value, ..) if !in_complex_key => {
                self.place_node(Some(&value), pos, Node::Scalar);
            }
            Event::Alias(_) | Event::UnresolvedAlias(_) if !in_complex_key => {
                self.place_node(None, pos, Node::Alias);
            }
            Event::MappingStart(..) => self.open(pos, true),
            Event::SequenceStart(..) => self.open(pos, false),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            Event::DocumentEnd => return false,
            _ => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Option<Pos> {
        Some(Pos { line, column })
    }

    const TEXT: &str = "\
server:
  listen: \"0.0.0.0:8443\"
upstreams:
  orders:
    endpoints: [\"http://a:1\", \"http://b:2\"]
routes:
  - name: r0
    upstream: orders
  - name: r1
    upstream: nope
partners:
  - id: acme
    identities:
      - spiffe: spiffe://x/acme
      - fingerprint_sha256: ab
";

    #[test]
    fn values_and_keys_are_indexed_by_dotted_path() {
        let index = Index::build(TEXT);
        assert_eq!(index.value("server.listen"), at(2, 11));
        assert_eq!(index.key("server.listen"), at(2, 3));
        assert_eq!(index.value("upstreams.orders.endpoints[0]"), at(5, 17));
        assert_eq!(index.value("upstreams.orders.endpoints[1]"), at(5, 31));
        assert_eq!(index.value("routes[1].upstream"), at(10, 15));
        assert_eq!(index.key("routes[1].upstream"), at(10, 5));
        assert_eq!(index.value("routes[1]"), at(9, 5));
        assert_eq!(
            index.value("partners[0].identities[1].fingerprint_sha256"),
            at(15, 29)
        );
    }

    #[test]
    fn a_missing_path_falls_back_to_its_nearest_ancestor() {
        let index = Index::build(TEXT);
        // routes[0] is a sequence item: no key, so its value (first entry) is used.
        assert_eq!(index.locate("routes[0].scope"), at(7, 5));
        // server is a mapping entry: its key is used.
        assert_eq!(index.locate("server.tls.certificates"), at(1, 1));
        assert_eq!(index.locate("admin.listen"), at(1, 1));
    }

    #[test]
    fn duplicate_keys_are_recorded() {
        let index = Index::build("a: 1\nb: 2\na: 3\n");
        let dup = index.duplicate_at(at(3, 1).unwrap()).unwrap();
        assert_eq!(dup.path, "a");
        assert_eq!(
            (dup.first, dup.again),
            (Pos { line: 1, column: 1 }, Pos { line: 3, column: 1 })
        );
        assert_eq!(index.value("a"), at(1, 4));
    }

    #[test]
    fn complex_keys_do_not_derail_the_walk() {
        let index = Index::build("? [a, b]\n: 1\nc: 2\n");
        assert_eq!(index.value("c"), at(3, 4));
    }

    #[test]
    fn broken_yaml_keeps_what_was_read_before_the_error() {
        let index = Index::build("a: 1\nb: [1, 2\n");
        assert_eq!(index.value("a"), at(1, 4));
        assert_eq!(index.locate("c"), at(1, 1));
    }

    #[test]
    fn a_position_names_the_key_value_or_mapping_written_there() {
        let index = Index::build(TEXT);
        let pos = |line, column| Pos { line, column };
        assert_eq!(index.key_at(pos(10, 5)), Some("routes[1].upstream"));
        assert_eq!(index.mapping_of_key_at(pos(10, 5)), Some("routes[1]"));
        assert_eq!(index.value_at(pos(10, 15)), Some("routes[1].upstream"));
        // A list item's mapping starts where its first key does: the deepest value is named.
        assert_eq!(index.value_at(pos(9, 5)), Some("routes[1]"));
        assert_eq!(
            index.node("upstreams.orders.endpoints"),
            Some(Node::Sequence)
        );
        assert_eq!(index.node("routes[1]"), Some(Node::Mapping));
        assert_eq!(index.node("routes[1].name"), Some(Node::Scalar));
    }

    #[test]
    fn an_index_built_until_a_position_stops_there() {
        let index = Index::build_until(TEXT, Some(Pos { line: 9, column: 5 }));
        assert_eq!(index.value("routes[0].upstream"), at(8, 15));
        assert_eq!(index.value("routes[1].name"), None);
        assert_eq!(index.value("partners"), None);
    }
}
