//! Reply subjects: where the finishing tier publishes a request's answer (the
//! `Clothesline-Reply-To` header), how they are checked, and how an ingress makes its own.
//!
//! - **Validation.** A reply subject comes from whoever published the message, so the first tier
//!   that reads it (the preprocessor for requests, the gpu-worker for tensors, which can be
//!   published directly) checks it with [`validate`] before anything else: at most
//!   [`MAX_LEN`] bytes (far below the server's 4 KiB control line, so publishing to it can never
//!   cost the publisher its connection), under [`REPLIES_PREFIX`] (never `$SYS`, `$JS`, `_INBOX`
//!   or a stream's subject), tokens that are not empty and hold only printable ASCII without
//!   wildcards. A message whose reply subject fails is terminated, counted and never answered.
//! - **Lanes.** The ingress queues on `clothesline.requests.ingress`, which only it may publish to
//!   with the per-role users; a request on `clothesline.requests` (bulk and other clients) may
//!   only ask for answers under [`BULK_PREFIX`] ([`validate_request`]).
//! - **Answers only from the real work.** An ingress gives each request a reply subject of its
//!   own, `clothesline.replies.<instance>.<token>` ([`IngressReplies::new_reply_to`]), with
//!   a [`TOKEN_LEN`]-character token of 128 random bits from the OS. It subscribes to
//!   `clothesline.replies.<instance>.>` and hands a reply only to the caller whose token the subject
//!   names, and only if the reply is for that caller's request id. A message queued by anyone
//!   else cannot name a token it never saw (they travel only inside the streams, which the
//!   per-role users cannot read), so its answer reaches nobody: request ids are chosen by callers
//!   and are not secrets, tokens are.

use crate::error::{Error, ErrorCode};
use crate::names::{INGRESS_REQUESTS_SUBJECT, REPLIES_PREFIX};

/// Longest reply subject accepted, in bytes.
pub const MAX_LEN: usize = 256;

/// Characters of an ingress's per-request token (128 bits, hex).
pub const TOKEN_LEN: usize = 32;

/// Reply subjects of asynchronous (bulk) clients start with this; the bulk user may read them.
pub const BULK_PREFIX: &str = "clothesline.replies.bulk.";

/// Checks a reply subject taken from a message header; the error says what is wrong with it
/// (code `bad_request`), without repeating a subject that may be kilobytes long.
pub fn validate(subject: &str) -> Result<(), Error> {
    let refuse = |why: &str| {
        Err(Error::new(
            ErrorCode::BadRequest,
            format!("invalid reply subject: {why}"),
        ))
    };
    if subject.len() > MAX_LEN {
        return refuse(&format!(
            "{} bytes, at most {MAX_LEN} allowed",
            subject.len()
        ));
    }
    let Some(rest) = subject
        .strip_prefix(REPLIES_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return refuse(&format!("it must start with {REPLIES_PREFIX}."));
    };
    for token in rest.split('.') {
        if token.is_empty() {
            return refuse("empty token");
        }
        if !token.bytes().all(token_byte) {
            return refuse("whitespace, wildcard or non-printable character");
        }
    }
    Ok(())
}

/// Checks the reply subject of a request that was published on `published_on`: [`validate`], and
/// a request not queued on the ingress's subject ([`INGRESS_REQUESTS_SUBJECT`], which only the
/// ingress may publish to with the per-role users) may only ask for answers under
/// [`BULK_PREFIX`]: bulk and other clients cannot direct answers to an ingress's subjects.
pub fn validate_request(published_on: &str, subject: &str) -> Result<(), Error> {
    validate(subject)?;
    if published_on != INGRESS_REQUESTS_SUBJECT && !subject.starts_with(BULK_PREFIX) {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!(
                "invalid reply subject: a request on {published_on} must be answered under {BULK_PREFIX}"
            ),
        ));
    }
    Ok(())
}

/// A byte allowed in a token: printable ASCII but the wildcards (`.` separates tokens).
fn token_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'*' && b != b'>' && b != b'.'
}

