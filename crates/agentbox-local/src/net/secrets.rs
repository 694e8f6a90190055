//! Secret injection: the rules of `network.secrets`, the sandbox's placeholders, and the rewrite
//! of one request.
//!
//! Values come from the server's [`SecretStore`] at each request, so a new value applies at once.
//! A value is only ever written into the outgoing request; it is never logged, counted, recorded
//! or put in an error (errors name the secret).

use std::collections::BTreeMap;
use std::sync::Mutex;

use agentbox_config::{EgressEntry, NetworkConfig};
use agentbox_core::LockExt;
use agentbox_core::egress::{SecretStore, SecretValue};
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;

use super::policy::{Host, Rule};

/// Most request body bytes the proxy buffers to replace placeholders in.
pub const MAX_REWRITE_BODY: usize = 1 << 20;

/// Prefix of every placeholder.
pub const PLACEHOLDER_PREFIX: &str = "agentbox-placeholder-";

/// The placeholders of one sandbox, by secret name: random, made on first use, stable for its life.
#[derive(Debug, Default)]
pub struct Placeholders {
    by_name: Mutex<BTreeMap<String, String>>,
}

impl Placeholders {
    /// The placeholder of `name`.
    pub fn get(&self, name: &str) -> String {
        self.by_name
            .lock_unpoisoned()
            .entry(name.to_owned())
            .or_insert_with(|| {
                let mut bytes = [0u8; 16];
                fill_random(&mut bytes);
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("{PLACEHOLDER_PREFIX}{hex}")
            })
            .clone()
    }
}

fn fill_random(buf: &mut [u8]) {
    if rustls::crypto::aws_lc_rs::default_provider().secure_random.fill(buf).is_err() {
        // The system's generator failed: getrandom(2) directly, which blocks until it has entropy.
        // SAFETY: `buf` is valid for writes of its length.
        let _ = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    }
}

/// One secret's rule, ready to apply.
#[derive(Debug, Clone)]
struct Compiled {
    name: String,
    hosts: Vec<EgressEntry>,
    header: Option<(HeaderName, String)>,
    placeholder: Option<String>,
    body: bool,
}

impl Compiled {
    fn covers(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|e| e.matches_host(host, port))
    }
}

/// The secret rules of a sandbox's network configuration.
#[derive(Debug, Clone, Default)]
pub struct SecretRules {
    rules: Vec<Compiled>,
}

/// What rewriting a request did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Names of the secrets added.
    pub names: Vec<String>,
    /// Placeholders to replace in the body, with their values.
    pub body: Vec<(String, SecretValue)>,
}

/// Replaces every `from` in `text`.
fn replace_all(text: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let first = find(text, from)?;
    let mut out = Vec::with_capacity(text.len() + to.len());
    out.extend_from_slice(&text[..first]);
    let mut rest = &text[first..];
    while let Some(i) = find(rest, from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Replaces the placeholders in a buffered body; whether any was found.
pub fn rewrite_body(body: &[u8], replacements: &[(String, SecretValue)]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for (placeholder, value) in replacements {
        let current = out.as_deref().unwrap_or(body);
        if let Some(next) = replace_all(current, placeholder.as_bytes(), value.expose().as_bytes()) {
            out = Some(next);
        }
    }
    out
}

impl SecretRules {
    /// The rules of a (validated) configuration; placeholders come from `placeholders`.
    pub fn new(config: &NetworkConfig, placeholders: &Placeholders) -> Self {
        let rules = config
            .secrets
            .iter()
            .map(|s| Compiled {
                name: s.name.clone(),
                hosts: s.hosts.iter().filter_map(|h| EgressEntry::parse(h).ok()).collect(),
                header: s
                    .header_parts()
                    .ok()
                    .flatten()
                    .and_then(|(n, t)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, t))),
                placeholder: s.placeholder.then(|| placeholders.get(&s.name)),
                body: s.replace_in_body,
            })
            .collect();
        Self { rules }
    }

    /// Whether some secret may go to `host:port`, so the proxy must terminate its TLS.
    pub fn covers(&self, host: &Host, port: u16) -> bool {
        let text = host.match_text();
        self.rules.iter().any(|r| r.covers(&text, port))
    }

    /// The placeholder variables the sandbox sees: `AGENTBOX_SECRET_<NAME>`.
    pub fn env(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.rules.iter().filter_map(|r| Some((format!("AGENTBOX_SECRET_{}", r.name), r.placeholder.clone()?)))
    }

    /// Rewrites a request's head for `host:port`: refuses a placeholder the destination may not
    /// receive, replaces allowed placeholders in the target and header values, and sets headers.
    ///
    /// # Errors
    /// [`Rule::SecretWrongHost`] or [`Rule::SecretUnavailable`], naming the secret.
    pub fn apply(&self, store: &SecretStore, host: &Host, port: u16, parts: &mut Parts) -> Result<Applied, Rule> {
        let text = host.match_text();
        let mut applied = Applied::default();
        for rule in &self.rules {
            let covered = rule.covers(&text, port);
            let in_head = rule.placeholder.as_deref().is_some_and(|p| head_contains(parts, p));
            if in_head && !covered {
                return Err(Rule::SecretWrongHost(rule.name.clone()));
            }
            if !covered || (!in_head && rule.header.is_none() && !rule.body) {
                continue;
            }
            let value = store.resolve(&rule.name).map_err(|e| Rule::SecretUnavailable(e.to_string()))?;
            if let (true, Some(p)) = (in_head, &rule.placeholder) {
                replace_in_head(parts, p, value.expose())?;
            }
            if let Some((name, template)) = &rule.header {
                let v = HeaderValue::from_str(&template.replace("{value}", value.expose())).map_err(|_| {
                    Rule::SecretUnavailable(format!("secret {}: the header value is invalid", rule.name))
                })?;
                let mut v = v;
                v.set_sensitive(true);
                parts.headers.insert(name.clone(), v);
            }
            if let (true, Some(p)) = (rule.body, &rule.placeholder) {
                applied.body.push((p.clone(), value));
            }
            applied.names.push(rule.name.clone());
        }
        Ok(applied)
    }
}

