//! Text from elsewhere made safe to show on a terminal: [`escape_controls`], which every line the terminal
//! reporters print goes through (what an instance printed, failure messages quoting it, AWS's error messages),
//! so that nothing a provisioner prints can move the cursor, clear the screen, set the window title or ring the
//! bell of the person watching. The `--events` lines and the manifest carry the text itself, as JSON strings.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every character that could drive a terminal shown escaped, everything else as it is:
/// - a carriage return as `\r` (progress bars print them; raw, they overwrite the line shown);
/// - every other C0 control character but tab, and DEL, as `\xNN` (ESC as `\x1b`, BEL as `\x07`);
/// - the C1 control characters (U+0080 to U+009F, which some terminals obey as 8-bit escapes: U+009B is CSI)
///   and the bidirectional formatting characters (U+202A to U+202E, U+2066 to U+2069, which reorder what is
///   shown) as `\u{NNNN}`.
///
/// Tab stays a tab, and a backslash stays a backslash: the escaping is for safety, not an encoding (a line that
/// printed the four characters `\x1b` looks the same; the `--events` JSON has the exact text).
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for character in text.chars() {
        match character {
            '\r' => escaped.push_str("\\r"),
            _ if character.is_ascii_control() && character != '\t' => {
                let _ = write!(escaped, "\\x{:02x}", u32::from(character));
            }
            _ if needs_escape(character) => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(character));
            }
            _ => escaped.push(character),
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(character: char) -> bool {
    (character.is_control() && character != '\t')
        || matches!(character, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_control_characters_is_borrowed_as_it_is() {
        let text = "café\tdone, 100% \\ ok \u{fffd}";
        assert!(matches!(escape_controls(text), Cow::Borrowed(borrowed) if borrowed == text));
    }

    #[test]
    fn a_title_set_a_screen_clear_and_a_bell_are_shown_escaped() {
        assert_eq!(escape_controls("\u{1b}]0;pwned\u{7}"), "\\x1b]0;pwned\\x07");
        assert_eq!(escape_controls("\u{1b}[2J\u{1b}[H"), "\\x1b[2J\\x1b[H");
        assert_eq!(escape_controls(" 10%\r 20%\r"), " 10%\\r 20%\\r");
        assert_eq!(escape_controls("a\u{0}b\u{8}c\u{7f}d\ne"), "a\\x00b\\x08c\\x7fd\\x0ae");
    }

    #[test]
    fn c1_controls_and_bidirectional_overrides_are_shown_escaped() {
        assert_eq!(escape_controls("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(escape_controls("\u{85}"), "\\u{85}");
        assert_eq!(escape_controls("abc\u{202e}fed\u{2069}"), "abc\\u{202e}fed\\u{2069}");
    }

    #[test]
    fn what_is_escaped_has_no_control_character_left() {
        let every: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let escaped = escape_controls(&every);
        assert!(!escaped.chars().any(needs_escape), "{escaped}");
        assert!(escaped.contains('\t'));
    }
}
