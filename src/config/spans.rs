//! A span-preserving view of a TOML document, used only to point errors at `file:line:column` and a key path.
//!
//! The schema types in [`super::schema`] stay plain serde structs; this tree is parsed from the same text and
//! answers two questions: "where is the value at this key path?" and "which key path covers this byte offset?".

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A key path such as `flavor[1].provisioners[0].script`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_string()));
        KeyPath(segments)
    }

    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        KeyPath(segments)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A TOML value with the byte span of every key and value below it.
#[derive(Debug)]
pub enum Node {
    Table(Vec<(Spanned<String>, Spanned<Node>)>),
    Array(Vec<Spanned<Node>>),
    Scalar,
}

impl Node {
    /// Parses `text`; `None` when the text is not TOML (the schema parse reports that error itself).
    pub fn parse(text: &str) -> Option<Spanned<Node>> {
        toml::from_str::<Spanned<Node>>(text).ok()
    }
}

/// Where a key path points in the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub span: Range<usize>,
    /// The deepest part of the requested path that exists in the document.
    pub found: KeyPath,
}

/// Finds the value at `path`, or the deepest existing ancestor when part of the path is absent.
pub fn locate(root: &Spanned<Node>, path: &KeyPath) -> Located {
    let mut node = root;
    let mut found = KeyPath::root();
    for segment in path.segments() {
        let next = match (node.get_ref(), segment) {
            (Node::Table(entries), Segment::Key(key)) => {
                entries.iter().find(|(name, _)| name.get_ref() == key).map(|(_, value)| value)
            }
            (Node::Array(items), Segment::Index(index)) => items.get(*index),
            _ => None,
        };
        match next {
            Some(child) => {
                node = child;
                found.0.push(segment.clone());
            }
            None => break,
        }
    }
    Located { span: node.span(), found }
}

/// The key path an error at `offset` belongs to: the narrowest key or value covering it, else the nearest
/// one before it. (Spans of `[table]` and `[[array]]` values cover only their headers, not their bodies.)
pub fn path_at(root: &Spanned<Node>, offset: usize) -> KeyPath {
    let mut entries = Vec::new();
    flatten(root, &KeyPath::root(), &mut entries);
    let covering = entries.iter().filter(|(_, span)| span.contains(&offset)).min_by_key(|(_, span)| span.len());
    let preceding = || entries.iter().filter(|(_, span)| span.start <= offset).max_by_key(|(_, span)| span.start);
    covering.or_else(preceding).map(|(path, _)| path.clone()).unwrap_or_default()
}

/// Every key and value below `node` with the path it belongs to.
fn flatten(node: &Spanned<Node>, path: &KeyPath, out: &mut Vec<(KeyPath, Range<usize>)>) {
    match node.get_ref() {
        Node::Table(entries) => {
            for (name, value) in entries {
                let child = path.key(name.get_ref());
                out.push((child.clone(), name.span()));
                out.push((child.clone(), value.span()));
                flatten(value, &child, out);
            }
        }
        Node::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let child = path.index(index);
                out.push((child.clone(), item.span()));
                flatten(item, &child, out);
            }
        }
        Node::Scalar => {}
    }
}

/// 1-based line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

macro_rules! scalar_visits {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method<E: de::Error>(self, _value: $ty) -> Result<Node, E> { Ok(Node::Scalar) })*
    };
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any TOML value")
    }

    scalar_visits!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Table(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[fleet]\nname = \"n\"\n\n[[flavor]]\nname = \"a\"\n\n[[flavor]]\nname = \"b\"\nprovisioners = [\n  { type = \"shell\", script = \"x.sh\" },\n]\n";

    #[test]
    fn locates_nested_values_by_path() {
        let root = Node::parse(TEXT).unwrap();
        let path = KeyPath::root().key("flavor").index(1).key("provisioners").index(0).key("script");
        let located = locate(&root, &path);
        assert_eq!(located.found, path);
        assert_eq!(&TEXT[located.span.clone()], "\"x.sh\"");
        assert_eq!(line_column(TEXT, located.span.start), (10, 30));
        assert_eq!(path.to_string(), "flavor[1].provisioners[0].script");
    }

    #[test]
    fn missing_tail_falls_back_to_deepest_ancestor() {
        let root = Node::parse(TEXT).unwrap();
        let located = locate(&root, &KeyPath::root().key("flavor").index(0).key("tags"));
        assert_eq!(located.found, KeyPath::root().key("flavor").index(0));
    }

    #[test]
    fn path_at_offset_names_the_key() {
        let root = Node::parse(TEXT).unwrap();
        let offset = TEXT.find("x.sh").unwrap();
        assert_eq!(path_at(&root, offset).to_string(), "flavor[1].provisioners[0].script");
    }
}
