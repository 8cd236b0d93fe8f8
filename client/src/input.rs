//! What to classify: an http(s) URL (sent as `{"url": ...}` for the preprocessor to download) or
//! a file (its bytes, with a content type from the extension).

use bytes::Bytes;

use crate::answer::Failure;

pub enum Input {
    Url(String),
    File { bytes: Bytes, content_type: String },
}

impl Input {
    /// A URL when `arg` starts with `http://` or `https://`, else a file read from disk.
    pub async fn read(arg: &str) -> Result<Self, Failure> {
        if arg.starts_with("http://") || arg.starts_with("https://") {
            return Ok(Self::Url(arg.to_string()));
        }
        let bytes = tokio::fs::read(arg)
            .await
            .map_err(|e| Failure::new("unreadable_file", format!("{arg}: {e}")))?;
        Ok(Self::File {
            bytes: bytes.into(),
            content_type: content_type(arg).to_string(),
        })
    }

    /// The request body and its content type, as both the HTTP API and NATS take them.
    pub fn body(&self) -> (Bytes, &str) {
        match self {
            Self::Url(url) => (
                serde_json::json!({ "url": url }).to_string().into(),
                "application/json",
            ),
            Self::File {
                bytes,
                content_type,
            } => (bytes.clone(), content_type),
        }
    }
}

/// The image type named by a file's extension; the service sniffs the bytes whatever it says,
/// so an unknown extension goes as `application/octet-stream`.
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_follows_the_extension() {
        assert_eq!(content_type("a/b/Photo.JPG"), "image/jpeg");
        assert_eq!(content_type("x.webp"), "image/webp");
        assert_eq!(content_type("noext"), "application/octet-stream");
        assert_eq!(content_type("dir.d/file"), "application/octet-stream");
    }

    #[tokio::test]
    async fn urls_are_sent_as_json_and_missing_files_fail_with_a_code() {
        let url = Input::read("https://example.org/a.jpg")
            .await
            .ok()
            .unwrap_or_else(|| {
                panic!("a URL is an input");
            });
        let (body, ct) = url.body();
        assert_eq!(ct, "application/json");
        assert_eq!(&body[..], br#"{"url":"https://example.org/a.jpg"}"#);
        let Err(e) = Input::read("/nonexistent/file.jpg").await else {
            panic!("a missing file is an error");
        };
        assert_eq!(e.code, "unreadable_file");
    }
}