fn head_contains(parts: &Parts, placeholder: &str) -> bool {
    let p = placeholder.as_bytes();
    parts.uri.path_and_query().is_some_and(|pq| find(pq.as_str().as_bytes(), p).is_some())
        || parts.headers.values().any(|v| find(v.as_bytes(), p).is_some())
}

fn replace_in_head(parts: &mut Parts, placeholder: &str, value: &str) -> Result<(), Rule> {
    let bad = || Rule::SecretUnavailable("a secret's value can't be carried in this part of the request".into());
    let target = parts.uri.path_and_query().map(|pq| pq.as_str().as_bytes().to_vec());
    if let Some(new) = target.and_then(|t| replace_all(&t, placeholder.as_bytes(), value.as_bytes())) {
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(hyper::http::uri::PathAndQuery::try_from(new).map_err(|_| bad())?);
        parts.uri = hyper::Uri::from_parts(uri).map_err(|_| bad())?;
    }
    for v in parts.headers.values_mut() {
        if let Some(new) = replace_all(v.as_bytes(), placeholder.as_bytes(), value.as_bytes()) {
            let mut nv = HeaderValue::from_bytes(&new).map_err(|_| bad())?;
            nv.set_sensitive(true);
            *v = nv;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use agentbox_config::SecretRule;
    use agentbox_core::egress::SecretSource;

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = hyper::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn placeholders_are_replaced_for_allowed_hosts_only() {
        let config = NetworkConfig {
            secrets: vec![
                SecretRule {
                    name: "KEY".into(),
                    hosts: vec!["api.test:443".into()],
                    placeholder: true,
                    replace_in_body: true,
                    ..Default::default()
                },
                SecretRule {
                    name: "GH".into(),
                    hosts: vec!["*.gh.test".into()],
                    header: Some("Authorization: Bearer {value}".into()),
                    ..Default::default()
                },
            ],
            ..NetworkConfig::default()
        };
        let ph = Placeholders::default();
        let rules = SecretRules::new(&config, &ph);
        let p = ph.get("KEY");
        assert!(p.starts_with(PLACEHOLDER_PREFIX) && p.len() == PLACEHOLDER_PREFIX.len() + 32);
        let store = SecretStore::new();
        store.set("KEY", SecretSource::Value(SecretValue::new("real-key".into()))).unwrap();
        store.set("GH", SecretSource::Value(SecretValue::new("gh-token".into()))).unwrap();
        let api = Host::Name("api.test".into());
        let mut req = parts(&format!("/v1?k={p}"), &[("x-api-key", &p)]);
        let applied = rules.apply(&store, &api, 443, &mut req).unwrap();
        assert_eq!(applied.names, ["KEY"]);
        assert_eq!(req.uri.to_string(), "/v1?k=real-key");
        assert_eq!(req.headers["x-api-key"], "real-key");
        assert_eq!(rewrite_body(format!("a{p}b{p}").as_bytes(), &applied.body).unwrap(), b"areal-keybreal-key");
        let mut other = parts("/", &[("x-api-key", &p)]);
        assert_eq!(rules.apply(&store, &api, 80, &mut other).unwrap_err(), Rule::SecretWrongHost("KEY".into()));
        let mut gh = parts("/", &[("authorization", "Bearer mine")]);
        rules.apply(&store, &Host::Name("api.gh.test".into()), 443, &mut gh).unwrap();
        assert_eq!(gh.headers["authorization"], "Bearer gh-token");
        store.set("GH", SecretSource::Value(SecretValue::new("rotated".into()))).unwrap();
        rules.apply(&store, &Host::Name("api.gh.test".into()), 443, &mut gh).unwrap();
        assert_eq!(gh.headers["authorization"], "Bearer rotated");
        store.remove("GH");
        let e = rules.apply(&store, &Host::Name("api.gh.test".into()), 443, &mut gh).unwrap_err();
        assert_eq!(e.name(), "secret-unavailable");
        assert!(rules.covers(&api, 443) && !rules.covers(&api, 80));
        assert_eq!(rules.env().collect::<Vec<_>>(), [("AGENTBOX_SECRET_KEY".to_owned(), p)]);
    }
}
