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
//! in NATS. The `clothesline-model` binary is the command line over [`Registry`].

use std::collections::BTreeSet;

use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::manifest::{Manifest, sha256_hex};

/// Object Store bucket of the model versions.
pub const MODELS_BUCKET: &str = "clothesline-models";
/// KV bucket of the serving policy and the workers' serving reports.
pub const POLICY_BUCKET: &str = "clothesline-model-policy";
/// The policy's key in [`POLICY_BUCKET`].
pub const POLICY_KEY: &str = "policy";
/// Prefix of the workers' serving reports in [`POLICY_BUCKET`].
pub const SERVING_PREFIX: &str = "serving.";
/// File name of a version's model object (after `<version>/`).
const MODEL_OBJECT: &str = "model.pt";
const MANIFEST_OBJECT: &str = "manifest.json";
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

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("NATS: {0}")]
    Nats(#[from] async_nats::Error),
    #[error("{0}")]
    Refused(String),
    #[error("version {0} is not published in {MODELS_BUCKET}")]
    Unknown(String),
    #[error("version {version}: {reason}")]
    Corrupt { version: String, reason: String },
}

fn nats(e: impl Into<async_nats::Error>) -> RegistryError {
    RegistryError::Nats(e.into())
}

/// The two buckets, and the operations of the `clothesline-model` command.
#[derive(Clone)]
pub struct Registry {
    models: object_store::ObjectStore,
    policy: kv::Store,
}

impl Registry {
    /// Creates both buckets if they are missing (provisioning), with `replicas`.
    pub async fn create(js: &jetstream::Context, replicas: usize) -> Result<Self, RegistryError> {
        let models = match js.get_object_store(MODELS_BUCKET).await {
            Ok(s) => s,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: MODELS_BUCKET.into(),
                    description: Some("clothesline model versions: file + manifest".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(nats)?,
        };
        let policy = match js.get_key_value(POLICY_BUCKET).await {
            Ok(s) => s,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: POLICY_BUCKET.into(),
                    description: "clothesline serving policy and workers' serving reports".into(),
                    history: 10,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(nats)?,
        };
        Ok(Self { models, policy })
    }

    /// Opens both buckets; `None` when they were not provisioned (serve the shipped model).
    pub async fn open(js: &jetstream::Context) -> Option<Self> {
        let models = js.get_object_store(MODELS_BUCKET).await.ok()?;
        let policy = js.get_key_value(POLICY_BUCKET).await.ok()?;
        Some(Self { models, policy })
    }

    /// The policy KV store (watching, serving reports).
    pub fn kv(&self) -> &kv::Store {
        &self.policy
    }

    /// Uploads the manifest's model file and the manifest, after checking the file's sha256, then
    /// reads both back and checks them again (end to end). A version is immutable: publishing it
    /// again with the same file is a no-op (`Ok(false)`), with another file is refused.
    pub async fn publish(&self, manifest: &Manifest) -> Result<bool, RegistryError> {
        let bytes = manifest
            .verify_model_file()
            .map_err(|e| RegistryError::Refused(e.to_string()))?;
        if let Some(existing) = self.manifest(&manifest.version).await? {
            if existing.sha256.eq_ignore_ascii_case(&manifest.sha256) {
                return Ok(false);
            }
            return Err(RegistryError::Refused(format!(
                "version {} is already published with sha256 {}: versions are immutable, \
                 publish this file under a new version",
                manifest.version, existing.sha256
            )));
        }
        let v = &manifest.version;
        self.models
            .put(
                format!("{v}/{MODEL_OBJECT}").as_str(),
                &mut bytes.as_slice(),
            )
            .await
            .map_err(nats)?;
        let mut stored = manifest.clone();
        stored.file = MODEL_OBJECT.into();
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| nats(e.to_string()))?;
        self.models
            .put(
                format!("{v}/{MANIFEST_OBJECT}").as_str(),
                &mut json.as_slice(),
            )
            .await
            .map_err(nats)?;
        self.fetch(v).await?;
        Ok(true)
    }

    /// The manifest of a published version; `None` when it is not published.
    pub async fn manifest(&self, version: &str) -> Result<Option<Manifest>, RegistryError> {
        let Some(bytes) = self.object(&format!("{version}/{MANIFEST_OBJECT}")).await? else {
            return Ok(None);
        };
        let m = Manifest::from_json(&bytes).map_err(|e| RegistryError::Corrupt {
            version: version.into(),
            reason: e.to_string(),
        })?;
        if m.version != version {
            return Err(RegistryError::Corrupt {
                version: version.into(),
                reason: format!("its manifest says version {}", m.version),
            });
        }
        Ok(Some(m))
    }

