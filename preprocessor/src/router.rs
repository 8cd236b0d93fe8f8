//! Which model version a request is prepared for (#17). Routing happens here, once per request,
//! because this is the tier that must know each version's input spec anyway, and the one every
//! request passes through (also bulk clients publishing straight into the requests stream).
//!
//! - a request pinned to a version (`Clothesline-Model-Version` header, or `model_version` in its
//!   JSON) gets that version, or `unknown_model_version` (404) when it is not published;
//! - otherwise the serving policy decides: the canary for its weight's share of the request ids
//!   (the same id always gets the same version), the current version for the rest; while no
//!   worker reports serving the version chosen (just promoted, still loading, or refused), the
//!   current version, the previous one, or else a version the workers still serve stands in;
//! - with no policy (empty bucket), the shipped manifest's version, as before.
//!
//! The policy and the workers' serving reports come from a watch on the policy KV bucket.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use futures::StreamExt;
use protocol::manifest::{InputSpec, Manifest};
use protocol::meta::now_ms;
use protocol::models::{
    POLICY_KEY, Policy, SERVING_PREFIX, Serving, parse_policy, served_versions,
};
use protocol::{Error, ErrorCode, ModelRef};
use tierkit::models::{Registry, RegistryError};
use tokio_util::sync::CancellationToken;

use crate::imaging::ImageSpec;

/// What a request is prepared for: a version's reference, input and image spec.
#[derive(Debug, Clone)]
pub struct Target {
    pub model: ModelRef,
    pub input: InputSpec,
    pub spec: ImageSpec,
}

impl Target {
    /// The target of `manifest`, with the limits (pixels, scans) of `base`.
    pub fn new(manifest: &Manifest, base: &ImageSpec) -> Self {
        Self {
            model: manifest.model_ref(),
            input: manifest.input.clone(),
            spec: ImageSpec {
                width: manifest.input.width,
                height: manifest.input.height,
                exif_orientation: manifest.preprocessing.exif_orientation,
                ..base.clone()
            },
        }
    }
}

#[derive(Default)]
struct State {
    policy: Option<Policy>,
    reports: HashMap<String, Serving>,
    targets: HashMap<String, Arc<Target>>,
}

/// Routes requests to versions; cheap to clone.
#[derive(Clone)]
pub struct Router {
    shipped: Arc<Target>,
    registry: Option<Registry>,
    state: Arc<RwLock<State>>,
}

impl Router {
    /// Routes everything to `shipped` until [`Router::follow`] sees a policy.
    pub fn new(shipped: Target, registry: Option<Registry>) -> Self {
        Self {
            shipped: Arc::new(shipped),
            registry,
            state: Arc::default(),
        }
    }

    /// The shipped model's target.
    pub fn shipped(&self) -> &Arc<Target> {
        &self.shipped
    }

    /// The target of the request `request_id`, pinned to `pin` if given.
    pub async fn route(&self, request_id: &str, pin: Option<&str>) -> Result<Arc<Target>, Error> {
        let version = match pin {
            Some(v) => v.trim().to_string(),
            None => match self.choose(request_id) {
                Some(v) => v,
                None => return Ok(self.shipped.clone()),
            },
        };
        self.target(&version).await
    }

    /// The version the policy gives `request_id`, standing in for one no worker serves;
    /// `None` without a policy.
    fn choose(&self, request_id: &str) -> Option<String> {
        let state = self.read();
        let policy = state.policy.as_ref()?;
        let chosen = policy.route(request_id);
        let served = served_versions(state.reports.values(), now_ms());
        if served.is_empty() || served.contains(chosen) {
            return Some(chosen.to_string());
        }
        // The current version, the previous one, else whatever the workers still serve (a policy
        // whose versions were all refused must not take the service down).
        let stand_in = std::iter::once(&policy.current)
            .chain(policy.previous.as_ref())
            .find(|v| served.contains(*v))
            .or_else(|| served.first());
        Some(stand_in.map_or(chosen, |v| v.as_str()).to_string())
    }