/// An unguessable token: 128 bits from the OS's random source, as hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_LEN / 2];
    // The OS's source failing is not something a service can go on without.
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The reply subjects of one ingress instance: `clothesline.replies.<instance>.<token>`.
#[derive(Debug, Clone)]
pub struct IngressReplies {
    prefix: String,
}

impl IngressReplies {
    /// The subjects of `instance`, which must be one plain token (`[A-Za-z0-9_-]`, at most 64
    /// characters) and not `bulk`, whose subjects belong to bulk clients.
    pub fn new(instance: &str) -> Result<Self, Error> {
        let plain = !instance.is_empty()
            && instance.len() <= 64
            && instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain || instance == "bulk" {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "instance id {instance:?} must be 1-64 characters of [A-Za-z0-9_-], not bulk"
                ),
            ));
        }
        Ok(Self {
            prefix: format!("{REPLIES_PREFIX}.{instance}."),
        })
    }

    /// The subscription that receives every reply of this instance.
    pub fn wildcard(&self) -> String {
        format!("{}>", self.prefix)
    }

    /// A new request's reply subject and its token.
    pub fn new_reply_to(&self) -> (String, String) {
        let token = new_token();
        (format!("{}{token}", self.prefix), token)
    }

    /// The token a reply subject of this instance names; `None` for any other subject.
    pub fn token_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(&self.prefix)
            .filter(|t| t.len() == TOKEN_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::REQUESTS_SUBJECT;

    #[test]
    fn plain_subjects_under_the_replies_prefix_pass() {
        for ok in [
            "clothesline.replies.bulk.my-service.results",
            "clothesline.replies.ingress-1.0123456789abcdef0123456789abcdef",
            "clothesline.replies.x",
        ] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn poison_subjects_are_refused() {
        let long = format!("{BULK_PREFIX}{}", "a".repeat(5000));
        for bad in [
            long.as_str(),
            "probe.>",
            "probe.w.*",
            "clothesline.replies.bulk.>",
            "clothesline.replies.bulk.w.*",
            "clothesline.replies.a*",
            "$SYS.REQ.SERVER.PING",
            "$JS.API.STREAM.DELETE.CLOTHESLINE_REQUESTS",
            "_INBOX.abc",
            "clothesline.requests",
            "clothesline.replies",
            "clothesline.replies.",
            "clothesline.replies..x",
            "clothesline.replies.bulk.",
            "clothesline.replies.bulk x",
            "clothesline.replies.bulk\tx",
            "clothesline.replies.bulk.é",
            "",
        ] {
            let e = validate(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.len() < 100, "{}", e.message);
        }
    }

    #[test]
    fn only_the_ingress_lane_may_ask_for_answers_outside_bulk() {
        let ingress = "clothesline.replies.ingress-1.0123456789abcdef0123456789abcdef";
        let bulk = "clothesline.replies.bulk.job-1";
        assert!(validate_request(INGRESS_REQUESTS_SUBJECT, ingress).is_ok());
        assert!(validate_request(INGRESS_REQUESTS_SUBJECT, bulk).is_ok());
        assert!(validate_request(REQUESTS_SUBJECT, bulk).is_ok());
        assert!(validate_request(REQUESTS_SUBJECT, ingress).is_err());
        assert!(validate_request(REQUESTS_SUBJECT, "probe.>").is_err());
    }

    #[test]
    fn ingress_subjects_carry_an_unguessable_token() {
        let r = IngressReplies::new("ingress-1").unwrap();
        assert_eq!(r.wildcard(), "clothesline.replies.ingress-1.>");
        let (subject, token) = r.new_reply_to();
        let (other, _) = r.new_reply_to();
        assert_ne!(subject, other);
        assert!(validate(&subject).is_ok());
        assert_eq!(r.token_of(&subject), Some(token.as_str()));
        assert_eq!(token.len(), TOKEN_LEN);
        assert_eq!(r.token_of("clothesline.replies.ingress-1"), None);
        assert_eq!(r.token_of("clothesline.replies.ingress-1.victim-1"), None);
        assert_eq!(r.token_of("clothesline.replies.ingress-2.x"), None);
        for bad in ["", "a.b", "bulk", "a b", "*", &"x".repeat(65)] {
            assert!(IngressReplies::new(bad).is_err(), "{bad}");
        }
    }
}
