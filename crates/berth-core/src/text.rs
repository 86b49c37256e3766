//! Text from outside that berth shows to people: what may reach another user's terminal.
//!
//! Labels are given by clients and command names are chosen by any process (`prctl`, or the
//! name of the file it was started from), and both are printed in `berth list`, `berth why` and
//! the daemon's log, often to an administrator. A character that is not plain visible text
//! there could send escape sequences to that terminal, forge a line of a listing, reorder what
//! it shows (bidirectional-text controls), or make two different texts look the same
//! (invisible characters). [`is_unprintable`] names every such character; labels are refused
//! with one, and command names have each replaced by `?`, as `ps` does.

use std::borrow::Cow;

/// The character `?` that stands for an unprintable one, as `ps` shows it.
pub const REPLACEMENT: char = '?';

/// Whether `c` must not reach another person's terminal as it is. These are, by Unicode's
/// classes (Unicode 16.0, `UnicodeData.txt` and `DerivedCoreProperties.txt`):
/// - control characters (`Cc`: C0, DEL and C1, which include the escape and the newline);
/// - the line and paragraph separators (`Zl`, `Zp`);
/// - format characters (`Cf`): bidirectional-text controls, zero-width spaces and joiners,
///   the byte-order mark, the soft hyphen, tag characters and the like;
/// - the other default-ignorable code points (`Default_Ignorable_Code_Point`): characters a
///   terminal draws as nothing, such as variation selectors and the Hangul fillers.
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061c}'
                | '\u{06dd}'
                | '\u{070f}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08e2}'
                | '\u{115f}'..='\u{1160}'
                | '\u{17b4}'..='\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

/// `text` with each unprintable character (see [`is_unprintable`]) replaced by
/// [`REPLACEMENT`]; borrowed when it has none. Never longer than `text` in bytes.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unprintable) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if is_unprintable(c) { REPLACEMENT } else { c })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_of_any_script_is_printable() {
        for text in [
            "nginx",
            "tests::login (shard 3/8)",
            "é ü ß",
            "日本語",
            "שלום",
            "🚀",
        ] {
            assert!(
                matches!(printable(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn every_kind_of_unprintable_character_is_named() {
        for c in [
            '\0',
            '\n',
            '\t',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{9b}', // controls
            '\u{2028}',
            '\u{2029}', // separators
            '\u{202e}',
            '\u{2067}',
            '\u{200e}',
            '\u{061c}', // bidirectional controls
            '\u{200b}',
            '\u{200d}',
            '\u{2060}',
            '\u{feff}',
            '\u{00ad}', // invisible format
            '\u{e0041}',
            '\u{e0001}', // tags
            '\u{fe0f}',
            '\u{3164}',
            '\u{115f}',
            '\u{034f}', // other default-ignorables
        ] {
            assert!(is_unprintable(c), "U+{:04X}", u32::from(c));
        }
        for c in ['a', ' ', '?', '\u{a0}', 'é', '\u{2764}', '\u{1f680}'] {
            assert!(!is_unprintable(c), "U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn unprintable_characters_become_question_marks_and_never_lengthen_the_text() {
        let text = "\u{1b}[2J\nforged\u{200b}\u{feff}x";
        let shown = printable(text);
        assert_eq!(shown, "?[2J?forged??x");
        assert!(shown.len() <= text.len());
    }
}
