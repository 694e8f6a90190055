//! The build: a recipe's steps, each a cached layer, into an image of the store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentbox_config::{NetworkConfig, SandboxConfig, SecurityConfig};
use agentbox_core::{CreateRequest, ExecRequest, SandboxBackend};
use agentbox_image::unpack::Budget;
use agentbox_image::{ImageRecord, ImageRef, LayerRef, RuntimeConfig, Store, template_reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::TemplateError;
use crate::context::{Copy, image_path};
use crate::recipe::{Recipe, RunCommand, Step};

/// The package registries a build's `RUN` steps may reach by default: Debian's mirrors (apt), PyPI (pip) and
/// npm's registry.
pub const BUILD_REGISTRIES: &[&str] =
    &["deb.debian.org", "security.debian.org", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org"];

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The template's name (`agentbox.local/templates/NAME:latest` in the store).
    pub name: String,
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// The build context: the directory `COPY` sources are in.
    pub context: PathBuf,
    /// `--build-arg NAME=VALUE`s, over the Dockerfile's `ARG` defaults.
    pub build_args: BTreeMap<String, String>,
    /// Domains `RUN` steps may reach besides [`BUILD_REGISTRIES`].
    pub allow_domains: Vec<String>,
    /// Address ranges (`10.0.0.0/8`, `192.0.2.7/32`) `RUN` steps may reach although they are not public: a
    /// package mirror or registry on a private network. The steps' egress policy refuses them otherwise.
    pub allow_cidrs: Vec<String>,
    /// The time limit of one `RUN` step.
    pub step_timeout: Duration,
    /// Memory of a `RUN` step's sandbox, in MiB.
    pub memory_mb: u64,
    /// Disk of a `RUN` step's sandbox, in GiB.
    pub disk_gb: u64,
}

impl BuildRequest {
    /// A build of `dockerfile` as `name`, with `context` as the build context and default limits.
    #[must_use]
    pub fn new(name: impl Into<String>, dockerfile: impl Into<String>, context: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            dockerfile: dockerfile.into(),
            context: context.into(),
            build_args: BTreeMap::new(),
            allow_domains: Vec::new(),
            allow_cidrs: Vec::new(),
            step_timeout: Duration::from_secs(30 * 60),
            memory_mb: 2048,
            disk_gb: 20,
        }
    }
}

/// How one step went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// The instruction.
    pub instruction: String,
    /// Its layer came from the cache.
    pub cached: bool,
    /// The layer it made (none for steps that only change the image's settings).
    pub layer: Option<String>,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// What a build made.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    /// The image's reference in the store.
    pub reference: String,
    /// Its manifest digest.
    pub digest: String,
    /// Each step, in order.
    pub steps: Vec<StepReport>,
    /// The whole build, in milliseconds.
    pub millis: u64,
}

impl BuildReport {
    /// Steps whose layer came from the cache.
    #[must_use]
    pub fn cached_steps(&self) -> usize {
        self.steps.iter().filter(|s| s.cached && s.layer.is_some()).count()
    }
}

/// A built template, as listed.
#[derive(Clone, Debug, Serialize)]
pub struct TemplateInfo {
    /// Its name.
    pub name: String,
    /// Its image reference.
    pub reference: String,
    /// Its manifest digest.
    pub digest: String,
    /// Its layers.
    pub layers: usize,
    /// When it was built, in seconds since the Unix epoch.
    pub built_at: u64,
}

/// A cached step: the layer it made.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheEntry {
    instruction: String,
    layer: LayerRef,
}

/// Builds templates with a backend's sandboxes into an image store (the one the backend's sandboxes use).
pub struct Builder {
    backend: Arc<dyn SandboxBackend>,
    store: Store,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").field("store", &self.store.dir()).finish_non_exhaustive()
    }
}

fn chain(parent: &str, what: &str) -> String {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    h.update(b"\n");
    h.update(what.as_bytes());
    hex::encode(h.finalize())
}

/// Replaces `$NAME` and `${NAME}` with values from `vars` (unknown names become empty, as Docker does).
fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => (&body[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], end)
        };
        if len == 0 || name.is_empty() {
            out.push('$');
            rest = after;
        } else {
            out.push_str(vars.get(name).map_or("", String::as_str));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    env.retain(|e| e.split_once('=').is_none_or(|(k, _)| k != key));
    env.push(format!("{key}={value}"));
}

