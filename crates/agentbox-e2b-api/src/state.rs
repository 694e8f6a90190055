//! The E2B sandboxes: what E2B knows about a sandbox that the manager does not (template, metadata, deadline,
//! access token, processes), and the reaper that enforces each sandbox's timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use agentbox_core::{LockExt as _, RunId, SandboxManager, SandboxState};
use agentbox_tools::code::CodeLanguage;
use axum::http::HeaderMap;
use subtle::ConstantTimeEq as _;

use crate::process::Table;
use crate::{E2bApiConfig, E2bApiError, KeyCheck};

/// The envd version reported to the SDKs: the highest whose features the SDKs gate on are implemented. 0.5.7
/// means: `stdin` may be false on Start (0.3.0), no user name in Basic auth (0.4.0), `CloseStdin` (0.5.2),
/// octet-stream and gzip uploads (0.5.7), and recursive watching (0.1.4). 0.6.2 would promise file metadata.
pub const ENVD_VERSION: &str = "0.5.7";

/// The client id reported (a legacy field the SDKs require).
pub const CLIENT_ID: &str = "agentbox";

/// Most code-context working directories remembered per sandbox.
pub const MAX_CONTEXT_CWDS: usize = 1024;

/// How often expired sandboxes are looked for.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// One E2B sandbox.
#[derive(Debug)]
pub struct E2bSandbox {
    /// Its id (also its run id in the manager).
    pub id: String,
    /// Its run.
    pub run: RunId,
    /// The template it was created from.
    pub template_id: String,
    /// Its labels.
    pub metadata: BTreeMap<String, String>,
    /// When it was created.
    pub started_at: SystemTime,
    /// Pause instead of kill at the deadline.
    pub auto_pause: bool,
    /// The `X-Access-Token` envd calls must carry, when secure.
    pub access_token: Option<String>,
    /// CPUs.
    pub cpu_count: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Disk, MiB.
    pub disk_mb: u64,
    /// When it is killed (or paused); `None` while paused.
    deadline: Mutex<Option<SystemTime>>,
    /// Its processes started through envd.
    pub processes: Table,
    /// Its directory watchers.
    pub watchers: crate::watch::Watchers,
    /// The working directories of its code contexts, where not the home.
    context_cwds: Mutex<BTreeMap<String, String>>,
    /// Its contexts of languages that keep no state (bash, typescript): a name for the language.
    stateless_contexts: Mutex<BTreeMap<String, CodeLanguage>>,
}

impl E2bSandbox {
    /// When its timeout expires (`None` while paused).
    #[must_use]
    pub fn deadline(&self) -> Option<SystemTime> {
        *self.deadline.lock_unpoisoned()
    }

    /// Sets its deadline.
    pub fn set_deadline(&self, deadline: Option<SystemTime>) {
        *self.deadline.lock_unpoisoned() = deadline;
    }

    /// Records a code context's working directory (at most [`MAX_CONTEXT_CWDS`] are kept).
    pub fn remember_cwd(&self, context: &str, cwd: &str) {
        let mut cwds = self.context_cwds.lock_unpoisoned();
        if cwds.len() < MAX_CONTEXT_CWDS || cwds.contains_key(context) {
            cwds.insert(context.to_owned(), cwd.to_owned());
        }
    }

    /// Forgets a code context's working directory.
    pub fn forget_cwd(&self, context: &str) {
        self.context_cwds.lock_unpoisoned().remove(context);
    }

    /// A code context's working directory.
    #[must_use]
    pub fn cwd_of(&self, context: &str) -> String {
        self.context_cwds.lock_unpoisoned().get(context).cloned().unwrap_or_else(|| crate::fs::HOME.to_owned())
    }

    /// Records a context of a stateless language.
    ///
    /// # Errors
    /// [`E2bApiError::LimitReached`] past [`MAX_CONTEXT_CWDS`] such contexts.
    pub fn add_stateless_context(&self, id: &str, language: CodeLanguage) -> Result<(), E2bApiError> {
        let mut all = self.stateless_contexts.lock_unpoisoned();
        if all.len() >= MAX_CONTEXT_CWDS {
            return Err(E2bApiError::LimitReached(format!(
                "this sandbox has {MAX_CONTEXT_CWDS} bash and typescript contexts, the limit; remove some"
            )));
        }
        all.insert(id.to_owned(), language);
        Ok(())
    }

