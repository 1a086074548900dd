//! Input rules, shared by every transport. Lengths count Unicode scalar values
//! (`str::chars`), never bytes. Each check returns the 422 the API answers with, naming the
//! offending field.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Longest message body, in characters, after trimming.
pub const MAX_MESSAGE_CHARS: usize = 10_000;
/// Longest `clientMessageId`.
pub const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 64;
/// Longest `customerId`.
pub const MAX_CUSTOMER_ID_CHARS: usize = 100;
/// Longest `locale`.
pub const MAX_LOCALE_CHARS: usize = 16;
/// Longest contact name.
pub const MAX_CONTACT_NAME_CHARS: usize = 200;
/// Longest page-context string (URLs, titles, UTM values).
pub const MAX_CONTEXT_CHARS: usize = 2048;
/// `variables`: at most this many keys…
pub const MAX_VARIABLES: usize = 50;
/// …at most this many bytes JSON-encoded…
pub const MAX_VARIABLES_BYTES: usize = 4096;
/// …arrays nested at most this deep.
pub const MAX_VARIABLE_DEPTH: usize = 4;

/// Number of Unicode scalar values.
pub fn chars(s: &str) -> usize {
    s.chars().count()
}

/// `^pk_live_[a-f0-9]{32}$`.
pub fn is_public_key(s: &str) -> bool {
    s.len() == 40
        && s.starts_with("pk_live_")
        && s[8..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Characters that render as nothing: a message of these (and whitespace) is empty.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// A message body: trimmed, 1..=`max` characters, not made only of whitespace and
/// zero-width characters. Returns the trimmed text.
pub fn message_body(field: &str, text: &str, max: usize) -> Result<String, ApiError> {
    let trimmed = text.trim();
    if trimmed.chars().all(is_invisible) {
        return Err(ApiError::invalid(field, "message must not be empty"));
    }
    if chars(trimmed) > max {
        return Err(ApiError::invalid(
            field,
            format!("message is too long (maximum {max} characters)"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// A message body that may be empty because files go with it (`attachments`): the
/// trimmed text, `""` when nothing visible is left and `has_files`.
pub fn message_body_or_files(
    field: &str,
    text: &str,
    max: usize,
    has_files: bool,
) -> Result<String, ApiError> {
    if has_files && text.trim().chars().all(is_invisible) {
        return Ok(String::new());
    }
    message_body(field, text, max)
}

/// Most files one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;

/// Longest sanitised file name, in characters.
pub const MAX_FILENAME_CHARS: usize = 200;

/// Whether `id` has the form of an attachment id: `att_` and 32 lowercase hex digits.
pub fn is_attachment_id(id: &str) -> bool {
    id.strip_prefix("att_").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A message's `attachments`: at most [`MAX_ATTACHMENTS`] well-formed ids, none twice.
/// Errors name the offending entry (`attachments[2]`).
pub fn attachment_ids(ids: &[String]) -> Result<(), ApiError> {
    if ids.len() > MAX_ATTACHMENTS {
        return Err(ApiError::invalid(
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments per message"),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        if !is_attachment_id(id) {
            return Err(ApiError::invalid(
                format!("attachments[{i}]"),
                "not an attachment id",
            ));
        }
        if ids[..i].contains(id) {
            return Err(ApiError::invalid(
                format!("attachments[{i}]"),
                "the same attachment twice",
            ));
        }
    }
    Ok(())
}

/// A file name as Confab keeps it: the last path component (either slash), without
/// control or invisible characters and surrounding dots and spaces, cut to
/// [`MAX_FILENAME_CHARS`] keeping the extension; `"file"` when nothing is left.
pub fn sanitize_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .filter(|c| {
            !c.is_control()
                && (*c == ' ' || !is_invisible(*c))
                && !matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    let clean = clean.trim_matches(|c: char| c == '.' || c.is_whitespace());
    if clean.is_empty() {
        return "file".to_owned();
    }
    if chars(clean) <= MAX_FILENAME_CHARS {
        return clean.to_owned();
    }
    // Keep a short extension: `….pdf` stays a PDF to whoever saves it.
    let ext = clean
        .rsplit_once('.')
        .map(|(_, e)| e)
        .filter(|e| !e.is_empty() && chars(e) <= 16)
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let keep = MAX_FILENAME_CHARS - chars(&ext);
    let mut out: String = clean.chars().take(keep).collect();
    out.push_str(&ext);
    out
}

/// `clientMessageId`: 1..=64 characters, no control characters.
pub fn client_message_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || chars(id) > MAX_CLIENT_MESSAGE_ID_CHARS || id.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "clientMessageId",
            format!(
                "clientMessageId must be 1 to {MAX_CLIENT_MESSAGE_ID_CHARS} printable characters"
            ),
        ));
    }
    Ok(())
}

/// A string no longer than `max` characters.
pub fn max_chars(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if chars(s) > max {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// A pragmatic e-mail check: `local@domain.tld`, no spaces, sane lengths and labels.
pub fn is_email(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    if local.is_empty()
        || local.len() > 64
        || local.contains('@')
        || local.starts_with('.')
        || local.ends_with('.')
    {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && !tld.chars().all(|c| c.is_ascii_digit()))
}

/// Well-formed BCP-47 tag (RFC 5646 syntax, simplified): a 2–8 letter language subtag,
/// then 1–8 character alphanumeric subtags separated by `-`; at most 16 characters.
pub fn is_locale(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_LOCALE_CHARS {
        return false;
    }
    let mut parts = s.split('-');
    let Some(lang) = parts.next() else {
        return false;
    };
    let lang_ok = (2..=8).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_alphabetic());
    let private_use = lang.eq_ignore_ascii_case("x") || lang.eq_ignore_ascii_case("i");
    (lang_ok || private_use)
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$`, at most 64 characters.
pub fn is_event_type(s: &str) -> bool {
    fn part(p: &str) -> bool {
        let mut b = p.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_lowercase())
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    }
    s.len() <= 64 && s.split_once(':').is_some_and(|(a, b)| part(a) && part(b))
}

/// `^[a-z][a-z0-9_]{0,63}$`.
fn is_variable_key(k: &str) -> bool {
    let mut b = k.bytes();
    k.len() <= 64
        && matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// Seed 004's rules for `variables`: ≤ 50 keys, ≤ 4096 bytes JSON-encoded, snake_case
/// keys, values scalar / null / arrays nested at most 4 deep, never objects.
pub fn variables(vars: &Map<String, Value>) -> Result<(), ApiError> {
    if vars.len() > MAX_VARIABLES {
        return Err(ApiError::invalid(
            "variables",
            format!("at most {MAX_VARIABLES} variables"),
        ));
    }
    for (k, v) in vars {
        if !is_variable_key(k) {
            return Err(ApiError::invalid(
                format!("variables.{k}"),
                "keys must match ^[a-z][a-z0-9_]{0,63}$",
            ));
        }
        check_variable_value(k, v, 0)?;
    }
    let encoded = serde_json::to_string(vars)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if encoded > MAX_VARIABLES_BYTES {
        return Err(ApiError::invalid(
            "variables",
            format!("at most {MAX_VARIABLES_BYTES} bytes when JSON-encoded"),
        ));
    }
    Ok(())
}

fn check_variable_value(key: &str, v: &Value, depth: usize) -> Result<(), ApiError> {
    match v {
        Value::Object(_) => Err(ApiError::invalid(
            format!("variables.{key}"),
            "objects are not allowed as values",
        )),
        Value::Array(items) => {
            if depth + 1 > MAX_VARIABLE_DEPTH {
                return Err(ApiError::invalid(
                    format!("variables.{key}"),
                    format!("arrays may be nested at most {MAX_VARIABLE_DEPTH} deep"),
                ));
            }
            items
                .iter()
                .try_for_each(|i| check_variable_value(key, i, depth + 1))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn public_keys() {
        assert!(is_public_key("pk_live_0123456789abcdef0123456789abcdef"));
        assert!(!is_public_key("pk_live_0123456789ABCDEF0123456789abcdef"));
        assert!(!is_public_key("pk_live_0123"));
        assert!(!is_public_key("pk_test_0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn bodies_count_characters_not_bytes() {
        let ten_k_emoji = "😀".repeat(MAX_MESSAGE_CHARS);
        assert!(message_body("message", &ten_k_emoji, MAX_MESSAGE_CHARS).is_ok());
        assert_eq!(
            message_body_or_files("message", " \u{200B} ", 10, true).unwrap(),
            ""
        );
        assert!(message_body_or_files("message", " ", 10, false).is_err());
        assert!(message_body("message", &format!("{ten_k_emoji}x"), MAX_MESSAGE_CHARS).is_err());
        assert!(message_body("message", "   \n", MAX_MESSAGE_CHARS).is_err());
        // Zero-width characters render as nothing: such a message is empty too.
        for blank in [
            "\u{200B}\u{200C}\u{200D}",
            " \u{2060} ",
            "\u{FEFF}\n\u{200B}",
        ] {
            assert!(
                message_body("message", blank, MAX_MESSAGE_CHARS).is_err(),
                "{blank:?}"
            );
        }
        assert!(message_body("message", "\u{200B}hi", MAX_MESSAGE_CHARS).is_ok());
        assert_eq!(
            message_body("message", "  hi ", MAX_MESSAGE_CHARS).unwrap(),
            "hi"
        );
    }

    #[test]
    fn emails() {
        for ok in ["a@b.co", "jane.doe+x@example.com", "ü@bücher.de"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a@b.c", "a b@c.de", "a@-b.com", "a@b..com", "a@1.23",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn locales() {
        for ok in ["en", "en-US", "zh-Hant-TW", "de-CH-1996", "x-private"] {
            assert!(is_locale(ok), "{ok}");
        }
        for bad in [
            "",
            "e",
            "en_US",
            "en-",
            "1en",
            "en-US-toolongsubtag",
            "abcdefgh-ijklmnop",
        ] {
            assert!(!is_locale(bad), "{bad}");
        }
    }

    #[test]
    fn event_types() {
        assert!(is_event_type("campaign:progress"));
        assert!(is_event_type("conversation:qualified"));
        assert!(!is_event_type("Campaign:progress"));
        assert!(!is_event_type("campaign"));
        assert!(!is_event_type("a:b:c"));
        assert!(!is_event_type("1a:b"));
    }

    #[test]
    fn variable_rules() {
        let ok = json!({"cart_total": 129, "page_path": "/pricing", "tags": ["a", ["b", [["c"]]]], "n": null});
        assert!(variables(ok.as_object().unwrap()).is_ok());
        let object = json!({"a": {"b": 1}});
        assert_eq!(
            variables(object.as_object().unwrap())
                .unwrap_err()
                .field
                .as_deref(),
            Some("variables.a")
        );
        let deep = json!({"a": [[[[["x"]]]]]});
        assert!(variables(deep.as_object().unwrap()).is_err());
        let bad_key = json!({"Cart": 1});
        assert!(variables(bad_key.as_object().unwrap()).is_err());
        let many: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!(1))).collect();
        assert!(variables(&many).is_err());
        let big: Map<String, Value> = [("k".to_string(), json!("x".repeat(5000)))]
            .into_iter()
            .collect();
        assert!(variables(&big).is_err());
    }

    #[test]
    fn filenames_are_sanitised() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(sanitize_filename("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(sanitize_filename("evil\u{202E}gnp.exe"), "evilgnp.exe");
        assert_eq!(sanitize_filename(".."), "file");
        assert_eq!(sanitize_filename(""), "file");
        let long = format!("{}.pdf", "é".repeat(300));
        let s = sanitize_filename(&long);
        assert_eq!(s.chars().count(), MAX_FILENAME_CHARS);
        assert!(s.ends_with(".pdf"));
    }

    #[test]
    fn attachment_id_lists() {
        let id = |n: u8| {
            format!(
                "att_{}",
                format!("{n:x}")
                    .repeat(32)
                    .chars()
                    .take(32)
                    .collect::<String>()
            )
        };
        assert!(attachment_ids(&[id(1), id(2)]).is_ok());
        let e = attachment_ids(&[id(1), "x".into()]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("attachments[1]"));
        let e = attachment_ids(&[id(1), id(1)]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("attachments[1]"));
        let many: Vec<String> = (1..=11).map(|n| id(n % 10 + 1)).collect();
        assert_eq!(
            attachment_ids(&many).unwrap_err().field.as_deref(),
            Some("attachments")
        );
    }
}