fn env_map(env: &[String]) -> BTreeMap<String, String> {
    env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

impl Builder {
    /// A builder running steps on `backend`, keeping layers and images in `store`.
    #[must_use]
    pub fn new(backend: Arc<dyn SandboxBackend>, store: Store) -> Self {
        Self { backend, store }
    }

    fn cache_dir(&self) -> PathBuf {
        self.store.dir().join("templates").join("cache")
    }

    fn cached(&self, key: &str) -> Option<LayerRef> {
        let bytes = std::fs::read(self.cache_dir().join(format!("{key}.json"))).ok()?;
        let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        (self.store.has_layer(&entry.layer.diff_id) && self.store.has_blob(&entry.layer.blob)).then_some(entry.layer)
    }

    fn remember(&self, key: &str, instruction: &str, layer: &LayerRef) -> Result<(), TemplateError> {
        let dir = self.cache_dir();
        std::fs::create_dir_all(&dir).map_err(TemplateError::io("making the template cache"))?;
        let entry = CacheEntry { instruction: instruction.to_owned(), layer: layer.clone() };
        let tmp = dir.join(format!(".{key}.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(&entry).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, dir.join(format!("{key}.json"))))
            .map_err(TemplateError::io("writing the template cache"))
    }

    /// Builds `request` into the store.
    ///
    /// # Errors
    /// A Dockerfile templates don't support, a base image that can't be pulled, a failing step (with the end
    /// of its output), or a failure of the backend or the store.
    pub async fn build(&self, request: &BuildRequest) -> Result<BuildReport, TemplateError> {
        let began = Instant::now();
        let reference = template_reference(&request.name)
            .map_err(|source| TemplateError::Name { name: request.name.clone(), source })?;
        let recipe = Recipe::parse(&request.dockerfile)?;
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        let mut steps = recipe.steps.iter().peekable();
        // ARGs before FROM may be used in it.
        while let Some((_, Step::Arg(name, default))) = steps.peek() {
            let value = request.build_args.get(name).cloned().or_else(|| default.clone()).unwrap_or_default();
            args.insert(name.clone(), value);
            steps.next();
        }
        let from = expand(&recipe.from, &args);
        let base = self.base(&from).await?;
        let mut layers = base.layers.clone();
        let mut config = base.config.clone();
        let mut key = chain("", &format!("FROM {}", base.manifest_digest));
        let mut reports = Vec::new();
        for (n, (instruction, step)) in steps.enumerate() {
            let t = Instant::now();
            let vars = {
                let mut v = args.clone();
                v.extend(env_map(&config.env));
                v
            };
            let workdir = config.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
            let mut report = StepReport { instruction: instruction.clone(), cached: true, layer: None, millis: 0 };
            match step {
                Step::Arg(name, default) => {
                    let value = request.build_args.get(name).cloned().or_else(|| default.clone()).unwrap_or_default();
                    args.insert(name.clone(), value.clone());
                    key = chain(&key, &format!("ARG {name}={value}"));
                }
                Step::Env(pairs) => {
                    for (k, v) in pairs {
                        set_env(&mut config.env, k, &expand(v, &vars));
                    }
                    key = chain(&key, instruction);
                }
                Step::Workdir(w) => {
                    config.working_dir = Some(format!("/{}", image_path(&workdir, &expand(w, &vars))));
                    key = chain(&key, instruction);
                }
                Step::User(u) => {
                    config.user = Some(expand(u, &vars));
                    key = chain(&key, instruction);
                }
                Step::Label(pairs) => {
                    for (k, v) in pairs {
                        config.labels.insert(k.clone(), expand(v, &vars));
                    }
                }
                Step::Cmd(c) => config.cmd = Some(c.clone()),
                Step::Entrypoint(e) => config.entrypoint = Some(e.clone()),
                Step::Expose(p) => config.exposed_ports.extend(p.iter().map(|p| expand(p, &vars))),
                Step::Copy { sources, dest, chown } => {
                    let sources: Vec<String> = sources.iter().map(|s| expand(s, &vars)).collect();
                    let plan =
                        Copy::plan(&request.context, &sources, &expand(dest, &vars), &workdir, chown.as_deref())?;
                    key = chain(&key, &format!("{instruction}\n{}", plan.hash()?));
                    let layer = match self.cached(&key) {
                        Some(l) => l,
                        None => {
                            report.cached = false;
                            let layer = self.copy_layer(&plan).await?;
                            self.remember(&key, instruction, &layer)?;
                            layer
                        }
                    };
                    report.layer = Some(layer.diff_id.to_string());
                    layers.push(layer);
                }
                Step::Run(command) => {
                    let env_for_key =
                        serde_json::to_string(&(&args, &config.env, &config.user, &workdir)).unwrap_or_default();
                    key = chain(&key, &format!("{instruction}\n{env_for_key}"));
                    let layer = match self.cached(&key) {
                        Some(l) => l,
                        None => {
                            report.cached = false;
                            let layer = self
                                .run_layer(request, n + 1, instruction, command, &layers, &config, &args, &workdir)
                                .await?;
                            self.remember(&key, instruction, &layer)?;
                            layer
                        }
                    };
                    report.layer = Some(layer.diff_id.to_string());
                    layers.push(layer);
                }
            }
            report.millis = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
            tracing::info!(step = n + 1, instruction = %instruction, cached = report.cached, "template step");
            reports.push(report);
        }
        let store = self.store.clone();
        let (r, l, c) = (reference.clone(), layers, config);
        let record = tokio::task::spawn_blocking(move || store.put_local_image(&r, l, c))
            .await
            .map_err(|e| TemplateError::Io { what: "recording the template", source: std::io::Error::other(e) })??;
        Ok(BuildReport {
            reference: reference.to_string(),
            digest: record.manifest_digest.to_string(),
            steps: reports,
            millis: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The base image's record, pulled (by the backend, into the same store) when missing.
    async fn base(&self, from: &str) -> Result<ImageRecord, TemplateError> {
        let image = ImageRef::parse(from).map_err(|e| TemplateError::Dockerfile(format!("FROM {from}: {e}")))?;
        if let Some(record) = self.store.image(&image)? {
            if self.store.layer_dirs(&record).is_ok() {
                return Ok(record);
            }
        }
        let config = SandboxConfig { image: Some(from.to_owned()), ..SandboxConfig::default() };
        self.backend.prepare(&config).await.map_err(TemplateError::sandbox("getting the FROM image"))?;
        self.store.image(&image)?.ok_or_else(|| {
            TemplateError::Dockerfile(format!(
                "FROM {from}: the backend did not put the image in the store at {} (is it the backend's store?)",
                self.store.dir().display()
            ))
        })
    }

    fn budget(&self) -> Budget {
        let limits = &self.store.config().limits;
        Budget::new(limits.max_bytes, limits.max_entries)
    }

    async fn copy_layer(&self, plan: &Copy) -> Result<LayerRef, TemplateError> {
        let tmp = self.store.dir().join("tmp").join(format!("copy-{}-{}.tar", std::process::id(), random_tag()));
        let file = std::fs::File::create(&tmp).map_err(TemplateError::io("writing a COPY layer"))?;
        let written = plan.write_layer(std::io::BufWriter::new(file));
        let imported = match written {
            Ok(()) => {
                let (store, t, budget) = (self.store.clone(), tmp.clone(), self.budget());
                tokio::task::spawn_blocking(move || store.import_layer(&t, &budget))
                    .await
                    .map_err(|e| TemplateError::Io {
                        what: "importing a COPY layer",
                        source: std::io::Error::other(e),
                    })?
                    .map_err(TemplateError::from)
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tmp);
        imported
    }

    /// Runs a `RUN` step in a sandbox of the image so far and returns what it changed as a layer.
    #[allow(clippy::too_many_arguments)]
    async fn run_layer(
        &self,
        request: &BuildRequest,
        step: usize,
        instruction: &str,
        command: &RunCommand,
        layers: &[LayerRef],
        config: &RuntimeConfig,
        args: &BTreeMap<String, String>,
        workdir: &str,
    ) -> Result<LayerRef, TemplateError> {
        // The image so far, recorded for the step's sandbox under a name of its own.
        let so_far = ImageRef::parse(&format!("{}/build/{}:latest", agentbox_image::LOCAL_REGISTRY, random_tag()))
            .map_err(|e| TemplateError::Dockerfile(e.to_string()))?;
        self.store.put_local_image(&so_far, layers.to_vec(), config.clone())?;
        let result = self.run_in_sandbox(request, step, instruction, command, &so_far, config, args, workdir).await;
        let _ = self.store.remove(&so_far);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_in_sandbox(
        &self,
        request: &BuildRequest,
        step: usize,
        instruction: &str,
        command: &RunCommand,
        image: &ImageRef,
        config: &RuntimeConfig,
        args: &BTreeMap<String, String>,
        workdir: &str,
    ) -> Result<LayerRef, TemplateError> {
        let mut allowed: Vec<String> = BUILD_REGISTRIES.iter().map(|d| (*d).to_owned()).collect();
        allowed.extend(request.allow_domains.iter().cloned());
        let sandbox = SandboxConfig {
            image: Some(image.to_string()),
            memory_mb: request.memory_mb,
            disk_gb: request.disk_gb,
            execution_timeout: request.step_timeout,
            network: NetworkConfig {
                enabled: true,
                allowed_domains: allowed,
                allowed_cidrs: request.allow_cidrs.clone(),
                ..NetworkConfig::default()
            },
            security: SecurityConfig { allow_root_inside: true, ..SecurityConfig::default() },
            ..SandboxConfig::default()
        };
        let user = match config.user.as_deref().map(|u| u.split(':').next().unwrap_or(u)) {
            None | Some("" | "root" | "0") => Some("root".to_owned()),
            Some(u) if u == sandbox.security.run_as.name || u == "1000" => None,
            Some(other) => {
                return Err(TemplateError::Dockerfile(format!(
                    "USER {other}: RUN steps run as root or as the sandbox's user ({})",
                    sandbox.security.run_as.name
                )));
            }
        };
        self.backend.prepare(&sandbox).await.map_err(TemplateError::sandbox("preparing a build step's sandbox"))?;
        let info = self
            .backend
            .create(CreateRequest::new(sandbox))
            .await
            .map_err(TemplateError::sandbox("starting a build step's sandbox"))?;
        let id = info.id;
        let quoted = format!("'{}'", workdir.replace('\'', "'\\''"));
        let exec = match command {
            RunCommand::Shell(line) => ExecRequest::argv([
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!("mkdir -p {quoted} && cd {quoted} && {line}"),
            ]),
            RunCommand::Exec(argv) => ExecRequest { cwd: Some(workdir.to_owned()), ..ExecRequest::argv(argv.clone()) },
        };
        let mut env = args.clone();
        env.extend(env_map(&config.env));
        let exec = ExecRequest { env, user, timeout: Some(request.step_timeout), ..exec };
        let ran = async {
            let out = self.backend.exec(&id, exec).await?.collect(64 * 1024).await;
            Ok::<_, agentbox_core::Error>(out)
        }
        .await;
        let out = match ran {
            Ok(out) => out,
            Err(e) => {
                let _ = self.backend.destroy(&id).await;
                return Err(TemplateError::Sandbox { what: "running a build step", source: e });
            }
        };
        if out.exit_code != 0 {
            let _ = self.backend.destroy(&id).await;
            let mut output = format!("{}{}", out.stdout, out.stderr);
            if output.len() > 4000 {
                let cut = output.len() - 4000;
                let cut = (cut..output.len()).find(|i| output.is_char_boundary(*i)).unwrap_or(cut);
                output = output.split_off(cut);
            }
            return Err(TemplateError::StepFailed {
                step,
                instruction: instruction.to_owned(),
                exit_code: out.exit_code,
                output,
            });
        }
        let stopped =
            self.backend.stop(&id).await.map_err(TemplateError::sandbox("stopping a build step's sandbox"))?;
        let tar = self.store.dir().join("tmp").join(format!("run-{}-{}.tar", std::process::id(), random_tag()));
        let exported = self.backend.export_root_changes(&stopped.key, &tar).await;
        let _ = self.backend.discard_stopped(&stopped.key).await;
        let imported = match exported {
            Ok(_) => {
                let (store, t, budget) = (self.store.clone(), tar.clone(), self.budget());
                tokio::task::spawn_blocking(move || store.import_layer(&t, &budget))
                    .await
                    .map_err(|e| TemplateError::Io { what: "importing a RUN layer", source: std::io::Error::other(e) })?
                    .map_err(TemplateError::from)
            }
            Err(e) => Err(TemplateError::Sandbox { what: "exporting a build step's changes", source: e }),
        };
        let _ = std::fs::remove_file(&tar);
        imported
    }

    /// Every template in the store.
    ///
    /// # Errors
    /// The store can't be read.
    pub fn list(&self) -> Result<Vec<TemplateInfo>, TemplateError> {
        let prefix = format!("{}/templates/", agentbox_image::LOCAL_REGISTRY);
        Ok(self
            .store
            .list()?
            .into_iter()
            .filter_map(|r| {
                let name = r.reference.strip_prefix(&prefix)?.strip_suffix(":latest")?.to_owned();
                Some(TemplateInfo {
                    name,
                    reference: r.reference.clone(),
                    digest: r.manifest_digest.to_string(),
                    layers: r.layers.len(),
                    built_at: r.pulled_at,
                })
            })
            .collect())
    }

    /// Forgets the template `name` (its layers go at the next `image prune` unless cached steps or other images
    /// use them). Returns whether it existed.
    ///
    /// # Errors
    /// An invalid name, or the store failing.
    pub fn remove(&self, name: &str) -> Result<bool, TemplateError> {
        let reference =
            template_reference(name).map_err(|source| TemplateError::Name { name: name.to_owned(), source })?;
        Ok(self.store.remove(&reference)?)
    }
}

/// A name for a temporary file or image record, unique to this build.
fn random_tag() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        b[..4].copy_from_slice(&nanos.to_le_bytes());
        b[4..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_as_docker_does() {
        let vars: BTreeMap<String, String> = [("A".into(), "1".into()), ("LONG_NAME".into(), "x".into())].into();
        assert_eq!(expand("$A-${LONG_NAME}-$MISSING-$", &vars), "1-x--$");
        assert_eq!(expand("no vars", &vars), "no vars");
    }
}
