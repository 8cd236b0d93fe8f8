//! What the results bucket holds per request id, and how an entry reads to a caller of that id:
//! the key (a hash of the id, since NATS keys allow only `[-/_=.a-zA-Z0-9]`), the body hash, the
//! JSON record (a claim while the request runs, then its answer), and which answers are kept.

use async_nats::jetstream::kv::{Entry, Operation};
use bytes::Bytes;
use protocol::messages::Outcome;
use protocol::{Error, ErrorCode, Prediction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// After a claim's deadline, how long its owner still has to write the answer before another
/// caller of the id may take the claim over (the owner writes it or deletes the claim at its
/// deadline; this covers only the write's round trip).
pub const TAKEOVER_GRACE_MS: u64 = 1_000;

/// The bucket key of a request id: the hex SHA-256 of the id.
pub fn key(request_id: &str) -> String {
    hex(&Sha256::digest(request_id.as_bytes()))
}

/// The hex SHA-256 of what a request asks: its content type and payload. Two requests with one id
/// and the same hash are the same piece of work.
pub fn body_hash(content_type: &str, payload: &[u8], model_version: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(content_type.as_bytes());
    h.update([0u8]);
    // A pin (`X-Model-Version`) is part of what the request asks for: the same image pinned to
    // another version is another piece of work. Unpinned requests hash as before.
    if let Some(v) = model_version {
        h.update(b"model_version\0");
        h.update(v.as_bytes());
        h.update([0u8]);
    }
    h.update(payload);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// [`body_hash`] of the request that holds the id.
    pub body: String,
    #[serde(flatten)]
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// An ingress runs the request until `deadline_ms` (ms since the epoch).
    Pending { owner: String, deadline_ms: u64 },
    /// The request's answer.
    Done { outcome: Outcome },
}

impl Record {
    pub fn encode(&self) -> Bytes {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .unwrap_or_default()
    }
}

/// Whether an answer is kept for the window: predictions and permanent client errors (4xx but
/// 429: the same body would fail the same way). Transient failures (429, 5xx: unavailable,
/// deadline, origin errors, inference failures) are not; their claim is deleted, so a retry runs
/// anew.
pub fn is_kept(outcome: &Result<Prediction, Error>) -> bool {
    match outcome {
        Ok(_) => true,
        Err(e) => {
            let status = e.code.http_status();
            !e.is_transient() && (400..500).contains(&status) && status != 429
        }
    }
}

/// What an entry of the id means to a caller with body `body` at `now_ms`.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// Nobody holds the id: claim it expecting this revision (0: no entry).
    Free(u64),
    /// Another body holds the id.
    Conflict,
    /// The answer.
    Done(Result<Prediction, Error>),
    /// A request runs; its claim's revision and when it may be taken over (ms since the epoch).
    Pending { revision: u64, stale_at_ms: u64 },
}

pub fn read(entry: Option<&Entry>, body: &str, now_ms: u64) -> Result<Seen, Error> {
    let found = entry.map(|e| Found {
        revision: e.revision,
        value: (!matches!(e.operation, Operation::Delete | Operation::Purge))
            .then_some(&e.value[..]),
    });
    read_found(found, body, now_ms)
}

/// An entry: its revision, and its value unless it is a delete or purge marker.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub revision: u64,
    pub value: Option<&'a [u8]>,
}

fn read_found(found: Option<Found<'_>>, body: &str, now_ms: u64) -> Result<Seen, Error> {
    let Some(found) = found else {
        return Ok(Seen::Free(0));
    };
    let Some(value) = found.value else {
        return Ok(Seen::Free(found.revision));
    };
    let record: Record = serde_json::from_slice(value).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("unreadable entry in the results bucket: {e}"),
        )
    })?;
    if record.body != body {
        return Ok(Seen::Conflict);
    }
    Ok(match record.state {
        State::Done { outcome } => Seen::Done(match outcome {
            Outcome::Prediction(p) => Ok(p),
            Outcome::Error(e) => Err(e),
        }),
        State::Pending { deadline_ms, .. } => {
            let stale_at_ms = deadline_ms.saturating_add(TAKEOVER_GRACE_MS);
            if now_ms >= stale_at_ms {
                Seen::Free(found.revision)
            } else {
                Seen::Pending {
                    revision: found.revision,
                    stale_at_ms,
                }
            }
        }
    })
}

