//! Where each value sits in the YAML text.
//!
//! serde_yaml only reports positions for errors it finds while deserialising. Problems found later
//! (an unknown upstream, a duplicate identity) would otherwise name a field but no line, and an
//! operator with a 500-line file needs the line. So the text is parsed a second time with
//! yaml-rust2's event parser, which carries a marker on every event, and each dotted path
//! (`routes[1].upstream`, `upstreams.orders.endpoints[0]`) is mapped to where its key and value
//! start. The paths use serde_yaml's own notation, so a shape error and a semantic error name the
//! same field the same way.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// The positions recorded for one path.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Where the mapping key starts; `None` for sequence items and the root.
    key: Option<Pos>,
    /// Where the value starts (for a block mapping or sequence: its first entry).
    value: Pos,
}

/// Dotted path → positions, built once per parse.
#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: HashMap<String, Entry>,
    /// Mapping keys written twice in one mapping: serde keeps the last silently, which would hide
    /// an upstream or a section, so validation reports them.
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

/// Receives yaml-rust2 events and fills an [`Index`].
#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    index: Index,
    /// Only the first document is indexed: serde_yaml refuses a file with more than one.
    done: bool,
}

// === impl Pos ===

impl Pos {
    /// yaml-rust2 markers count lines from 1 and columns from 0.
    fn from_marker(mark: Marker) -> Self {
        Self {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

// === impl Index ===

impl Index {
    /// Indexes `text`. YAML that does not parse yields an empty index: serde_yaml has already
    /// reported the syntax error with its position, and nothing else can be located anyway.
    pub(crate) fn build(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        match parser.load(&mut builder, false) {
            Ok(()) => builder.index,
            Err(_) => Index::default(),
        }
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

    pub(crate) fn duplicates(&self) -> &[Duplicate] {
        &self.duplicates
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
    /// Decides what a node starting at `pos` is: a key of the enclosing mapping (returns `None`)
    /// or a value, whose path is returned after recording its positions.
    fn place_node(&mut self, scalar: Option<&str>, pos: Pos) -> Option<String> {
        match self.stack.last_mut() {
            None => {
                self.index.entries.insert(
                    String::new(),
                    Entry {
                        key: None,
                        value: pos,
                    },
                );
                Some(String::new())
            }
            Some(Frame::ComplexKey { .. }) => None,
            Some(Frame::Sequence { path, next }) => {
                let child = format!("{path}[{next}]");
                *next += 1;
                self.index.entries.insert(
                    child.clone(),
                    Entry {
                        key: None,
                        value: pos,
                    },
                );
                Some(child)
            }
            Some(Frame::Mapping {
                path,
                pending_key,
                keys,
            }) => match pending_key.take() {
                None => {
                    // A key. Non-scalar keys cannot be named in a dotted path.
                    let key = scalar.unwrap_or("?").to_owned();
                    if keys.is_empty() {
                        // yaml-rust2 marks a block mapping's start after its first key (at the
                        // colon); the key itself is where an operator sees the mapping begin.
                        if let Some(entry) = self.index.entries.get_mut(path.as_str()) {
                            entry.value = entry.value.min(pos);
                        }
                    }
                    if let Some(first) = keys.get(&key) {
                        self.index.duplicates.push(Duplicate {
                            path: child_key(path, &key),
                            first: *first,
                            again: pos,
                        });
                    } else {
                        keys.insert(key.clone(), pos);
                    }
                    *pending_key = Some((key, pos));
                    None
                }
                Some((key, key_pos)) => {
                    let child = child_key(path, &key);
                    // The first occurrence of a duplicated key keeps its positions.
                    self.index.entries.entry(child.clone()).or_insert(Entry {
                        key: Some(key_pos),
                        value: pos,
                    });
                    Some(child)
                }
            },
        }
    }

    fn open(&mut self, pos: Pos, mapping: bool) {
        if let Some(Frame::ComplexKey { depth }) = self.stack.last_mut() {
            *depth += 1;
            return;
        }
        let frame = match self.place_node(None, pos) {
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
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(value, ..) => {
                if !matches!(self.stack.last(), Some(Frame::ComplexKey { .. })) {
                    self.place_node(Some(&value), pos);
                }
            }
            Event::Alias(_) => {
                if !matches!(self.stack.last(), Some(Frame::ComplexKey { .. })) {
                    self.place_node(None, pos);
                }
            }
            Event::MappingStart(..) => self.open(pos, true),
            Event::SequenceStart(..) => self.open(pos, false),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            Event::DocumentEnd => self.done = true,
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart => {}
        }
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
        let dup = &index.duplicates()[0];
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
    fn broken_yaml_gives_an_empty_index() {
        let index = Index::build("a: [1, 2\n");
        assert_eq!(index.locate("a"), None);
    }
}