    /// A published version's manifest and model bytes, the bytes checked against the manifest's
    /// sha256.
    pub async fn fetch(&self, version: &str) -> Result<(Manifest, Vec<u8>), RegistryError> {
        let manifest = self
            .manifest(version)
            .await?
            .ok_or_else(|| RegistryError::Unknown(version.into()))?;
        let bytes = self
            .object(&format!("{version}/{MODEL_OBJECT}"))
            .await?
            .ok_or_else(|| RegistryError::Corrupt {
                version: version.into(),
                reason: "its model file is missing".into(),
            })?;
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(RegistryError::Corrupt {
                version: version.into(),
                reason: format!(
                    "model file has sha256 {actual}, its manifest says {}: refusing it",
                    manifest.sha256
                ),
            });
        }
        Ok((manifest, bytes))
    }

    async fn object(&self, name: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let mut object = match self.models.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(nats(e)),
        };
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(nats)?;
        Ok(Some(bytes))
    }

    /// Every published version's manifest, sorted by version.
    pub async fn list(&self) -> Result<Vec<Manifest>, RegistryError> {
        let mut names = Vec::new();
        let mut list = self.models.list().await.map_err(nats)?;
        while let Some(info) = list.next().await {
            let info = info.map_err(nats)?;
            if let Some(v) = info.name.strip_suffix(&format!("/{MANIFEST_OBJECT}")) {
                names.push(v.to_string());
            }
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for v in names {
            if let Some(m) = self.manifest(&v).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The policy, `None` when none was ever set (the shipped model serves).
    pub async fn policy(&self) -> Result<Option<Policy>, RegistryError> {
        Ok(self.policy_entry().await?.map(|(p, _)| p))
    }

    async fn policy_entry(&self) -> Result<Option<(Policy, u64)>, RegistryError> {
        let Some(entry) = self.policy.entry(POLICY_KEY).await.map_err(nats)? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let p = parse_policy(&entry.value)?;
        Ok(Some((p, entry.revision)))
    }

    /// Applies `change` to the policy (compare-and-set on its revision, so two deployments
    /// cannot overwrite each other unseen); returns the policy before and after.
    pub async fn change_policy(
        &self,
        change: impl FnOnce(Option<&Policy>) -> Result<Policy, RegistryError>,
    ) -> Result<(Option<Policy>, Policy), RegistryError> {
        let old = self.policy_entry().await?;
        let new = change(old.as_ref().map(|(p, _)| p))?;
        for v in new.versions() {
            if self.manifest(&v).await?.is_none() {
                return Err(RegistryError::Unknown(v));
            }
        }
        let json = serde_json::to_vec(&new).map_err(|e| nats(e.to_string()))?;
        match &old {
            Some((_, revision)) => self
                .policy
                .update(POLICY_KEY, json.into(), *revision)
                .await
                .map(|_| ())
                .map_err(|e| {
                    RegistryError::Refused(format!(
                        "the policy changed while this command ran ({e}); run it again"
                    ))
                })?,
            None => self
                .policy
                .create(POLICY_KEY, json.into())
                .await
                .map(|_| ())
                .map_err(|e| {
                    RegistryError::Refused(format!(
                        "the policy changed while this command ran ({e}); run it again"
                    ))
                })?,
        }
        Ok((old.map(|(p, _)| p), new))
    }

    /// `promote <version>`: every request gets `version`; the canary ends.
    pub async fn promote(&self, version: &str) -> Result<(Option<Policy>, Policy), RegistryError> {
        self.change_policy(|old| {
            let previous = old
                .map(|p| p.current.clone())
                .filter(|c| c != version)
                .or_else(|| old.and_then(|p| p.previous.clone()));
            Ok(Policy {
                current: version.into(),
                canary: None,
                previous,
            })
        })
        .await
    }

    /// `canary <version> --weight <0-100>`: `weight`% of the requests get `version`.
    pub async fn canary(
        &self,
        version: &str,
        weight: u8,
    ) -> Result<(Option<Policy>, Policy), RegistryError> {
        if weight > 100 {
            return Err(RegistryError::Refused(format!(
                "weight {weight} is not a percentage (0-100)"
            )));
        }
        self.change_policy(|old| {
            let old = old.ok_or_else(|| {
                RegistryError::Refused(
                    "no current version yet: promote one before starting a canary".into(),
                )
            })?;
            if old.current == version {
                return Err(RegistryError::Refused(format!(
                    "{version} is already the current version"
                )));
            }
            Ok(Policy {
                canary: Some(Canary {
                    version: version.into(),
                    weight,
                }),
                ..old.clone()
            })
        })
        .await
    }

    /// `rollback`: ends the canary if there is one, else makes the previous version current.
    pub async fn rollback(&self) -> Result<(Option<Policy>, Policy), RegistryError> {
        self.change_policy(|old| {
            let old = old.ok_or_else(|| RegistryError::Refused("no policy to roll back".into()))?;
            if old.canary.is_some() {
                return Ok(Policy {
                    canary: None,
                    ..old.clone()
                });
            }
            let previous = old.previous.clone().ok_or_else(|| {
                RegistryError::Refused(format!(
                    "{} is current and there is no previous version to roll back to",
                    old.current
                ))
            })?;
            Ok(Policy {
                current: previous,
                canary: None,
                previous: Some(old.current.clone()),
            })
        })
        .await
    }
}

/// Parses a policy value, refusing one without a current version.
pub fn parse_policy(bytes: &[u8]) -> Result<Policy, RegistryError> {
    let p: Policy = serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::Refused(format!("the stored policy is not valid: {e}")))?;
    if p.current.is_empty() {
        return Err(RegistryError::Refused(
            "the stored policy has no current version".into(),
        ));
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
