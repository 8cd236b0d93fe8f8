//! The model versions this worker serves right now: each version's engine (its own replicas),
//! model reference, input spec and classes. The batcher looks a tensor's version up here; the
//! rollout follower ([`crate::rollout`]) swaps the set. A version removed from the set keeps its
//! engine until the batches that hold it finish, then its threads end and its memory is freed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use protocol::ModelRef;
use protocol::manifest::{InputSpec, Manifest};

use crate::engine::{Engine, EngineInfo};

/// One loaded version.
pub struct Version {
    pub model: ModelRef,
    pub input: InputSpec,
    pub classes: Arc<Vec<String>>,
    pub engine: Engine,
}

impl Version {
    pub fn new(manifest: &Manifest, engine: Engine) -> Self {
        Self {
            model: manifest.model_ref(),
            input: manifest.input.clone(),
            classes: Arc::new(manifest.classes.clone()),
            engine,
        }
    }
}

/// The versions served, by version: replaced whole on every change, read without a lock held.
type Versions = Arc<BTreeMap<String, Arc<Version>>>;

/// The set of versions served, shared by the batcher and the rollout follower; cheap to clone.
#[derive(Clone)]
pub struct Serving {
    versions: Arc<RwLock<Versions>>,
    /// The first version's engine settings (every version is started with the same options).
    info: EngineInfo,
}

impl Serving {
    /// Serving `first` only.
    pub fn new(first: Version) -> Self {
        let info = first.engine.info().clone();
        let mut map = BTreeMap::new();
        map.insert(first.model.version.clone(), Arc::new(first));
        Self {
            versions: Arc::new(RwLock::new(Arc::new(map))),
            info,
        }
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn snapshot(&self) -> Versions {
        self.versions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The version named `version`, if served.
    pub fn get(&self, version: &str) -> Option<Arc<Version>> {
        self.snapshot().get(version).cloned()
    }

    /// The versions served, sorted.
    pub fn versions(&self) -> Vec<String> {
        self.snapshot().keys().cloned().collect()
    }

    /// Adds (or replaces) a version.
    pub fn insert(&self, version: Version) {
        self.update(|map| {
            map.insert(version.model.version.clone(), Arc::new(version));
        });
    }

    /// Keeps only the versions `keep` returns true for; returns the removed ones.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) -> Vec<Arc<Version>> {
        let mut removed = Vec::new();
        self.update(|map| {
            let names: Vec<String> = map.keys().cloned().collect();
            for name in names {
                if !keep(&name)
                    && let Some(v) = map.remove(&name)
                {
                    removed.push(v);
                }
            }
        });
        removed
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<String, Arc<Version>>)) {
        let mut guard = self
            .versions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut map = guard.as_ref().clone();
        change(&mut map);
        *guard = Arc::new(map);
    }
}