    /// The language of a stateless context.
    #[must_use]
    pub fn stateless_context(&self, id: &str) -> Option<CodeLanguage> {
        self.stateless_contexts.lock_unpoisoned().get(id).copied()
    }

    /// Forgets a stateless context; whether it was one.
    pub fn remove_stateless_context(&self, id: &str) -> bool {
        self.stateless_contexts.lock_unpoisoned().remove(id).is_some()
    }

    /// The stateless contexts.
    #[must_use]
    pub fn stateless_contexts(&self) -> Vec<(String, CodeLanguage)> {
        self.stateless_contexts.lock_unpoisoned().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Checks the `X-Access-Token` of an envd call, in constant time.
    ///
    /// # Errors
    /// [`E2bApiError::Unauthorized`] when the sandbox is secure and the token is missing or wrong.
    pub fn check_access(&self, headers: &HeaderMap) -> Result<(), E2bApiError> {
        let Some(token) = &self.access_token else { return Ok(()) };
        let presented = headers.get("x-access-token").map(axum::http::HeaderValue::as_bytes).unwrap_or_default();
        if bool::from(token.as_bytes().ct_eq(presented)) {
            Ok(())
        } else {
            Err(E2bApiError::Unauthorized(format!(
                "missing or wrong X-Access-Token for sandbox {}: send the envdAccessToken its creation returned",
                self.id
            )))
        }
    }
}

/// Everything the handlers share.
pub struct Inner {
    /// The manager the sandboxes live in.
    pub manager: SandboxManager,
    /// Checks `X-API-KEY`.
    pub check_key: KeyCheck,
    /// The settings.
    pub config: E2bApiConfig,
    sandboxes: Mutex<HashMap<String, Arc<E2bSandbox>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The shared state.
pub type Shared = Arc<Inner>;

/// A new shared state.
pub(crate) fn new_shared(manager: SandboxManager, check_key: KeyCheck, config: E2bApiConfig) -> Shared {
    Arc::new(Inner { manager, check_key, config, sandboxes: Mutex::new(HashMap::new()) })
}

/// What a new sandbox is made of.
#[derive(Debug)]
pub struct NewEntry {
    /// Template.
    pub template_id: String,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
    /// Seconds to live.
    pub timeout: Duration,
    /// Pause at the deadline.
    pub auto_pause: bool,
    /// Issue an access token.
    pub secure: bool,
    /// CPUs, memory and disk (MiB).
    pub resources: (u32, u64, u64),
}

impl Inner {
    /// The sandbox `id`.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] when there is none.
    pub fn get(&self, id: &str) -> Result<Arc<E2bSandbox>, E2bApiError> {
        self.sandboxes.lock_unpoisoned().get(id).cloned().ok_or_else(|| {
            E2bApiError::NotFound(format!(
                "sandbox {id} not found: it was killed, its timeout expired, or it never existed"
            ))
        })
    }

    /// The sandbox an envd or interpreter call names by its headers, its access token checked.
    ///
    /// # Errors
    /// [`E2bApiError::SandboxGone`] for an unknown sandbox, [`E2bApiError::Unauthorized`] for a wrong token.
    pub fn for_call(&self, headers: &HeaderMap, check_token: bool) -> Result<Arc<E2bSandbox>, E2bApiError> {
        let id = headers.get(crate::SANDBOX_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let sandbox = self.get(id).map_err(|_| E2bApiError::SandboxGone(id.to_owned()))?;
        match self.manager.get(&sandbox.run) {
            Err(_) => return Err(E2bApiError::SandboxGone(id.to_owned())),
            Ok(s) if s.state == SandboxState::Paused => return Err(E2bApiError::SandboxPaused(id.to_owned())),
            Ok(_) => {}
        }
        if check_token {
            sandbox.check_access(headers)?;
        }
        Ok(sandbox)
    }

    /// Every sandbox, oldest first.
    #[must_use]
    pub fn list(&self) -> Vec<Arc<E2bSandbox>> {
        let mut all: Vec<_> = self.sandboxes.lock_unpoisoned().values().cloned().collect();
        all.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.id.cmp(&b.id)));
        all
    }

    /// Whether the manager holds the sandbox paused.
    #[must_use]
    pub fn is_paused(&self, sandbox: &E2bSandbox) -> bool {
        self.manager.get(&sandbox.run).is_ok_and(|s| s.state == SandboxState::Paused)
    }

