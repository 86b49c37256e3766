//! A reservation's name: how programs find its ports (`berth port shop/web`), and how the
//! daemon gives the same block to the same name again.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::error::ErrorKind;

/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// A validated name: segments of `[a-z0-9][a-z0-9._-]*` joined by `/` (`shop/web`,
/// `ci/run-42/db`), at most [`MAX_NAME_LEN`] bytes. Lower case only, so that a name is written
/// one way; no empty segment, so that `a//b` and `a/` are not names. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

/// Why a text is not a name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// Longer than [`MAX_NAME_LEN`].
    #[error("a name of {len} bytes is too long; names have at most {MAX_NAME_LEN} bytes")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Not segments of the allowed characters.
    #[error("{text:?} is not a name: names are segments of a-z, 0-9, '.', '_' and '-' joined by '/', each starting with a letter or digit (e.g. shop/web)")]
    Syntax {
        /// The text given (cut to the limit).
        text: String,
    },
}

impl NameError {
    /// Always [`ErrorKind::InvalidArgument`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

impl Name {
    /// The name `text`, or `None` for an empty text (no name).
    pub fn parse(text: &str) -> Result<Option<Name>, NameError> {
        if text.is_empty() {
            return Ok(None);
        }
        if text.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: text.len() });
        }
        let segment_ok = |segment: &str| {
            let mut bytes = segment.bytes();
            bytes
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && bytes.all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        };
        if !text.split('/').all(segment_ok) {
            return Err(NameError::Syntax {
                text: text.to_owned(),
            });
        }
        Ok(Some(Name(text.into())))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_segments() {
        for ok in ["shop/web", "a", "ci/run-42/db.primary", "x_1", "0", "ipp"] {
            assert_eq!(Name::parse(ok).unwrap().unwrap().as_str(), ok);
        }
        assert_eq!(Name::parse(""), Ok(None));
        for bad in [
            "Shop/web",
            "/web",
            "shop/",
            "shop//web",
            "-x",
            ".hidden",
            "a b",
            "é",
            "shop\\web",
            "a/.b",
        ] {
            assert!(
                matches!(Name::parse(bad), Err(NameError::Syntax { .. })),
                "{bad:?}"
            );
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(Name::parse(&long), Err(NameError::TooLong { len: 129 }));
        assert!(Name::parse(&long[1..]).is_ok());
        let err = Name::parse("Web").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("e.g. shop/web"), "{err}");
    }
}
