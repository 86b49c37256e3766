//! The request of Google's portpicker protocol, as the portserver endpoint reads it: the
//! client's pid as decimal digits on one line (`portpicker.py` sends `"{pid}\n"`); the answer
//! is a port number on one line, or nothing.

/// The pid of a request: the text up to the first newline, trimmed, all digits.
pub fn parse_request(bytes: &[u8]) -> Option<u32> {
    let line = bytes.split(|&b| b == b'\n').next()?;
    // ASCII whitespace only: `str::trim` would also take a vertical tab or Unicode spaces.
    let text = line.trim_ascii();
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_portpicker_sends_and_nothing_else() {
        assert_eq!(parse_request(b"4121\n"), Some(4121));
        assert_eq!(parse_request(b"4121"), Some(4121));
        assert_eq!(parse_request(b" 4121\r\n"), Some(4121));
        for bad in [
            &b""[..],
            b"\n",
            b"-5\n",
            b"+5\n",
            b"12a\n",
            b"99999999999\n",
            b"\xff\n",
            // Found by fuzz/ (portserver_request): not ASCII whitespace, so not a request.
            b"1\x0b\x0b",
            "\u{2003}7\n".as_bytes(),
        ] {
            assert_eq!(parse_request(bad), None, "{bad:?}");
        }
        // Only the first line counts.
        assert_eq!(parse_request(b"7\ngarbage"), Some(7));
    }
}
