//! The items of a JSON `kind: List` (`kubectl get ... -o json`), one at a
//! time, read in chunks: each item's bytes are cut out by a small scanner
//! (strings, escapes and nesting only) and parsed from memory, several
//! times faster than serde_json's reader-based parser, while memory stays
//! one item plus a read buffer, whatever the file's size.
//!
//! The scanner checks the structure (balanced, one comma between items,
//! nothing after the end); serde_json checks each item and, at the end, the
//! rest of the document (the items replaced by `[]`). A text whose top
//! level is not an object with an `items` array is reported as not a list,
//! for the caller's general path.

use std::io::Read;

use super::files::SyntaxError;

/// Where an item starts (1-based, like serde_json's positions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// A serde_json error inside an item, placed in the whole text.
    pub fn error_in_item(self, e: &serde_json::Error) -> SyntaxError {
        let column = if e.line() <= 1 { self.column + e.column().saturating_sub(1) } else { e.column() };
        SyntaxError { line: self.line + e.line().saturating_sub(1), column, message: e.to_string() }
    }
}

/// What a scan found.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    /// A top-level object with an `items` array; every item was handed over.
    List,
    /// Anything else (one object, a top-level array...): nothing was handed
    /// over.
    NotAList,
}

const CHUNK: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Items {
    /// Not in the items array (yet, or any more).
    Outside,
    /// Between `items` and its `:` or its value.
    Announced,
    /// Inside the array, between items (`expect_item`: a comma was just
    /// seen, or the array just opened; `first`: it just opened).
    Between { expect_item: bool, first: bool },
    /// Inside an item (a nested value, or a scalar).
    InItem { scalar: bool },
}

/// What one byte did to the current item.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Nothing,
    /// An item starts at this byte.
    Start,
    /// The item ends with this byte (`inclusive`) or just before it.
    End {
        inclusive: bool,
    },
}

struct Scanner {
    depth: u32,
    in_str: bool,
    escaped: bool,
    line: usize,
    column: usize,
    /// At depth 1: a key may come (after `{` or `,`).
    expect_key: bool,
    /// The depth-1 key being read, and the last complete one.
    key: Vec<u8>,
    reading_key: bool,
    items: Items,
    seen_items: bool,
    /// The document without its items (checked at the end).
    envelope: Vec<u8>,
    item: Vec<u8>,
    item_at: Position,
    top_closed: bool,
    started: bool,
}

fn syntax(line: usize, column: usize, message: &str) -> SyntaxError {
    SyntaxError { line, column, message: message.to_string() }
}

impl Scanner {
    fn new() -> Self {
        Self {
            depth: 0,
            in_str: false,
            escaped: false,
            line: 1,
            column: 0,
            expect_key: false,
            key: Vec::new(),
            reading_key: false,
            items: Items::Outside,
            seen_items: false,
            envelope: Vec::new(),
            item: Vec::new(),
            item_at: Position::default(),
            top_closed: false,
            started: false,
        }
    }

    fn err(&self, message: &str) -> SyntaxError {
        syntax(self.line, self.column, message)
    }