    /// Records a sandbox the manager has just created.
    ///
    /// # Errors
    /// [`E2bApiError::LimitReached`] past `max_sandboxes`.
    pub fn reserve(&self) -> Result<(), E2bApiError> {
        let n = self.sandboxes.lock_unpoisoned().len();
        if n >= self.config.max_sandboxes {
            return Err(E2bApiError::LimitReached(format!(
                "{n} E2B sandboxes are alive, the limit ([e2b_api] max_sandboxes); kill one first"
            )));
        }
        Ok(())
    }

    /// Records a created sandbox.
    ///
    /// # Errors
    /// [`E2bApiError::Internal`] when no access token can be made.
    pub fn insert(&self, id: &str, run: RunId, entry: NewEntry) -> Result<Arc<E2bSandbox>, E2bApiError> {
        let now = SystemTime::now();
        let (cpu_count, memory_mb, disk_mb) = entry.resources;
        let sandbox = Arc::new(E2bSandbox {
            id: id.to_owned(),
            run,
            template_id: entry.template_id,
            metadata: entry.metadata,
            started_at: now,
            auto_pause: entry.auto_pause,
            access_token: if entry.secure { Some(random_hex(32)?) } else { None },
            cpu_count,
            memory_mb,
            disk_mb,
            deadline: Mutex::new(Some(now + entry.timeout)),
            processes: Table::default(),
            watchers: crate::watch::Watchers::default(),
            context_cwds: Mutex::new(BTreeMap::new()),
            stateless_contexts: Mutex::new(BTreeMap::new()),
        });
        self.sandboxes.lock_unpoisoned().insert(id.to_owned(), sandbox.clone());
        Ok(sandbox)
    }

    /// Kills a sandbox: destroys its run and forgets it.
    ///
    /// # Errors
    /// [`E2bApiError::NotFound`] for an unknown sandbox, or the manager's error.
    pub async fn kill(&self, id: &str) -> Result<(), E2bApiError> {
        let sandbox = self.get(id)?;
        self.sandboxes.lock_unpoisoned().remove(id);
        sandbox.processes.mark_gone();
        match self.manager.destroy(&sandbox.run).await {
            Ok(()) | Err(agentbox_core::Error::NotFound(_)) => Ok(()),
            Err(e) => Err(E2bApiError::Sandbox { what: "killing the sandbox", source: e }),
        }
    }

    /// Destroys every E2B sandbox.
    pub async fn destroy_all(&self) {
        for sandbox in self.list() {
            if let Err(e) = self.kill(&sandbox.id).await {
                tracing::warn!(sandbox = %sandbox.id, error = %e, "destroying an E2B sandbox at shutdown failed");
            }
        }
    }

    async fn reap(&self) {
        let now = SystemTime::now();
        // Sandboxes the manager no longer has (destroyed through the REST API, or replaced) are forgotten.
        let gone: Vec<String> =
            self.list().into_iter().filter(|s| self.manager.get(&s.run).is_err()).map(|s| s.id.clone()).collect();
        for id in gone {
            self.sandboxes.lock_unpoisoned().remove(&id);
        }
        for sandbox in self.list() {
            if sandbox.deadline().is_none_or(|d| d > now) {
                continue;
            }
            if sandbox.auto_pause {
                match self.manager.pause(&sandbox.run).await {
                    Ok(_) => {
                        sandbox.set_deadline(None);
                        tracing::info!(sandbox = %sandbox.id, "E2B sandbox timeout expired: paused");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %sandbox.id, error = %e, "pausing an expired E2B sandbox failed; killing it");
                    }
                }
            }
            tracing::info!(sandbox = %sandbox.id, "E2B sandbox timeout expired: killed");
            if let Err(e) = self.kill(&sandbox.id).await {
                tracing::warn!(sandbox = %sandbox.id, error = %e, "killing an expired E2B sandbox failed");
            }
        }
    }
}

/// Starts the task that pauses or kills sandboxes whose timeout expired; it ends with the state.
pub(crate) fn spawn_reaper(state: &Shared) {
    let weak: Weak<Inner> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            state.reap().await;
        }
    });
}

/// `n` random bytes as lowercase hex.
///
/// # Errors
/// [`E2bApiError::Internal`] when the system's random source fails.
pub fn random_hex(n: usize) -> Result<String, E2bApiError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)
        .map_err(|e| E2bApiError::Internal(format!("the system's random source failed ({e}); retry")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// RFC 3339 with milliseconds.
#[must_use]
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
