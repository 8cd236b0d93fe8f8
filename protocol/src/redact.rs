//! Credentials out of URLs before they are echoed or logged: `http://alice:s3cret@host/x.jpg`
//! becomes `http://***@host/x.jpg`, wherever it appears in a text (an error message, a client
//! library's error chain, a log field).

use std::borrow::Cow;

/// What the userinfo of a URL is replaced with.
pub const REDACTED: &str = "***";

/// `text` with the userinfo (`user:password@`) of every `scheme://` URL in it replaced by
/// [`REDACTED`]. Borrowed when there is nothing to redact.
pub fn redact_urls(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let start = search + found + 3;
        let rest = &text[start..];
        let end = rest
            .find(|c: char| {
                matches!(c, '/' | '\\' | '?' | '#' | '"' | '\'' | '<' | '>' | '`')
                    || c.is_whitespace()
            })
            .unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = start + at;
        }
        search = start + end;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_everywhere_in_a_text() {
        assert_eq!(
            redact_urls("http://alice:s3cret@host/a@b.jpg"),
            "http://***@host/a@b.jpg"
        );
        assert_eq!(
            redact_urls("error sending request for url (https://u:p@h:8080/x) from http://v@w?q=@"),
            "error sending request for url (https://***@h:8080/x) from http://***@w?q=@"
        );
        assert_eq!(redact_urls("http://a:b@c"), "http://***@c");
        assert_eq!(
            redact_urls("URL \"http://x:y@z\" does not parse"),
            "URL \"http://***@z\" does not parse"
        );
        assert!(matches!(redact_urls("http://host/x@y"), Cow::Borrowed(_)));
        assert!(matches!(redact_urls("no url at all: @"), Cow::Borrowed(_)));
        assert_eq!(redact_urls("ftp://u:p@[::1]:21/"), "ftp://***@[::1]:21/");
    }
}
