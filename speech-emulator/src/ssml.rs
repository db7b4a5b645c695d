//! A small, strict-enough SSML reader: checks that the document is well-formed XML with a
//! `<speak>` root, and extracts what the emulator voices (the text) and reports (bookmarks).
//!
//! The service rejects malformed SSML (REST `400`, websocket close `1007`), so the emulator
//! must too; it needs no more of XML than elements, attributes, text, entities, comments,
//! CDATA and processing instructions.

use std::fmt;

/// What the emulator takes from a valid SSML document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ssml {
    /// The spoken text: all text nodes inside `<speak>`, whitespace collapsed to single spaces.
    pub text: String,
    /// `<bookmark mark="…"/>` names with the character index in `text` where each sits.
    pub bookmarks: Vec<(String, usize)>,
    /// The `name` of the first `<voice>` element, if any.
    pub voice: Option<String>,
}

/// Why a document is not acceptable SSML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmlError {
    /// Byte offset where reading failed.
    pub at: usize,
    /// What was wrong.
    pub reason: &'static str,
}

impl fmt::Display for SsmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SSML at byte {}: {}", self.at, self.reason)
    }
}

impl std::error::Error for SsmlError {}

/// Parses `doc` as SSML.
pub fn parse(doc: &str) -> Result<Ssml, SsmlError> {
    Reader {
        s: doc.as_bytes(),
        doc,
        i: 0,
    }
    .document()
}

struct Reader<'a> {
    s: &'a [u8],
    doc: &'a str,
    i: usize,
}

