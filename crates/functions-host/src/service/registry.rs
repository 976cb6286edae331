//! The functions component's registry: the deployed versions registered from the store at
//! startup and their modules loaded in the background, deploys (version `latest + 1`, immutable),
//! aliases, removal, listing, and the target check of a rule's `function` action.

use super::*;

impl Functions {
    /// Registers every stored version with its manifest (its module still loading) and every
    /// alias; returns the modules to load with their manifests.
    pub(super) async fn register(
        &self,
    ) -> Result<Vec<(StoredFunctionVersion, Arc<Manifest>)>, FunctionError> {
        let (versions, aliases) = self.inner.store.load_functions().await?;
        let mut todo = Vec::new();
        for v in versions {
            match Manifest::parse(&v.manifest, self.inner.max_memory_mb) {
                Ok(m) => {
                    let m = Arc::new(m);
                    self.insert_version(&v.name, v.version, Some(m.clone()), Load::Loading);
                    todo.push((v, m));
                }
                Err(e) => {
                    let reason = format!("the deployed manifest is no longer valid (was [functions] max_memory_mb lowered?): {e}");
                    self.insert_version(&v.name, v.version, None, Load::Loading);
                    self.load_failed(&v.name, v.version, reason);
                }
            }
        }
        let mut registry = self.lock();
        for a in aliases {
            if let Some(f) = registry.get_mut(&a.name) {
                f.routes.aliases.insert(
                    a.alias,
                    Alias {
                        version: a.version,
                        weight: a.weight,
                    },
                );
            }
        }
        Ok(todo)
    }

    /// Loads the registered versions' modules (from the compile cache), one at a time, each
    /// bounded ([`Runtime::prepare`]): a failure is recorded and the others load.
    pub(super) async fn load(
        self,
        todo: Vec<(StoredFunctionVersion, Arc<Manifest>)>,
        _admin: tokio::sync::OwnedMutexGuard<()>,
    ) {
        let (mut ready, mut failed) = (0, 0);
        for (v, manifest) in todo {
            let loaded = match std::fs::read(self.inner.dir.join(&v.module)) {
                Ok(wasm) => self
                    .prepare(wasm, manifest)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot read the module: {e}")),
            };
            match loaded {
                Ok(p) => {
                    ready += 1;
                    self.set_state(&v.name, v.version, Load::Ready(Arc::new(p)));
                }
                Err(reason) => {
                    failed += 1;
                    self.load_failed(&v.name, v.version, reason);
                }
            }
        }
        self.inner.loaded.send_replace(true);
        info!(versions = ready, failed, "function modules loaded");
    }

    /// Records that a version cannot be loaded: listed, counted, logged.
    fn load_failed(&self, name: &str, version: u64, reason: String) {
        self.inner
            .metrics
            .count(&self.inner.metrics.load_failures, name);
        warn!(function = name, version, error = reason, "cannot load a deployed function version; its invocations fail and its events are dead-lettered");
        self.set_state(name, version, Load::Failed(reason));
    }

    fn set_state(&self, name: &str, version: u64, state: Load) {
        if let Some(v) = self
            .lock()
            .get_mut(name)
            .and_then(|f| f.versions.get_mut(&version))
        {
            v.state = state;
        }
    }

    /// Compiles (or maps from the cache) on the blocking pool: compiling is CPU-heavy.
    async fn prepare(
        &self,
        wasm: Vec<u8>,
        manifest: Arc<Manifest>,
    ) -> Result<Prepared, DeployError> {
        let inner = self.inner.clone();
        let prepared = tokio::task::spawn_blocking(move || inner.runtime.prepare(&wasm, manifest))
            .await
            .map_err(|e| DeployError::Abi(format!("the compiler task failed: {e}")))??;
        let source = if prepared.from_cache {
            "cache"
        } else {
            "compiled"
        };
        self.inner
            .metrics
            .modules_loaded
            .get_or_create(&crate::metrics::ModuleSourceLabels { source })
            .inc();
        Ok(prepared)
    }

