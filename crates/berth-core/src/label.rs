//! A reservation's label: free text a person reads — the test or job the ports are for.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::error::ErrorKind;

/// The longest label, in bytes of UTF-8.
pub const MAX_LABEL_LEN: usize = 128;

/// A validated label: 1 to [`MAX_LABEL_LEN`] bytes of UTF-8 with no control characters, so
/// that printing another user's label can neither break a listing's lines nor send escape
/// sequences to an administrator's terminal. Cheap to clone (reservations are copied into
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
    /// It has a control character (a newline, a tab, an escape …).
    #[error("a label may not hold control characters, line separators or bidirectional-text controls (found U+{code:04X} at byte {at}); use plain text on one line")]
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
        if let Some((at, c)) = text.char_indices().find(|&(_, c)| unprintable(c)) {
            return Err(LabelError::Control {
                code: u32::from(c),
                at,
            });
        }
        Ok(Some(Label(text.into())))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A character that must not reach another person's terminal from a label: a control
/// character, a line or paragraph separator, or a bidirectional-text control (which can make a
/// listing read other than it is).
fn unprintable(c: char) -> bool {
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
        ] {
            assert_eq!(
                Label::parse(text),
                Err(LabelError::Control { code, at }),
                "{text:?}"
            );
        }
    }
}