impl Reader<'_> {
    fn err<T>(&self, reason: &'static str) -> Result<T, SsmlError> {
        Err(SsmlError { at: self.i, reason })
    }

    fn starts(&self, p: &str) -> bool {
        self.s[self.i..].starts_with(p.as_bytes())
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    /// Skips past the next `end`, failing if it never comes.
    fn skip_past(&mut self, end: &str, reason: &'static str) -> Result<usize, SsmlError> {
        match find(&self.s[self.i..], end.as_bytes()) {
            Some(k) => {
                let start = self.i;
                self.i += k + end.len();
                Ok(start)
            }
            None => self.err(reason),
        }
    }

    /// Skips comments, processing instructions and (outside the root) a DOCTYPE.
    fn misc(&mut self, allow_doctype: bool) -> Result<bool, SsmlError> {
        if self.starts("<!--") {
            self.skip_past("-->", "unterminated comment")?;
            Ok(true)
        } else if self.starts("<?") {
            self.skip_past("?>", "unterminated processing instruction")?;
            Ok(true)
        } else if allow_doctype && self.starts("<!DOCTYPE") {
            self.skip_past(">", "unterminated DOCTYPE")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn document(mut self) -> Result<Ssml, SsmlError> {
        if self.starts("\u{feff}") {
            self.i += 3;
        }
        loop {
            self.skip_ws();
            if !self.misc(true)? {
                break;
            }
        }
        if !self.starts("<") {
            return self.err("document does not start with an element");
        }
        let mut out = Ssml::default();
        let mut raw_text = String::new();
        let root = self.element(&mut out, &mut raw_text, 0)?;
        if local(&root) != "speak" {
            return Err(SsmlError {
                at: 0,
                reason: "root element is not <speak>",
            });
        }
        loop {
            self.skip_ws();
            if self.i >= self.s.len() {
                break;
            }
            if !self.misc(false)? {
                return self.err("content after the root element");
            }
        }
        out.text = collapse(&raw_text, &mut out.bookmarks);
        Ok(out)
    }

    fn name(&mut self) -> Result<String, SsmlError> {
        let start = self.i;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            if c.is_ascii_alphanumeric() || matches!(c, b'_' | b':' | b'-' | b'.') || c >= 0x80 {
                self.i += 1;
            } else {
                break;
            }
        }
        if self.i == start || self.s[start].is_ascii_digit() || matches!(self.s[start], b'-' | b'.')
        {
            return self.err("expected a name");
        }
        Ok(self.doc[start..self.i].to_owned())
    }

    /// Reads one element (the reader is at `<`) and everything inside it.
    fn element(
        &mut self,
        out: &mut Ssml,
        text: &mut String,
        depth: usize,
    ) -> Result<String, SsmlError> {
        if depth > 64 {
            return self.err("elements nested too deeply");
        }
        self.i += 1;
        let name = self.name()?;
        let mut attrs = Vec::new();
        loop {
            let before = self.i;
            self.skip_ws();
            if self.starts("/>") {
                self.i += 2;
                self.on_element(&name, &attrs, out, text);
                return Ok(name);
            }
            if self.starts(">") {
                self.i += 1;
                break;
            }
            if self.i == before {
                return self.err("expected whitespace before an attribute");
            }
            let an = self.name()?;
            self.skip_ws();
            if !self.starts("=") {
                return self.err("attribute without a value");
            }
            self.i += 1;
            self.skip_ws();
            let quote = match self.s.get(self.i) {
                Some(&q @ (b'"' | b'\'')) => q,
                _ => return self.err("attribute value not quoted"),
            };
            self.i += 1;
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i] != quote {
                if self.s[self.i] == b'<' {
                    return self.err("'<' in an attribute value");
                }
                self.i += 1;
            }
            if self.i >= self.s.len() {
                return self.err("unterminated attribute value");
            }
            let value = self.unescape(start, self.i)?;
            self.i += 1;
            if attrs.iter().any(|(n, _): &(String, String)| *n == an) {
                return self.err("duplicate attribute");
            }
            attrs.push((an, value));
        }
        self.on_element(&name, &attrs, out, text);
        // Content until the matching end tag.
        loop {
            if self.i >= self.s.len() {
                return self.err("missing end tag");
            }
            if self.starts("</") {
                self.i += 2;
                let end = self.name()?;
                self.skip_ws();
                if !self.starts(">") || end != name {
                    return self.err("mismatched end tag");
                }
                self.i += 1;
                // Element boundaries separate words, as the service treats them.
                text.push(' ');
                return Ok(name);
            } else if self.starts("<![CDATA[") {
                self.i += 9;
                let start = self.skip_past("]]>", "unterminated CDATA")?;
                text.push_str(&self.doc[start..self.i - 3]);
            } else if self.misc(false)? {
                continue;
            } else if self.starts("<") {
                self.element(out, text, depth + 1)?;
            } else {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != b'<' {
                    self.i += 1;
                }
                let t = self.unescape(start, self.i)?;
                text.push_str(&t);
            }
        }
    }

    fn on_element(
        &self,
        name: &str,
        attrs: &[(String, String)],
        out: &mut Ssml,
        text: &mut String,
    ) {
        let attr = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match local(name) {
            "bookmark" => {
                if let Some(mark) = attr("mark") {
                    // Marked with a private-use character; `collapse` turns it into an index.
                    out.bookmarks.push((mark, 0));
                    text.push(BOOKMARK);
                }
            }
            "voice" if out.voice.is_none() => out.voice = attr("name"),
            _ => {}
        }
    }

    fn unescape(&self, start: usize, end: usize) -> Result<String, SsmlError> {
        let raw = &self.doc[start..end];
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            let after = &rest[amp + 1..];
            let Some(semi) = after.find(';') else {
                return Err(SsmlError {
                    at: start,
                    reason: "unterminated entity",
                });
            };
            let ent = &after[..semi];
            let ch = match ent {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ if ent.starts_with("#x") || ent.starts_with("#X") => {
                    u32::from_str_radix(&ent[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if ent.starts_with('#') => ent[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            match ch {
                Some(c) => out.push(c),
                None => {
                    return Err(SsmlError {
                        at: start,
                        reason: "unknown entity",
                    });
                }
            }
            rest = &after[semi + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

const BOOKMARK: char = '\u{e000}';

fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Collapses whitespace runs to one space, trims, and resolves bookmark markers to the
/// character index where each bookmark sits in the result.
fn collapse(raw: &str, bookmarks: &mut [(String, usize)]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = 0usize;
    let mut pending_space = false;
    let mut next_mark = 0usize;
    for c in raw.chars() {
        if c == BOOKMARK {
            if let Some(b) = bookmarks.get_mut(next_mark) {
                b.1 = chars + usize::from(pending_space && chars > 0);
            }
            next_mark += 1;
        } else if c.is_whitespace() {
            pending_space = true;
        } else {
            if pending_space && chars > 0 {
                out.push(' ');
                chars += 1;
            }
            pending_space = false;
            out.push(c);
            chars += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_style_ssml() {
        let s = parse(
            "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' \
             xmlns:mstts='http://www.w3.org/2001/mstts' xml:lang='en-US'>\
             <voice name='en-US-JennyNeural'>Hello &amp; <bookmark mark='b1'/>good\n  bye</voice></speak>",
        )
        .expect("valid");
        assert_eq!(s.text, "Hello & good bye");
        assert_eq!(s.voice.as_deref(), Some("en-US-JennyNeural"));
        assert_eq!(s.bookmarks, vec![("b1".to_owned(), 8)]);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "hello",
            "<speak>",
            "<speak></voice>",
            "<voice>x</voice>",
            "<speak a=1></speak>",
            "<speak>&bogus;</speak>",
            "<speak></speak><speak></speak>",
            "<speak><a></speak></a>",
            "<speak a='1' a='2'/>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse("<?xml version='1.0'?><!-- c --><speak><![CDATA[x<y]]></speak>").is_ok());
        let deep = "<speak>".to_owned() + &"<p>".repeat(100) + &"</p>".repeat(100) + "</speak>";
        assert!(parse(&deep).is_err());
    }
}
