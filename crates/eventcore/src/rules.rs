//! What every store checks before it writes, so that anything an append
//! accepts reads back identically, on every store.
//!
//! The checks run on every event of every append, so they are byte scans:
//! a payload's JSON text is walked once, without building a JSON tree.

use std::borrow::Cow;

use chrono::{Datelike, Timelike};

use crate::{EventMetadata, InvalidEventReason, JsonPart, JsonProblem};

/// Deepest nesting of arrays and objects accepted in an event's data (the
/// outermost array or object is level 1) and in its custom metadata (the
/// custom map itself is level 1). serde_json reads at most 128 levels and
/// stores wrap payloads in their own structures, so this leaves headroom.
pub const MAX_JSON_DEPTH: usize = 64;

/// Longest accepted event type name, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 255;

/// Largest accepted schema version (stored as a signed 32-bit integer).
pub const MAX_SCHEMA_VERSION: u32 = i32::MAX as u32;

/// Most digits a JSON number may have after the decimal point, once its
/// exponent is applied, and the largest exponent magnitude: PostgreSQL's
/// `numeric`, which stores `jsonb` numbers, holds no more.
pub const MAX_NUMBER_SCALE: i64 = 16383;

/// What is wrong with a name (stream id or event type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameProblem {
    Empty,
    TooLong { len: usize, max: usize },
    Control { ch: char, index: usize },
    Invisible { ch: char, index: usize },
    SurroundingWhitespace,
}

/// Checks the rule shared by stream ids and event type names: non-empty, at
/// most `max` bytes, no control character (Unicode `Cc`), no invisible
/// format character (Unicode `Cf`, see [`is_invisible`]) and no line or
/// paragraph separator, no whitespace at either end.
pub(crate) fn check_name(name: &str, max: usize) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > max {
        return Err(NameProblem::TooLong {
            len: name.len(),
            max,
        });
    }
    let bytes = name.as_bytes();
    if bytes.is_ascii() {
        // ASCII: controls are < 0x20 and 0x7f; the only whitespace that is
        // not a control is the space.
        if let Some(index) = bytes.iter().position(|&b| b < 0x20 || b == 0x7f) {
            return Err(NameProblem::Control {
                ch: char::from(bytes[index]),
                index,
            });
        }
        if bytes[0] == b' ' || bytes[bytes.len() - 1] == b' ' {
            return Err(NameProblem::SurroundingWhitespace);
        }
        return Ok(());
    }
    for (index, ch) in name.char_indices() {
        if ch.is_control() {
            return Err(NameProblem::Control { ch, index });
        }
        if is_invisible(ch) {
            return Err(NameProblem::Invisible { ch, index });
        }
    }
    let starts = name.chars().next().is_some_and(char::is_whitespace);
    let ends = name.chars().next_back().is_some_and(char::is_whitespace);
    if starts || ends {
        return Err(NameProblem::SurroundingWhitespace);
    }
    Ok(())
}

/// Characters that render as nothing or reorder text, so two names that
/// look the same would differ: Unicode's format characters (general
/// category `Cf`, as of Unicode 16: soft hyphen, Arabic and Syriac marks,
/// Mongolian vowel separator, zero-width space/joiners, left-to-right and
/// right-to-left marks, bidi embeddings, overrides and isolates, word
/// joiner and invisible operators, byte order mark, interlinear
/// annotation, Brahmi/Kaithi/hieroglyph/shorthand/musical format controls,
/// tags), plus U+2028/U+2029 (line and paragraph separators), which break
/// lines. The whole U+2060-U+206F and U+E0000-U+E007F blocks are refused,
/// including their unassigned points.
pub(crate) fn is_invisible(ch: char) -> bool {
    matches!(
        u32::from(ch),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE007F
    )
}

/// The type name and schema version rules.
pub(crate) fn check_type_and_version(
    event_type: &str,
    schema_version: u32,
) -> Result<(), InvalidEventReason> {
    check_name(event_type, MAX_EVENT_TYPE_LEN).map_err(|p| InvalidEventReason::TypeName {
        problem: match p {
            NameProblem::Empty => "it is empty".to_owned(),
            NameProblem::TooLong { len, max } => {
                format!("it is {len} bytes long; the limit is {max}")
            }
            NameProblem::Control { ch, index } => {
                format!("control character {ch:?} at byte {index}")
            }
            NameProblem::Invisible { ch, index } => {
                format!("invisible character {ch:?} at byte {index}")
            }
            NameProblem::SurroundingWhitespace => "whitespace at its start or end".to_owned(),
        },
    })?;
    if schema_version == 0 || schema_version > MAX_SCHEMA_VERSION {
        return Err(InvalidEventReason::SchemaVersion {
            version: schema_version,
        });
    }
    Ok(())
}

