//! The well-formedness check every SSML document passes before it reaches a connection.
//!
//! Azure parses SSML as XML and refuses a document that does not parse: the REST endpoint
//! answers 400, and the websocket endpoint closes the socket with 1007, which throws a
//! pooled connection away and costs the next turn a cold connect. Checking here turns both
//! into the same clear `BadRequest` before any connection is used, and makes the mock
//! backend refuse what Azure refuses.
//!
//! The check is deliberately narrow: XML syntax (tags closed, in order, once; attributes
//! well-formed; nothing but markup around one root element) and a root element named
//! `speak`. What only Azure can judge (voices, entities it knows, SSML vocabulary) is left
//! to Azure, so no document Azure accepts is refused here.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::error::SpeechError;

/// Where the reader is relative to the root element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Before the root: only the prolog (declaration, comments, doctype, whitespace).
    Prolog,
    /// Inside the root, this many elements deep (1 is the root itself).
    Inside(usize),
    /// After the root closed: only comments, processing instructions and whitespace.
    Epilog,
}

/// Checks that `ssml` is well-formed XML with a single `<speak>` root element.
pub(crate) fn check_well_formed(ssml: &str) -> Result<(), SpeechError> {
    let mut reader = Reader::from_str(ssml);
    let mut place = Place::Prolog;
    loop {
        let event = reader.read_event().map_err(|e| {
            not_well_formed(reader.error_position(), &format_args!("{e}").to_string())
        })?;
        let at = reader.buffer_position();
        place = match (place, event) {
            (_, Event::Eof) => {
                return match place {
                    Place::Epilog => Ok(()),
                    Place::Prolog => Err(SpeechError::bad_request(
                        "SSML must have a <speak> root element",
                    )),
                    Place::Inside(_) => Err(not_well_formed(
                        at,
                        "the document ends before its elements are closed",
                    )),
                };
            }
            (Place::Prolog, Event::Start(tag)) => {
                root(&tag, at)?;
                Place::Inside(1)
            }
            (Place::Prolog, Event::Empty(tag)) => {
                root(&tag, at)?;
                Place::Epilog
            }
            (Place::Inside(depth), Event::Start(tag)) => {
                attributes(&tag, at)?;
                Place::Inside(depth + 1)
            }
            (Place::Inside(depth), Event::Empty(tag)) => {
                attributes(&tag, at)?;
                Place::Inside(depth)
            }
            // The reader checks that each end tag matches its start tag.
            (Place::Inside(1), Event::End(_)) => Place::Epilog,
            (Place::Inside(depth), Event::End(_)) => Place::Inside(depth - 1),
            (Place::Inside(depth), _) => Place::Inside(depth),
            (Place::Prolog | Place::Epilog, Event::Text(text)) => {
                if !text.trim_ascii().is_empty() {
                    return Err(not_well_formed(at, "text outside the <speak> root element"));
                }
                place
            }
            (Place::Prolog, Event::Decl(_) | Event::DocType(_)) => place,
            (Place::Prolog | Place::Epilog, Event::Comment(_) | Event::PI(_)) => place,
            (Place::Epilog, Event::Start(_) | Event::Empty(_)) => {
                return Err(not_well_formed(
                    at,
                    "a second element after the <speak> root element",
                ));
            }
            (_, _) => {
                return Err(not_well_formed(
                    at,
                    "markup outside the <speak> root element",
                ));
            }
        };
    }
}

/// The root element must be `speak` (with any namespace prefix) and well-formed.
fn root(tag: &BytesStart<'_>, at: u64) -> Result<(), SpeechError> {
    if tag.local_name().into_inner() != "speak" {
        return Err(SpeechError::bad_request(format!(
            "SSML must have a <speak> root element, not <{}>",
            tag.name().into_inner()
        )));
    }
    attributes(tag, at)
}

/// Every attribute of `tag` is well-formed: quoted, with a name, not repeated.
fn attributes(tag: &BytesStart<'_>, at: u64) -> Result<(), SpeechError> {
    for attribute in tag.attributes() {
        if let Err(e) = attribute {
            return Err(not_well_formed(at, &e.to_string()));
        }
    }
    Ok(())
}

fn not_well_formed(at: u64, why: &str) -> SpeechError {
    SpeechError::bad_request(format!(
        "SSML is not well-formed XML (near byte {at}): {why}"
    ))
}

#[cfg(test)]
mod tests {
    use super::check_well_formed;

    const ACCEPTED: &[&str] = &[
        "<speak/>",
        "<speak version='1.0' xml:lang='en-US'><voice name='en-US-AvaNeural'>Hi</voice></speak>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<speak version=\"1.0\">Hi</speak>\n",
        "<!-- a comment --><speak>Tom &amp; Jerry <break time='200ms'/> <![CDATA[a < b]]></speak>",
        "<speak><voice name='x'><mstts:express-as style='cheerful'>Hi</mstts:express-as></voice></speak>",
        "<ns:speak xmlns:ns='http://www.w3.org/2001/10/synthesis'>Hi</ns:speak>",
        "  <speak>Hi</speak>  <!-- trailing -->",
        "<speak>&nbsp;unknown entities are Azure's to judge</speak>",
    ];

    const REFUSED: &[(&str, &str)] = &[
        ("<speak", "not well-formed"),
        ("<speak>", "ends before its elements are closed"),
        ("<speak><voice name='x'>Hi</speak>", "not well-formed"),
        ("<speak>Hi</voice></speak>", "not well-formed"),
        (
            "<speak><voice name='x>Hi</voice></speak>",
            "not well-formed",
        ),
        (
            "<speak><voice name='a' name='b'>Hi</voice></speak>",
            "not well-formed",
        ),
        ("<speak><voice name=x>Hi</voice></speak>", "not well-formed"),
        ("<speak>Hi</speak><speak>again</speak>", "second element"),
        ("<speak>Hi</speak> trailing words", "text outside"),
        ("leading words <speak>Hi</speak>", "text outside"),
        (
            "<voice name='x'>Hi</voice>",
            "<speak> root element, not <voice>",
        ),
        ("just text", "text outside"),
        (
            "<!-- only a comment -->",
            "must have a <speak> root element",
        ),
    ];

    #[test]
    fn well_formed_ssml_with_a_speak_root_is_accepted() {
        for doc in ACCEPTED {
            assert!(
                check_well_formed(doc).is_ok(),
                "refused {doc:?}: {:?}",
                check_well_formed(doc)
            );
        }
    }

    #[test]
    fn malformed_ssml_is_refused_with_the_reason() {
        for (doc, reason) in REFUSED {
            let error = check_well_formed(doc).expect_err(doc).to_string();
            assert!(error.contains(reason), "{doc:?}: {error}");
        }
    }
}