    /// Feeds one byte (the caller keeps the item's bytes, see `Step`).
    /// `Err(None)`: not a list.
    fn byte(&mut self, b: u8) -> Result<Step, Option<SyntaxError>> {
        if b == b'\n' {
            self.line += 1;
            self.column = 0;
        } else {
            self.column += 1;
        }
        if !matches!(self.items, Items::InItem { .. }) {
            self.envelope.push(b);
        }
        if self.in_str {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_str = false;
                if self.reading_key {
                    self.reading_key = false;
                }
            } else if self.reading_key {
                self.key.push(b);
            }
            return Ok(Step::Nothing);
        }
        let ws = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        if self.top_closed {
            return if ws { Ok(Step::Nothing) } else { Err(Some(self.err("trailing characters"))) };
        }
        if !self.started {
            if ws {
                return Ok(Step::Nothing);
            }
            if b != b'{' {
                return Err(None);
            }
            self.started = true;
        }
        match self.items {
            Items::InItem { scalar: true } if ws || b == b',' || b == b']' => {
                // The scalar ended at this byte, which is not part of it.
                self.items = Items::Between { expect_item: false, first: false };
                return self.after_item(b).map(|()| Step::End { inclusive: false });
            }
            Items::Between { expect_item, first } => {
                if ws {
                    return Ok(Step::Nothing);
                }
                match b {
                    b',' if !expect_item => {
                        // The envelope keeps an empty array.
                        self.envelope.pop();
                        self.items = Items::Between { expect_item: true, first: false };
                        return Ok(Step::Nothing);
                    }
                    b']' if !expect_item || first => {
                        self.depth -= 1;
                        self.items = Items::Outside;
                        return Ok(Step::Nothing);
                    }
                    b',' | b']' => return Err(Some(self.err("expected a value"))),
                    _ if !expect_item => return Err(Some(self.err("expected `,` or `]`"))),
                    _ => {
                        // An item starts at this byte.
                        self.envelope.pop();
                        self.item_at = Position { line: self.line, column: self.column };
                        self.items = Items::InItem { scalar: !matches!(b, b'{' | b'[') };
                        if matches!(b, b'{' | b'[') {
                            self.depth += 1;
                        } else if b == b'"' {
                            self.in_str = true;
                        }
                        return Ok(Step::Start);
                    }
                }
            }
            _ => {}
        }
        match b {
            b'"' => {
                self.in_str = true;
                if self.depth == 1 && self.expect_key && self.items == Items::Outside {
                    self.expect_key = false;
                    self.reading_key = true;
                    self.key.clear();
                }
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth == 1 {
                    self.expect_key = true;
                }
                if self.depth == 2 && b == b'[' && self.items == Items::Announced {
                    self.items = Items::Between { expect_item: true, first: true };
                    self.seen_items = true;
                } else if self.items == Items::Announced {
                    self.items = Items::Outside;
                }
            }
            b'}' | b']' => {
                if self.depth == 0 {
                    return Err(Some(self.err("unbalanced closing bracket")));
                }
                self.depth -= 1;
                if self.depth == 0 {
                    self.top_closed = true;
                }
                if self.items == (Items::InItem { scalar: false }) && self.depth == 2 {
                    self.items = Items::Between { expect_item: false, first: false };
                    // The item is complete; its bytes stay out of the envelope.
                    return Ok(Step::End { inclusive: true });
                }
            }
            b':' if self.depth == 1 && self.items == Items::Outside && self.key == b"items" => {
                self.items = Items::Announced;
                self.key.clear();
            }
            b',' if self.depth == 1 => {
                self.expect_key = true;
                if self.items == Items::Announced {
                    self.items = Items::Outside;
                }
            }
            _ if ws => {}
            _ => {
                if self.items == Items::Announced {
                    // `items` holds something other than an array.
                    self.items = Items::Outside;
                }
            }
        }
        Ok(Step::Nothing)
    }

    /// Bytes inside a string with no quote, backslash or newline among
    /// them (an item's bytes are kept by the caller).
    fn skip_in_string(&mut self, run: &[u8]) {
        self.column += run.len();
        if !matches!(self.items, Items::InItem { .. }) {
            self.envelope.extend_from_slice(run);
        }
    }

    /// The byte that ended a scalar item, seen from between items.
    fn after_item(&mut self, b: u8) -> Result<(), Option<SyntaxError>> {
        if b != b',' {
            self.envelope.push(b);
        }
        match b {
            b',' => self.items = Items::Between { expect_item: true, first: false },
            b']' => {
                self.depth -= 1;
                self.items = Items::Outside;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Scans `reader`, handing each item of the top-level `items` array to
/// `each` with its position; stops at the first error (from the scan, or
/// from `each`).
pub fn for_each_item(
    mut reader: impl Read,
    mut each: impl FnMut(&[u8], Position) -> Result<(), SyntaxError>,
    mut bytes: impl FnMut(&[u8]),
) -> Result<Shape, SyntaxError> {
    let mut s = Scanner::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(syntax(s.line, s.column, &format!("read failed: {e}"))),
        };
        bytes(&buf[..n]);
        // Where the current item starts in this chunk (its earlier bytes,
        // from previous chunks, are in `s.item`).
        let mut start = matches!(s.items, Items::InItem { .. }).then_some(0);
        let mut i = 0;
        while i < n {
            // Inside an object or array item (nearly every byte of a list):
            // only strings and nesting matter, in a tight loop.
            if s.items == (Items::InItem { scalar: false }) {
                let (mut depth, mut in_str, mut escaped) = (s.depth, s.in_str, s.escaped);
                let (mut lines, mut last_newline, mut ended) = (0, None, false);
                let mut j = i;
                while j < n {
                    let b = buf[j];
                    j += 1;
                    if in_str {
                        if escaped {
                            escaped = false;
                        } else if b == b'\\' {
                            escaped = true;
                        } else if b == b'"' {
                            in_str = false;
                        }
                    } else {
                        match b {
                            b'"' => in_str = true,
                            b'{' | b'[' => depth += 1,
                            b'}' | b']' => {
                                depth -= 1;
                                if depth == 2 {
                                    ended = true;
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    if b == b'\n' {
                        lines += 1;
                        last_newline = Some(j - 1);
                    }
                }
                (s.depth, s.in_str, s.escaped) = (depth, in_str, escaped);
                s.line += lines;
                s.column = match last_newline {
                    Some(p) => j - p - 1,
                    None => s.column + (j - i),
                };
                i = j;
                if ended {
                    s.items = Items::Between { expect_item: false, first: false };
                    let from = start.take().unwrap_or(0);
                    if s.item.is_empty() {
                        each(&buf[from..j], s.item_at)?;
                    } else {
                        s.item.extend_from_slice(&buf[from..j]);
                        each(&s.item, s.item_at)?;
                        s.item.clear();
                    }
                }
                continue;
            }
            // Most of a Kubernetes object is strings: skip to a string's
            // end (or escape) in a tight loop.
            if s.in_str && !s.escaped && !s.reading_key {
                let run = buf[i..n].iter().position(|b| matches!(b, b'"' | b'\\' | b'\n')).unwrap_or(n - i);
                if run > 0 {
                    s.skip_in_string(&buf[i..i + run]);
                    i += run;
                    continue;
                }
            }
            match s.byte(buf[i]) {
                Ok(Step::Nothing) => {}
                Ok(Step::Start) => {
                    s.item.clear();
                    start = Some(i);
                }
                Ok(Step::End { inclusive }) => {
                    let (from, to) = (start.take().unwrap_or(0), if inclusive { i + 1 } else { i });
                    if s.item.is_empty() {
                        each(&buf[from..to], s.item_at)?;
                    } else {
                        s.item.extend_from_slice(&buf[from..to]);
                        each(&s.item, s.item_at)?;
                        s.item.clear();
                    }
                }
                Err(Some(e)) => return Err(e),
                Err(None) => return Ok(Shape::NotAList),
            }
            i += 1;
        }
        if let Some(from) = start {
            s.item.extend_from_slice(&buf[from..n]);
        }
    }
    if !s.started {
        return Ok(Shape::NotAList);
    }
    if s.in_str || s.depth != 0 {
        return Err(s.err("EOF while parsing"));
    }
    if !s.seen_items {
        return Ok(Shape::NotAList);
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&s.envelope).map_err(|e| SyntaxError {
        line: e.line(),
        column: e.column(),
        message: format!("{e} (outside the items)"),
    })?;
    Ok(Shape::List)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str) -> Result<(Shape, Vec<String>), SyntaxError> {
        let mut out = Vec::new();
        let shape = for_each_item(
            text.as_bytes(),
            |item, _| {
                out.push(String::from_utf8_lossy(item).into_owned());
                Ok(())
            },
            |_| {},
        )?;
        Ok((shape, out))
    }

    #[test]
    fn the_items_of_a_list_come_out_whole_and_in_order() {
        let text = r#"{"apiVersion":"v1","items":[{"a":{"b":[1,2]},"s":"x}]\"y"}, {"c":"d"} ,[3],"str",7,null],"kind":"List","metadata":{}}"#;
        let (shape, got) = items(text).expect("parses");
        assert_eq!(shape, Shape::List);
        assert_eq!(
            got,
            [r#"{"a":{"b":[1,2]},"s":"x}]\"y"}"#, r#"{"c":"d"}"#, "[3]", r#""str""#, "7", "null"]
        );
    }

    #[test]
    fn an_empty_list_and_pretty_printed_lists_parse() {
        assert_eq!(items(r#"{"items":[],"kind":"List"}"#).expect("parses"), (Shape::List, vec![]));
        let pretty = "{\n  \"kind\": \"List\",\n  \"items\": [\n    {\n      \"x\": 1\n    },\n    {\"y\": 2}\n  ]\n}\n";
        let (shape, got) = items(pretty).expect("parses");
        assert_eq!(shape, Shape::List);
        assert_eq!(got.len(), 2);
        assert!(got[0].starts_with('{') && got[0].ends_with('}'));
    }

    #[test]
    fn a_key_named_items_deeper_down_is_not_the_list() {
        let (shape, got) = items(r#"{"kind":"Service","spec":{"items":[{"x":1}]}}"#).expect("parses");
        assert_eq!(shape, Shape::NotAList);
        assert!(got.is_empty());
        assert_eq!(items(r#"[{"kind":"Service"}]"#).expect("ok").0, Shape::NotAList);
        assert_eq!(items(r#"{"items":null}"#).expect("ok").0, Shape::NotAList);
    }

    #[test]
    fn broken_structure_is_refused_with_a_position() {
        for bad in [
            r#"{"items":[{"a":1} {"b":2}]}"#,
            r#"{"items":[{"a":1},,{"b":2}]}"#,
            r#"{"items":[{"a":1},]}"#,
            r#"{"items":[{"a":1}]"#,
            r#"{"items":[{"a":1}]} x"#,
            r#"{"items":[{"a":"unterminated}]}"#,
            r#"{"kind" "List","items":[]}"#,
        ] {
            assert!(items(bad).is_err(), "accepted: {bad}");
        }
        let e = items("{\"items\":[\n{\"a\":1},\n{\"b\":2}\n]\n} x").expect_err("trailing");
        assert_eq!(e.line, 5);
    }

    #[test]
    fn an_error_inside_an_item_is_placed_in_the_whole_text() {
        let text = "{\"items\":[\n  {\"a\":1},\n  {\"b\": tru}\n]}";
        let e = for_each_item(
            text.as_bytes(),
            |item, at| {
                serde_json::from_slice::<serde::de::IgnoredAny>(item)
                    .map(|_| ())
                    .map_err(|e| at.error_in_item(&e))
            },
            |_| {},
        )
        .expect_err("bad literal");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.column >= 9, "{e}");
    }

    #[test]
    fn items_that_span_read_chunks_come_out_whole() {
        let big = "x".repeat(CHUNK + 17);
        let text = format!(r#"{{"items":[{{"a":"{big}"}},{{"b":"{big}"}}],"kind":"List"}}"#);
        let (shape, got) = items(&text).expect("parses");
        assert_eq!(shape, Shape::List);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].len(), big.len() + 8);
    }

    fn value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z{}\\[\\]\",:\\\\ \n]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z\\[\\]{}\"]{0,5}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any list, compact or pretty, comes out as serde_json sees it.
        #[test]
        fn any_list_splits_into_the_items_serde_json_sees(
            items in proptest::collection::vec(value(), 0..6),
            pretty in proptest::bool::ANY,
        ) {
            let doc = serde_json::json!({"apiVersion": "v1", "items": items, "kind": "List"});
            let text = if pretty {
                serde_json::to_string_pretty(&doc).expect("json")
            } else {
                serde_json::to_string(&doc).expect("json")
            };
            let mut got = Vec::new();
            let shape = for_each_item(
                text.as_bytes(),
                |item, _| {
                    got.push(serde_json::from_slice::<serde_json::Value>(item).map_err(|e| SyntaxError {
                        line: 0,
                        column: 0,
                        message: e.to_string(),
                    })?);
                    Ok(())
                },
                |_| {},
            )
            .expect("a valid list");
            proptest::prop_assert_eq!(shape, Shape::List);
            proptest::prop_assert_eq!(got, items);
        }

        /// Cutting a valid list short is always refused.
        #[test]
        fn a_list_cut_short_is_refused(items in proptest::collection::vec(value(), 1..4), cut in 1usize..200) {
            let text = serde_json::to_string(&serde_json::json!({"items": items, "kind": "List"})).expect("json");
            let end = text.len().saturating_sub(cut.min(text.len() - 1));
            let r = for_each_item(&text.as_bytes()[..end], |item, at| {
                serde_json::from_slice::<serde::de::IgnoredAny>(item).map(|_| ()).map_err(|e| at.error_in_item(&e))
            }, |_| {});
            proptest::prop_assert!(!matches!(r, Ok(Shape::List)), "accepted {}", &text[..end]);
        }
    }
}
