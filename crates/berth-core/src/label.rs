//! A reservation's label: free text a person reads — the test or job the ports are for.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::error::ErrorKind;

/// The longest label, in bytes of UTF-8.
pub const MAX_LABEL_LEN: usize = 128;

/// A validated label: 1 to [`MAX_LABEL_LEN`] bytes of UTF-8 with no unprintable character
/// ([`crate::text::is_unprintable`]), so that printing another user's label can neither break
/// a listing's lines, send escape sequences to an administrator's terminal, nor pass for
/// another label with invisible characters. Cheap to clone (reservations are copied into
/// every change the daemon publishes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(Arc<str>);

/// Why a text is not a label.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LabelError {
    /// Longer than [`MAX_LABEL_LEN`].
    #[error(
        "a label of {len} bytes is too long; labels have at most {MAX_LABEL_LEN} bytes of UTF-8"
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// It has an unprintable character (a newline, a tab, an escape, a zero-width space …).
    #[error("a label may not hold control characters, line separators, bidirectional-text controls or invisible characters (found U+{code:04X} at byte {at}); use plain visible text on one line")]
    Control {
        /// The character's code point.
        code: u32,
        /// Its byte offset.
        at: usize,
    },
}

impl LabelError {
    /// Always [`ErrorKind::InvalidArgument`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

impl Label {
    /// The label `text`, or `None` for an empty text (no label).
    pub fn parse(text: &str) -> Result<Option<Label>, LabelError> {
        if text.is_empty() {
            return Ok(None);
        }
        if text.len() > MAX_LABEL_LEN {
            return Err(LabelError::TooLong { len: text.len() });
        }
        if let Some((at, c)) = text
            .char_indices()
            .find(|&(_, c)| crate::text::is_unprintable(c))
        {
            return Err(LabelError::Control {
                code: u32::from(c),
                at,
            });
        }
        Ok(Some(Label(text.into())))
    }

    /// A label as this or an earlier release stored it (database or journal). Earlier
    /// releases took invisible characters that today's rule refuses: such a label is kept,
    /// each of them shown as `?`, rather than refused with its reservation. A text no release
    /// took (a control character, an over-long text) is refused as [`Label::parse`] refuses
    /// it: it was not written by berth.
    pub fn from_stored(text: &str) -> Result<Option<Label>, LabelError> {
        match Label::parse(text) {
            Err(LabelError::Control { .. }) if !text.chars().any(refused_by_every_release) => {
                Label::parse(&crate::text::printable(text))
            }
            other => other,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What labels were refused for from the first release on: control characters, line and
/// paragraph separators, and bidirectional-text controls.
fn refused_by_every_release(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_no_label() {
        assert_eq!(Label::parse(""), Ok(None));
    }

    #[test]
    fn plain_text_up_to_the_limit_is_kept() {
        let text = "é".repeat(MAX_LABEL_LEN / 2);
        assert_eq!(Label::parse(&text).unwrap().unwrap().as_str(), text);
        let label = Label::parse("tests::login (shard 3/8)").unwrap().unwrap();
        assert_eq!(label.to_string(), "tests::login (shard 3/8)");
    }

    #[test]
    fn too_long_and_control_characters_are_refused() {
        let err = Label::parse(&"x".repeat(MAX_LABEL_LEN + 1)).unwrap_err();
        assert_eq!(err, LabelError::TooLong { len: 129 });
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("at most 128 bytes"), "{err}");
        for (text, code, at) in [
            ("a\nb", 0x0a, 1),
            ("\u{1b}[31m", 0x1b, 0),
            ("x\u{85}", 0x85, 1),
            ("ab\u{202e}cd", 0x202e, 2),
            ("\u{2028}", 0x2028, 0),
            ("\u{2067}x", 0x2067, 0),
            ("ci\u{200b}-job", 0x200b, 2),
            ("\u{feff}job", 0xfeff, 0),
            ("job\u{e0041}", 0xe0041, 3),
        ] {
            assert_eq!(
                Label::parse(text),
                Err(LabelError::Control { code, at }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_stored_label_that_no_longer_reads_is_kept_with_question_marks() {
        let kept = |text: &str| Label::from_stored(text).map(|l| l.map(|l| l.to_string()));
        assert_eq!(
            kept("ci\u{200b}-job\u{feff}"),
            Ok(Some("ci?-job?".to_owned()))
        );
        assert_eq!(kept("plain"), Ok(Some("plain".to_owned())));
        assert_eq!(kept(""), Ok(None));
        // What no release took is still refused.
        assert_eq!(
            kept("a\u{1b}[31m\u{200b}"),
            Err(LabelError::Control { code: 0x1b, at: 1 })
        );
        assert!(kept(&"x".repeat(MAX_LABEL_LEN + 1)).is_err());
    }
}
