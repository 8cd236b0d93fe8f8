//! Models as versions in NATS (#17): a JetStream Object Store bucket holds each version's
//! TorchScript file and manifest, a KV bucket holds the serving [`Policy`] (the current version,
//! optionally a canary with a weight) and what each gpu-worker serves ([`Serving`]).
//!
//! - object `<version>/model.pt`, then `<version>/manifest.json` (written last: a version exists
//!   once its manifest does), in [`MODELS_BUCKET`];
//! - key [`POLICY_KEY`] (JSON [`Policy`]), keys `serving.<instance>` (JSON [`Serving`]) in
//!   [`POLICY_BUCKET`].
//!
//! With no policy the tiers serve the manifest shipped with them, exactly as before models lived
//! in NATS. The buckets' operations (`Registry`) and the `clothesline-model` command are in the
//! `tierkit` crate; this module is what the tiers agree on.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Object Store bucket of the model versions.
pub const MODELS_BUCKET: &str = "clothesline-models";
/// KV bucket of the serving policy and the workers' serving reports.
pub const POLICY_BUCKET: &str = "clothesline-model-policy";
/// The policy's key in [`POLICY_BUCKET`].
pub const POLICY_KEY: &str = "policy";
/// Prefix of the workers' serving reports in [`POLICY_BUCKET`].
pub const SERVING_PREFIX: &str = "serving.";
/// File name of a version's model object (after `<version>/`).
pub const MODEL_OBJECT: &str = "model.pt";
pub const MANIFEST_OBJECT: &str = "manifest.json";
/// A serving report older than this is a worker that went away without saying so.
pub const SERVING_STALE_MS: u64 = 30_000;
/// How often a worker renews its serving report (and at once on every change).
pub const SERVING_HEARTBEAT_MS: u64 = 10_000;

/// Whether `v` is a valid version: 1-64 letters, digits, '.', '_' or '-' (it names objects and
/// travels in headers).
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Which version serves which request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The version every request gets, but the canary's share.
    pub current: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// The version `current` replaced: where `rollback` goes, and what the preprocessors route
    /// to while no worker serves `current` yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub version: String,
    /// Percent of the requests, 0-100.
    pub weight: u8,
}

impl Policy {
    /// The versions a worker should have loaded: current, then the canary.
    pub fn versions(&self) -> Vec<String> {
        let mut v = vec![self.current.clone()];
        if let Some(c) = &self.canary
            && c.version != self.current
        {
            v.push(c.version.clone());
        }
        v
    }

    /// The version the policy gives the request `request_id`: the canary for `weight`% of the
    /// ids (the same id always gets the same answer), `current` otherwise.
    pub fn route(&self, request_id: &str) -> &str {
        match &self.canary {
            Some(c) if bucket_of(request_id) < u64::from(c.weight) => &c.version,
            _ => &self.current,
        }
    }

    /// One line for logs and the command line.
    pub fn describe(&self) -> String {
        let mut s = format!("current {}", self.current);
        if let Some(c) = &self.canary {
            s.push_str(&format!(", canary {} at {}%", c.version, c.weight));
        }
        if let Some(p) = &self.previous {
            s.push_str(&format!(", previous {p}"));
        }
        s
    }
}

/// A request id's bucket, 0-99: the first 8 bytes of its sha256, modulo 100 (stable across
/// builds and machines, unlike std's hasher).
pub fn bucket_of(request_id: &str) -> u64 {
    let digest = Sha256::digest(request_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % 100
}

/// What one gpu-worker serves, renewed every [`SERVING_HEARTBEAT_MS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    pub versions: Vec<String>,
    /// When the report was written, ms since the Unix epoch.
    pub at_ms: u64,
}

impl Serving {
    /// A report as stored; `None` when it does not parse (a stale or foreign key: ignored).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The versions served by at least one worker whose report is fresh at `now_ms`.
pub fn served_versions<'a>(
    reports: impl IntoIterator<Item = &'a Serving>,
    now_ms: u64,
) -> BTreeSet<String> {
    reports
        .into_iter()
        .filter(|r| now_ms.saturating_sub(r.at_ms) < SERVING_STALE_MS)
        .flat_map(|r| r.versions.iter().cloned())
        .collect()
}

/// Parses a policy value, refusing one without a current version.
pub fn parse_policy(bytes: &[u8]) -> Result<Policy, String> {
    let p: Policy = serde_json::from_slice(bytes)
        .map_err(|e| format!("the stored policy is not valid: {e}"))?;
    if p.current.is_empty() {
        return Err("the stored policy has no current version".into());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(canary: Option<(&str, u8)>) -> Policy {
        Policy {
            current: "1".into(),
            canary: canary.map(|(v, w)| Canary {
                version: v.into(),
                weight: w,
            }),
            previous: None,
        }
    }

    #[test]
    fn routing_is_deterministic_and_follows_the_weight() {
        let p = policy(Some(("2", 20)));
        let ids: Vec<String> = (0..10_000).map(|i| format!("request-{i}")).collect();
        let canary = ids.iter().filter(|id| p.route(id) == "2").count();
        // 20% of 10,000 within 4 standard deviations (40).
        assert!((1840..=2160).contains(&canary), "{canary}");
        for id in &ids[..100] {
            assert_eq!(p.route(id), p.route(id));
        }
        assert!(ids.iter().all(|id| policy(Some(("2", 0))).route(id) == "1"));
        assert!(
            ids.iter()
                .all(|id| policy(Some(("2", 100))).route(id) == "2")
        );
        assert_eq!(policy(None).versions(), ["1"]);
        assert_eq!(p.versions(), ["1", "2"]);
    }

    #[test]
    fn stale_serving_reports_are_ignored() {
        let fresh = Serving {
            versions: vec!["2".into()],
            at_ms: 100_000,
        };
        let stale = Serving {
            versions: vec!["1".into()],
            at_ms: 100_000 - SERVING_STALE_MS - 1,
        };
        let served = served_versions([&fresh, &stale], 100_000);
        assert_eq!(served.into_iter().collect::<Vec<_>>(), ["2"]);
    }

    #[test]
    fn policies_without_a_current_version_are_refused() {
        assert!(parse_policy(br#"{"current": ""}"#).is_err());
        assert!(parse_policy(b"nope").is_err());
        let p = parse_policy(br#"{"current": "1", "canary": {"version": "2", "weight": 5}}"#)
            .expect("valid");
        assert_eq!(p.describe(), "current 1, canary 2 at 5%");
    }
}