    fn insert_version(
        &self,
        name: &str,
        version: u64,
        manifest: Option<Arc<Manifest>>,
        state: Load,
    ) {
        let mut registry = self.lock();
        if !registry.contains_key(name) {
            let (queue, rx) = mpsc::channel(self.inner.queue_bound);
            tokio::spawn(self.clone().dispatch(name.to_owned(), rx));
            registry.insert(
                name.to_owned(),
                Function {
                    routes: Routes::default(),
                    versions: BTreeMap::new(),
                    queue,
                    logs: Logs::new(name, &self.inner.metrics),
                    running: Arc::new(Semaphore::new(1)),
                    limit: 1,
                },
            );
        }
        if let Some(f) = registry.get_mut(name) {
            // Idle instances hold pool slots: only the newest version keeps them.
            for v in f.versions.values() {
                if let Load::Ready(p) = &v.state {
                    p.release_idle();
                }
            }
            f.routes.versions.push(version);
            f.versions.insert(version, Version { manifest, state });
            let limit = f
                .latest_manifest()
                .map_or(1, |m| m.max_concurrency as usize);
            if limit != f.limit {
                f.running = Arc::new(Semaphore::new(limit));
                f.limit = limit;
            }
        }
    }

    /// Deploys a new version; with `alias`, points that alias at it.
    pub async fn deploy(
        &self,
        manifest_text: &str,
        wasm: Vec<u8>,
        alias: Option<String>,
    ) -> Result<Deployed, FunctionError> {
        let manifest = Arc::new(Manifest::parse(manifest_text, self.inner.max_memory_mb)?);
        if let Some(a) = &alias {
            if !matches!(Qualifier::parse(a), Ok(Qualifier::Alias(_))) {
                return Err(FunctionError::BadRequest(format!(
                    "{a:?} is not an alias name (A-Z a-z 0-9 _ -, not only digits)"
                )));
            }
        }
        let _admin = self.inner.admin.lock().await;
        let name = manifest.name.clone();
        let version = self
            .lock()
            .get(&name)
            .map_or(1, |f| f.routes.next_version());
        let prepared = self.prepare(wasm.clone(), manifest).await?;
        let from_cache = prepared.from_cache;
        let module = format!("{name}/{version}.wasm");
        write_atomically(&self.inner.dir.join(&module), &wasm)
            .map_err(|e| FunctionError::Io(format!("cannot write the module: {e}")))?;
        self.inner
            .store
            .save_function_version(StoredFunctionVersion {
                name: name.clone(),
                version,
                manifest: manifest_text.to_owned(),
                module,
                created_ms: now_ms(),
            })
            .await?;
        let manifest = Some(prepared.manifest().clone());
        self.insert_version(&name, version, manifest, Load::Ready(Arc::new(prepared)));
        if let Some(alias) = alias {
            self.set_alias_locked(&name, &alias, version, None).await?;
        }
        info!(function = name, version, "function deployed");
        self.update_routes();
        Ok(Deployed {
            name,
            version,
            from_cache,
        })
    }

    /// Deploys an existing version's manifest and module again as the new `$LATEST`: how a
    /// deployment's rollback puts back the code that ran before it (versions are immutable and
    /// numbered upwards, so `$LATEST` moves back by moving forwards; the module comes from the
    /// compile cache).
    pub async fn restore(&self, name: &str, version: u64) -> Result<Deployed, FunctionError> {
        let (versions, _) = self.inner.store.load_functions().await?;
        let stored = versions
            .into_iter()
            .find(|v| v.name == name && v.version == version)
            .ok_or(RoutingError::NoSuchVersion(version))?;
        let wasm = std::fs::read(self.inner.dir.join(&stored.module))
            .map_err(|e| FunctionError::Io(format!("cannot read the module: {e}")))?;
        self.deploy(&stored.manifest, wasm, None).await
    }