/// `occurred_at` in years 1-9999, in whole microseconds (what SQL
/// timestamps keep) and without a leap second; custom entries within
/// [`MAX_JSON_DEPTH`], without NUL in strings or keys.
pub(crate) fn check_metadata(metadata: &EventMetadata) -> Result<(), InvalidEventReason> {
    let t = metadata.occurred_at;
    if !(1..=9999).contains(&t.year())
        || t.nanosecond() >= 1_000_000_000
        || !t.nanosecond().is_multiple_of(1_000)
    {
        return Err(InvalidEventReason::OccurredAt { occurred_at: t });
    }
    if metadata.custom.is_empty() {
        return Ok(());
    }
    check_custom(&metadata.custom, 1).map_err(|problem| InvalidEventReason::Json {
        part: JsonPart::CustomMetadata,
        problem,
    })
}

fn check_custom(
    map: &serde_json::Map<String, serde_json::Value>,
    depth: usize,
) -> Result<(), JsonProblem> {
    if depth > MAX_JSON_DEPTH {
        return Err(JsonProblem::TooDeep {
            limit: MAX_JSON_DEPTH,
        });
    }
    for (key, value) in map {
        if key.contains('\0') {
            return Err(JsonProblem::Nul { offset: None });
        }
        check_custom_value(value, depth)?;
    }
    Ok(())
}

fn check_custom_value(value: &serde_json::Value, depth: usize) -> Result<(), JsonProblem> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Err(JsonProblem::Nul { offset: None }),
        Value::Array(items) => {
            if depth + 1 > MAX_JSON_DEPTH {
                return Err(JsonProblem::TooDeep {
                    limit: MAX_JSON_DEPTH,
                });
            }
            items
                .iter()
                .try_for_each(|v| check_custom_value(v, depth + 1))
        }
        Value::Object(map) => check_custom(map, depth + 1),
        // serde_json numbers are integers or finite floats, which read back.
        _ => Ok(()),
    }
}

/// Checks that `text` is one JSON value (surrounding whitespace allowed)
/// that serde_json and PostgreSQL's `jsonb` both read back as written:
/// nested at most `max_depth` deep, no `\u0000` and no unpaired surrogate
/// escape in strings or keys, no key twice in one object, and numbers that
/// read as a finite `f64` with an exponent and a scale within
/// [`MAX_NUMBER_SCALE`].
pub(crate) fn check_json(text: &str, max_depth: usize) -> Result<(), JsonProblem> {
    Scanner {
        b: text.as_bytes(),
        text,
        i: 0,
    }
    .run(max_depth)
}

struct Scanner<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
}

/// An open array or object; objects remember where their keys start in the
/// shared key list.
#[derive(Clone, Copy)]
enum Frame {
    Array,
    Object { keys_from: usize },
}