/// The `id_conflict` error of a reused id.
pub fn conflict(request_id: &str) -> Error {
    Error::new(
        ErrorCode::IdConflict,
        format!(
            "request id {request_id:?} was used for another request within the idempotency window; \
             use a new id for a new request"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ModelRef;
    use protocol::messages::Timings;

    fn read(value: Option<&[u8]>, body: &str, now_ms: u64) -> Result<Seen, Error> {
        read_found(Some(Found { revision: 7, value }), body, now_ms)
    }

    fn prediction() -> Prediction {
        Prediction {
            model: ModelRef {
                name: "m".into(),
                version: "1".into(),
            },
            classes: vec!["hat".into()],
            logits: vec![0.5],
            timings: Timings::default(),
        }
    }

    #[test]
    fn keys_are_valid_nats_keys_for_any_id() {
        let k = key(&"x".repeat(300));
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(key("a"), key("b"));
        assert_ne!(
            body_hash("image/png", b"x", None),
            body_hash("image/jpeg", b"x", None)
        );
    }

    #[test]
    fn a_pin_to_another_model_version_is_another_body() {
        let unpinned = body_hash("image/png", b"x", None);
        let v1 = body_hash("image/png", b"x", Some("1.0.0"));
        assert_ne!(unpinned, v1);
        assert_ne!(v1, body_hash("image/png", b"x", Some("2.0.0")));
        assert_eq!(v1, body_hash("image/png", b"x", Some("1.0.0")));
    }

    #[test]
    fn entries_read_as_free_conflict_done_or_pending() {
        let body = body_hash("application/json", b"{}", None);
        assert_eq!(read_found(None, &body, 0).unwrap(), Seen::Free(0));
        assert_eq!(read(None, &body, 0).unwrap(), Seen::Free(7));
        let pending = Record {
            body: body.clone(),
            state: State::Pending {
                owner: "i".into(),
                deadline_ms: 10_000,
            },
        };
        let e = pending.encode();
        assert_eq!(
            read(Some(&e[..]), &body, 5_000).unwrap(),
            Seen::Pending {
                revision: 7,
                stale_at_ms: 10_000 + TAKEOVER_GRACE_MS
            }
        );
        // Its owner is gone: free for a takeover at its revision.
        assert_eq!(read(Some(&e[..]), &body, 20_000).unwrap(), Seen::Free(7));
        assert_eq!(read(Some(&e[..]), "other", 5_000).unwrap(), Seen::Conflict);
        let done = Record {
            body: body.clone(),
            state: State::Done {
                outcome: Outcome::Prediction(prediction()),
            },
        };
        let e = done.encode();
        assert_eq!(
            read(Some(&e[..]), &body, 0).unwrap(),
            Seen::Done(Ok(prediction()))
        );
        assert!(read(Some(b"nope"), &body, 0).is_err());
    }

    #[test]
    fn answers_and_permanent_client_errors_are_kept_transient_failures_not() {
        assert!(is_kept(&Ok(prediction())));
        for code in [
            ErrorCode::NotAnImage,
            ErrorCode::BlockedAddress,
            ErrorCode::TooLarge,
        ] {
            assert!(is_kept(&Err(Error::new(code, "x"))), "{code}");
        }
        for code in [
            ErrorCode::DeadlineExceeded,
            ErrorCode::Unavailable,
            ErrorCode::QueueFull,
            ErrorCode::Overloaded,
            ErrorCode::OriginError,
            ErrorCode::InferenceFailed,
        ] {
            assert!(!is_kept(&Err(Error::new(code, "x"))), "{code}");
        }
    }
}