    /// Creates or moves an alias.
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: u64,
        weight: Option<(u64, u8)>,
    ) -> Result<(), FunctionError> {
        let _admin = self.inner.admin.lock().await;
        self.set_alias_locked(name, alias, version, weight).await?;
        // Triggers may name the alias: nothing to resubscribe, the queue resolves it per event.
        Ok(())
    }

    async fn set_alias_locked(
        &self,
        name: &str,
        alias: &str,
        version: u64,
        weight: Option<(u64, u8)>,
    ) -> Result<(), FunctionError> {
        if !matches!(Qualifier::parse(alias), Ok(Qualifier::Alias(_))) {
            return Err(FunctionError::BadRequest(format!(
                "{alias:?} is not an alias name (A-Z a-z 0-9 _ -, not only digits)"
            )));
        }
        let a = Alias::new(version, weight)?;
        self.lock()
            .get(name)
            .ok_or_else(|| FunctionError::NotFound(name.to_owned()))?
            .routes
            .check_alias(&a)?;
        self.inner
            .store
            .set_function_alias(StoredAlias {
                name: name.to_owned(),
                alias: alias.to_owned(),
                version,
                weight,
            })
            .await?;
        if let Some(f) = self.lock().get_mut(name) {
            f.routes.aliases.insert(alias.to_owned(), a);
        }
        Ok(())
    }

    /// Removes a function: versions, aliases, key-value state, module files.
    pub async fn remove(&self, name: &str) -> Result<(), FunctionError> {
        let _admin = self.inner.admin.lock().await;
        if !self.lock().contains_key(name) {
            return Err(FunctionError::NotFound(name.to_owned()));
        }
        self.inner.store.remove_function(name.to_owned()).await?;
        // Dropping the entry drops the queue's sender: its dispatcher finishes what is queued.
        self.lock().remove(name);
        let _ = std::fs::remove_dir_all(self.inner.dir.join(name));
        info!(function = name, "function removed");
        self.update_routes();
        Ok(())
    }

    /// Every function.
    pub fn list(&self) -> Vec<FunctionInfo> {
        self.lock()
            .iter()
            .map(|(name, f)| FunctionInfo {
                name: name.clone(),
                versions: f.routes.versions.clone(),
                latest: f.routes.latest().unwrap_or(0),
                aliases: f
                    .routes
                    .aliases
                    .iter()
                    .map(|(k, a)| (k.clone(), (a.version, a.weight)))
                    .collect(),
                triggers: f
                    .latest_manifest()
                    .map(|m| m.triggers.clone())
                    .unwrap_or_default(),
                unavailable: f
                    .versions
                    .iter()
                    .filter_map(|(n, v)| match &v.state {
                        Load::Ready(_) => None,
                        Load::Loading => Some((*n, "loading".to_owned())),
                        Load::Failed(why) => Some((*n, why.clone())),
                    })
                    .collect(),
            })
            .collect()
    }

    /// A function's recent log lines.
    pub fn logs(&self, name: &str) -> Result<Vec<String>, FunctionError> {
        self.lock()
            .get(name)
            .map(|f| f.logs.lines())
            .ok_or_else(|| FunctionError::NotFound(name.to_owned()))
    }

    /// Whether an async event for `target` (`name` or `name:qualifier`) reaches a deployed
    /// version now: the check a rule's `function` action makes, so that invoking a function that
    /// does not exist fails into the rule's error action, as an AWS IoT rule's Lambda action does.
    pub fn check_target(&self, target: &str) -> Result<(), FunctionError> {
        let (name, qualifier) =
            parse_target(&event_topic(target), "/event").map_err(FunctionError::BadRequest)?;
        let registry = self.lock();
        let f = registry
            .get(&name)
            .ok_or_else(|| FunctionError::NotFound(name.clone()))?;
        // The draw picks between an alias's weighted versions; 0.0 checks its main one.
        let version = f.routes.resolve(&qualifier, 0.0)?;
        match f.versions.get(&version).map(|v| &v.state) {
            Some(Load::Ready(_) | Load::Loading) => Ok(()),
            Some(Load::Failed(reason)) => Err(FunctionError::LoadFailed {
                name,
                version,
                reason: reason.clone(),
            }),
            None => Err(RoutingError::NoSuchVersion(version).into()),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