impl<'a> Scanner<'a> {
    fn syntax(&self) -> JsonProblem {
        JsonProblem::Syntax { offset: self.i }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn run(mut self, max_depth: usize) -> Result<(), JsonProblem> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut keys: Vec<(u64, Cow<'a, str>)> = Vec::new();
        'value: loop {
            self.skip_ws();
            match self.peek().ok_or_else(|| self.syntax())? {
                open @ (b'{' | b'[') => {
                    if stack.len() >= max_depth {
                        return Err(JsonProblem::TooDeep { limit: max_depth });
                    }
                    self.i += 1;
                    self.skip_ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else if open == b'[' {
                        stack.push(Frame::Array);
                        continue 'value;
                    } else {
                        stack.push(Frame::Object {
                            keys_from: keys.len(),
                        });
                        self.key(&mut keys)?;
                        continue 'value;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return Err(self.syntax()),
            }
            // After a value: close containers or move to the next element.
            loop {
                self.skip_ws();
                match stack.last().copied() {
                    None => {
                        return if self.i == self.b.len() {
                            Ok(())
                        } else {
                            Err(self.syntax())
                        };
                    }
                    Some(frame) => match (frame, self.peek()) {
                        (_, Some(b',')) => {
                            self.i += 1;
                            if let Frame::Object { .. } = frame {
                                self.skip_ws();
                                self.key(&mut keys)?;
                            }
                            continue 'value;
                        }
                        (Frame::Array, Some(b']')) => {
                            self.i += 1;
                            stack.pop();
                        }
                        (Frame::Object { keys_from }, Some(b'}')) => {
                            self.i += 1;
                            stack.pop();
                            check_unique(&mut keys[keys_from..])?;
                            keys.truncate(keys_from);
                        }
                        _ => return Err(self.syntax()),
                    },
                }
            }
        }
    }

    /// An object key and its colon; the key joins `keys`.
    fn key(&mut self, keys: &mut Vec<(u64, Cow<'a, str>)>) -> Result<(), JsonProblem> {
        if self.peek() != Some(b'"') {
            return Err(self.syntax());
        }
        let start = self.i;
        let escaped = self.string()?;
        let text: &'a str = self.text;
        let quoted = &text[start..self.i];
        let key = if escaped {
            // Checked above, so this reads; escapes are rare in keys.
            Cow::Owned(serde_json::from_str::<String>(quoted).map_err(|_| self.syntax())?)
        } else {
            Cow::Borrowed(&quoted[1..quoted.len() - 1])
        };
        keys.push((fingerprint(&key), key));
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.syntax());
        }
        self.i += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonProblem> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    /// A string starting at the opening quote; returns whether it had
    /// escapes.
    fn string(&mut self) -> Result<bool, JsonProblem> {
        self.i += 1;
        let mut escaped = false;
        loop {
            // The common case: plain bytes up to the closing quote, eight
            // at a time while none of them needs a look.
            while let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
                if needs_look(word) {
                    break;
                }
                self.i += 8;
            }
            while let Some(&c) = self.b.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                // A raw control character, or the end of the text.
                _ => return Err(self.syntax()),
            }
        }
    }

    /// One escape sequence starting at its backslash.
    fn escape(&mut self) -> Result<(), JsonProblem> {
        let at = self.i;
        match self.b.get(self.i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 2;
                Ok(())
            }
            Some(b'u') => {
                let unit = self.hex4(self.i + 2)?;
                self.i += 6;
                match unit {
                    0 => Err(JsonProblem::Nul { offset: Some(at) }),
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by a low one.
                        let low = if self.b[self.i..].starts_with(b"\\u") {
                            self.hex4(self.i + 2)?
                        } else {
                            0
                        };
                        if (0xDC00..=0xDFFF).contains(&low) {
                            self.i += 6;
                            Ok(())
                        } else {
                            Err(JsonProblem::LoneSurrogate { offset: at })
                        }
                    }
                    0xDC00..=0xDFFF => Err(JsonProblem::LoneSurrogate { offset: at }),
                    _ => Ok(()),
                }
            }
            _ => Err(self.syntax()),
        }
    }

    fn hex4(&self, at: usize) -> Result<u32, JsonProblem> {
        let digits = self
            .b
            .get(at..at + 4)
            .ok_or(JsonProblem::Syntax { offset: at })?;
        digits.iter().try_fold(0_u32, |n, &c| {
            let d = char::from(c)
                .to_digit(16)
                .ok_or(JsonProblem::Syntax { offset: at })?;
            Ok(n * 16 + d)
        })
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    /// A number: JSON's grammar, then the range rules of [`check_json`].
    fn number(&mut self) -> Result<(), JsonProblem> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        let int_digits = self.digits();
        if int_digits == 0 || (int_digits > 1 && self.b[int_start] == b'0') {
            return Err(self.syntax());
        }
        let mut frac_digits = 0;
        let frac_start = self.i + 1;
        if self.peek() == Some(b'.') {
            self.i += 1;
            frac_digits = self.digits();
            if frac_digits == 0 {
                return Err(self.syntax());
            }
        }
        let mut exponent: i64 = 0;
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            let negative = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    true
                }
                Some(b'+') => {
                    self.i += 1;
                    false
                }
                _ => false,
            };
            let exp_start = self.i;
            if self.digits() == 0 {
                return Err(self.syntax());
            }
            // Saturates far beyond any accepted exponent.
            let magnitude = self.b[exp_start..self.i]
                .iter()
                .fold(0_i64, |n, &c| (n * 10 + i64::from(c - b'0')).min(1 << 40));
            exponent = if negative { -magnitude } else { magnitude };
        }
        // Plain integers of up to 18 digits: always fine.
        if frac_digits == 0 && exponent == 0 && int_digits <= 18 {
            return Ok(());
        }
        let out_of_range = JsonProblem::NumberOutOfRange { offset: start };
        if exponent.abs() > MAX_NUMBER_SCALE || frac_digits as i64 - exponent > MAX_NUMBER_SCALE {
            return Err(out_of_range);
        }
        // The decimal magnitude of the first significant digit decides
        // whether the value can exceed f64::MAX (about 1.8e308).
        let int_part = &self.b[int_start..int_start + int_digits];
        let magnitude = match int_part.iter().position(|&c| c != b'0') {
            Some(lead) => (int_digits - lead) as i64 + exponent,
            None => {
                let frac = if frac_digits > 0 {
                    &self.b[frac_start..frac_start + frac_digits]
                } else {
                    &[][..]
                };
                match frac.iter().position(|&c| c != b'0') {
                    Some(zeros) => exponent - zeros as i64,
                    // Zero: always fine.
                    None => return Ok(()),
                }
            }
        };
        if magnitude >= 308 {
            let finite = self.text[start..self.i]
                .parse::<f64>()
                .is_ok_and(f64::is_finite);
            if !finite {
                return Err(out_of_range);
            }
        }
        Ok(())
    }
}

