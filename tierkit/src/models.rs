//! The model buckets' operations (#17): publish, fetch, list and the serving policy's
//! compare-and-set changes, over the names and types of [`protocol::models`]. The
//! `clothesline-model` binary is the command line over [`Registry`].

use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use protocol::manifest::{Manifest, sha256_hex};
use protocol::models::*;

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
        self.put_object(&format!("{v}/{MODEL_OBJECT}"), &bytes)
            .await?;
        let mut stored = manifest.clone();
        stored.file = MODEL_OBJECT.into();
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| nats(e.to_string()))?;
        self.put_object(&format!("{v}/{MANIFEST_OBJECT}"), &json)
            .await?;
        self.fetch(v).await?;
        Ok(true)
    }

    async fn put_object(&self, name: &str, mut bytes: &[u8]) -> Result<(), RegistryError> {
        self.models.put(name, &mut bytes).await.map_err(nats)?;
        Ok(())
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
        let p = parse_policy(&entry.value).map_err(RegistryError::Refused)?;
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