    async fn target(&self, version: &str) -> Result<Arc<Target>, Error> {
        if version == self.shipped.model.version {
            return Ok(self.shipped.clone());
        }
        if let Some(t) = self.read().targets.get(version) {
            return Ok(t.clone());
        }
        let unknown = || {
            Error::new(
                ErrorCode::UnknownModelVersion,
                format!("model version {version:?} is not published"),
            )
        };
        let registry = self.registry.as_ref().ok_or_else(unknown)?;
        let manifest = match registry.manifest(version).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(unknown()),
            Err(RegistryError::Corrupt { reason, .. }) => {
                return Err(Error::new(
                    ErrorCode::UnknownModelVersion,
                    format!("model version {version:?} has an invalid manifest: {reason}"),
                ));
            }
            Err(e) => {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    format!("cannot read model version {version:?}: {e}"),
                ));
            }
        };
        let target = Arc::new(Target::new(&manifest, &self.shipped.spec));
        self.write()
            .targets
            .insert(version.to_string(), target.clone());
        Ok(target)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Follows the policy and the serving reports until `token` is cancelled.
    pub async fn follow(self, token: CancellationToken) {
        let Some(registry) = self.registry.clone() else {
            return;
        };
        loop {
            let mut watch = match registry.kv().watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the model policy; retrying");
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => continue,
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => self.apply(&entry),
                        Some(Err(e)) => tracing::warn!(error = %e, "watching the model policy failed"),
                        None => break,
                    },
                }
            }
        }
    }

    fn apply(&self, entry: &kv::Entry) {
        let put = entry.operation == kv::Operation::Put;
        if entry.key == POLICY_KEY {
            let policy = if put {
                match parse_policy(&entry.value) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::error!(error = %e, "ignoring an invalid model policy");
                        return;
                    }
                }
            } else {
                None
            };
            tracing::info!(
                policy = policy
                    .as_ref()
                    .map_or_else(|| "none (the shipped model)".into(), Policy::describe),
                revision = entry.revision,
                "model policy changed"
            );
            self.write().policy = policy;
        } else if let Some(worker) = entry.key.strip_prefix(SERVING_PREFIX) {
            let report = put.then(|| Serving::parse(&entry.value)).flatten();
            let mut state = self.write();
            match report {
                Some(r) => {
                    tracing::debug!(worker, versions = ?r.versions, "a gpu-worker reports what it serves");
                    state.reports.insert(worker.to_string(), r);
                }
                None => {
                    state.reports.remove(worker);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::models::Canary;

    fn router() -> Router {
        let manifest = Manifest::load(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/manifest.json"),
        )
        .expect("manifest");
        let base = ImageSpec::from_manifest(&manifest);
        Router::new(Target::new(&manifest, &base), None)
    }

    fn report(r: &Router, worker: &str, versions: &[&str]) {
        r.write().reports.insert(
            worker.into(),
            Serving {
                versions: versions.iter().map(|v| v.to_string()).collect(),
                at_ms: now_ms(),
            },
        );
    }

    #[tokio::test]
    async fn without_a_policy_the_shipped_model_serves_and_unknown_pins_are_404() {
        let r = router();
        let t = r.route("a", None).await.expect("shipped");
        assert_eq!(t.model.version, "1.0.0");
        assert_eq!(
            r.route("a", Some("1.0.0"))
                .await
                .expect("pinned")
                .spec
                .width,
            224
        );
        let err = r.route("a", Some("9.9.9")).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownModelVersion);
        assert_eq!(err.code.http_status(), 404);
    }

    #[test]
    fn versions_no_worker_serves_get_a_stand_in() {
        let r = router();
        r.write().policy = Some(Policy {
            current: "2".into(),
            canary: Some(Canary {
                version: "3".into(),
                weight: 100,
            }),
            previous: Some("1".into()),
        });
        // Nothing reported yet (workers starting): the policy as is.
        assert_eq!(r.choose("x").as_deref(), Some("3"));
        report(&r, "w1", &["1"]);
        assert_eq!(r.choose("x").as_deref(), Some("1"));
        report(&r, "w1", &["1", "2"]);
        assert_eq!(r.choose("x").as_deref(), Some("2"));
        report(&r, "w2", &["3"]);
        assert_eq!(r.choose("x").as_deref(), Some("3"));
        // Every version of the policy refused: what the workers still serve.
        report(&r, "w1", &["0"]);
        r.write().reports.remove("w2");
        assert_eq!(r.choose("x").as_deref(), Some("0"));
    }
}