/// Whether any byte of `word` is a quote, a backslash or below 0x20 (the
/// classic "has a zero byte" bit trick, exact for "any").
fn needs_look(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control != 0
}

/// A cheap fingerprint of a key, compared before the key itself.
fn fingerprint(key: &str) -> u64 {
    let mut h = key.len() as u64;
    for chunk in key.as_bytes().chunks(8) {
        let mut word = [0_u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h
}

/// Fails when two of one object's keys are equal. Small objects compare
/// pairwise (fingerprints first); larger ones sort (the keys are dropped
/// right after).
fn check_unique(keys: &mut [(u64, Cow<'_, str>)]) -> Result<(), JsonProblem> {
    let duplicate = |k: &Cow<'_, str>| JsonProblem::DuplicateKey {
        key: k.clone().into_owned(),
    };
    if keys.len() <= 16 {
        for (n, (h, k)) in keys.iter().enumerate() {
            if keys[..n].iter().any(|(g, j)| g == h && j == k) {
                return Err(duplicate(k));
            }
        }
    } else {
        keys.sort_unstable();
        if let Some(pair) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(duplicate(&pair[0].1));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> Option<JsonProblem> {
        check_json(text, MAX_JSON_DEPTH).err()
    }

    #[test]
    fn valid_json_passes_and_agrees_with_serde_json() {
        for text in [
            "{}",
            "[]",
            " {\"a\" : [1, -2.5e3, true, false, null, \"x\\n\\u00e9\\ud83d\\ude00\"]} ",
            "0",
            "-0",
            "\"\"",
            "123456789012345678901234567890",
            "1e308",
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "5e-324",
            "1e-400",
            "0e16383",
            "1e-16383",
            "0.000000000000000000001e-16362",
            "{\"a\":{\"a\":{\"a\":1}}}",
            "{\"a\":1,\"\\u0061b\":2}",
        ] {
            assert_eq!(problem(text), None, "{text}");
            serde_json::from_str::<serde_json::Value>(text).expect(text);
        }
    }

    #[test]
    fn invalid_json_is_a_syntax_error() {
        for text in [
            "",
            " ",
            "{",
            "[1,]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":1,}",
            "{a:1}",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "+1",
            "tru",
            "nul",
            "\"abc",
            "\"a\u{1}b\"",
            "\"\\x\"",
            "\"\\u12g4\"",
            "{} {}",
            "NaN",
            "Infinity",
        ] {
            assert!(
                matches!(problem(text), Some(JsonProblem::Syntax { .. })),
                "{text}: {:?}",
                problem(text)
            );
            assert!(serde_json::from_str::<serde_json::Value>(text).is_err());
        }
    }

    #[test]
    fn what_does_not_read_back_is_refused() {
        assert_eq!(
            problem("{\"a\":\"x\\u0000\"}"),
            Some(JsonProblem::Nul { offset: Some(7) })
        );
        assert!(matches!(
            problem("{\"\\u0000\":1}"),
            Some(JsonProblem::Nul { .. })
        ));
        for lone in [
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800x\"",
            "\"\\ud800\\u0041\"",
            "\"\\ud800\\ud800\"",
            "{\"\\udfff\":1}",
        ] {
            assert!(
                matches!(problem(lone), Some(JsonProblem::LoneSurrogate { .. })),
                "{lone}"
            );
        }
        for number in [
            "1e400",
            "-1e309",
            "1.8e308",
            &format!("1{}", "0".repeat(309)),
            "1e-16384",
            "0.5e-16383",
            "0e99999999999999999999",
            "1e-99999999999999999999",
            &format!("0.{}1", "0".repeat(16383)),
        ] {
            assert!(
                matches!(problem(number), Some(JsonProblem::NumberOutOfRange { .. })),
                "{number}"
            );
        }
        assert_eq!(
            problem("{\"a\":1,\"b\":{\"a\":1},\"a\":2}"),
            Some(JsonProblem::DuplicateKey { key: "a".into() })
        );
        assert_eq!(
            problem("{\"a\":1,\"\\u0061\":2}"),
            Some(JsonProblem::DuplicateKey { key: "a".into() })
        );
        let many: Vec<String> = (0..40).map(|n| format!("\"k{}\":{n}", n % 39)).collect();
        assert!(matches!(
            problem(&format!("{{{}}}", many.join(","))),
            Some(JsonProblem::DuplicateKey { .. })
        ));
        let distinct: Vec<String> = (0..40).map(|n| format!("\"k{n}\":{n}")).collect();
        assert_eq!(problem(&format!("{{{}}}", distinct.join(","))), None);
    }

    #[test]
    fn the_eight_byte_skip_sees_what_the_byte_loop_sees() {
        let looks = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
        for filler in [b'a', 0xc3, 0xff, b' ', 0x7f] {
            for at in 0..8 {
                for b in 0..=255_u8 {
                    let mut bytes = [filler; 8];
                    bytes[at] = b;
                    assert_eq!(
                        needs_look(u64::from_le_bytes(bytes)),
                        bytes.iter().any(|&c| looks(c)),
                        "{bytes:?}"
                    );
                }
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            assert_eq!(needs_look(x), bytes.iter().any(|&c| looks(c)), "{bytes:?}");
        }
    }

    #[test]
    fn depth_is_limited() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(problem(&nested(MAX_JSON_DEPTH)), None);
        assert_eq!(
            problem(&nested(MAX_JSON_DEPTH + 1)),
            Some(JsonProblem::TooDeep {
                limit: MAX_JSON_DEPTH
            })
        );
        let objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert_eq!(problem(&objects(MAX_JSON_DEPTH)), None);
        assert!(problem(&objects(MAX_JSON_DEPTH + 1)).is_some());
        // Deep enough to overflow a recursive parser's stack: still an
        // ordinary error.
        assert!(problem(&nested(1_000_000)).is_some());
    }

    #[test]
    fn names() {
        assert_eq!(check_name("acct-1", 255), Ok(()));
        assert_eq!(check_name("zoë's account", 255), Ok(()));
        assert_eq!(check_name("", 255), Err(NameProblem::Empty));
        assert_eq!(
            check_name(" ", 255),
            Err(NameProblem::SurroundingWhitespace)
        );
        assert_eq!(
            check_name(" a", 255),
            Err(NameProblem::SurroundingWhitespace)
        );
        assert_eq!(
            check_name("a\u{3000}", 255),
            Err(NameProblem::SurroundingWhitespace)
        );
        assert_eq!(
            check_name("\u{a0}a", 255),
            Err(NameProblem::SurroundingWhitespace)
        );
        assert_eq!(
            check_name("a\tb", 255),
            Err(NameProblem::Control { ch: '\t', index: 1 })
        );
        assert_eq!(
            check_name("é\u{85}", 255),
            Err(NameProblem::Control {
                ch: '\u{85}',
                index: 2
            })
        );
        for ch in [
            '\u{ad}',
            '\u{61c}',
            '\u{180e}',
            '\u{200b}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{2028}',
            '\u{202a}',
            '\u{202e}',
            '\u{2060}',
            '\u{2064}',
            '\u{2066}',
            '\u{2069}',
            '\u{feff}',
            '\u{e0001}',
            '\u{e0041}',
            '\u{e007f}',
        ] {
            assert!(
                matches!(
                    check_name(&format!("a{ch}b"), 255),
                    Err(NameProblem::Invisible { index: 1, .. })
                ),
                "{ch:?}"
            );
        }
        // Letters of any script, full-width forms and combining marks are
        // visible: accepted.
        assert_eq!(check_name("Ａ-é-日本-\u{301}", 255), Ok(()));
    }
}
