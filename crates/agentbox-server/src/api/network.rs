//! The network policy route: replaces a running sandbox's egress rules, live (see docs/NETWORK.md).

use agentbox_config::{NetworkConfig, SandboxConfig};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ErrorResponses;
use super::extract::{ApiJson, RunIdParam, RunIdPath};
use crate::AppState;
use crate::error::ApiError;

/// A network policy. Off by default: loopback only.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Whether the sandbox may reach anything beyond its own loopback.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    enabled: Option<bool>,
    /// Destinations the sandbox may reach: exact (`pypi.org`) or wildcard (`*.example.com`) names, optionally
    /// with a port (`api.github.com:443`), methods and a path (`GET api.github.com/repos/*`); empty means all.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    allowed_domains: Option<Vec<String>>,
    /// Destinations the sandbox may never reach, in the same form; deny wins over allow.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    denied_domains: Option<Vec<String>>,
    /// Hosts whose TLS the proxy terminates so that request rules apply and requests are logged.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false, value_type = Option<Vec<super::egress::SecretHost>>)]
    inspect_domains: Option<Vec<String>>,
    /// Secrets the proxy adds to requests to chosen hosts (values are defined on the server).
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    secrets: Option<Vec<super::egress::SecretRuleSpec>>,
    /// Resolvers (IP addresses); empty means the host's.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    dns_servers: Option<Vec<String>>,
    /// Private, loopback or link-local ranges (CIDR) allowed anyway.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(nullable = false)]
    allowed_cidrs: Option<Vec<String>>,
    /// Download limit in bytes per second; null for none.
    #[serde(default, deserialize_with = "super::extract::nullable_u64")]
    #[schema(minimum = 1)]
    bandwidth_in_bytes_per_sec: Option<u64>,
    /// Upload limit in bytes per second; null for none.
    #[serde(default, deserialize_with = "super::extract::nullable_u64")]
    #[schema(minimum = 1)]
    bandwidth_out_bytes_per_sec: Option<u64>,
}

impl NetworkSpec {
    /// The policy, with defaults for the fields left out.
    pub(crate) fn into_config(self) -> NetworkConfig {
        let d = NetworkConfig::default();
        NetworkConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            allowed_domains: self.allowed_domains.unwrap_or(d.allowed_domains),
            denied_domains: self.denied_domains.unwrap_or(d.denied_domains),
            inspect_domains: self.inspect_domains.unwrap_or(d.inspect_domains),
            secrets: self.secrets.map_or(d.secrets, |s| s.into_iter().map(Into::into).collect()),
            dns_servers: self.dns_servers.unwrap_or(d.dns_servers),
            allowed_cidrs: self.allowed_cidrs.unwrap_or(d.allowed_cidrs),
            bandwidth_in_bytes_per_sec: self.bandwidth_in_bytes_per_sec,
            bandwidth_out_bytes_per_sec: self.bandwidth_out_bytes_per_sec,
        }
    }
}

/// A sandbox's effective network policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NetworkPolicy {
    /// Whether the sandbox may reach anything beyond its own loopback.
    pub enabled: bool,
    /// Names the sandbox may reach (exact or `*.example.com`); empty means all public names.
    pub allowed_domains: Vec<String>,
    /// Names the sandbox may never reach; deny wins over allow.
    pub denied_domains: Vec<String>,
    /// Hosts whose TLS the proxy terminates so that request rules apply and requests are logged.
    pub inspect_domains: Vec<String>,
    /// Secrets the proxy adds to requests (rules only; values never leave the server).
    pub secrets: Vec<super::egress::SecretRuleSpec>,
    /// Resolvers used for the sandbox's lookups; empty means the host's.
    pub dns_servers: Vec<String>,
    /// Private, loopback or link-local ranges (CIDR) allowed anyway.
    pub allowed_cidrs: Vec<String>,
    /// Download limit in bytes per second; null for none.
    pub bandwidth_in_bytes_per_sec: Option<u64>,
    /// Upload limit in bytes per second; null for none.
    pub bandwidth_out_bytes_per_sec: Option<u64>,
}

impl From<NetworkConfig> for NetworkPolicy {
    fn from(n: NetworkConfig) -> Self {
        Self {
            enabled: n.enabled,
            allowed_domains: n.allowed_domains,
            denied_domains: n.denied_domains,
            inspect_domains: n.inspect_domains,
            secrets: n.secrets.into_iter().map(Into::into).collect(),
            dns_servers: n.dns_servers,
            allowed_cidrs: n.allowed_cidrs,
            bandwidth_in_bytes_per_sec: n.bandwidth_in_bytes_per_sec,
            bandwidth_out_bytes_per_sec: n.bandwidth_out_bytes_per_sec,
        }
    }
}

/// Replaces the run's network policy while the sandbox runs.
///
/// The body is the whole policy, as in `network` of a create request: fields left out take their
/// defaults (networking off, no lists, no bandwidth limits), so `{}` cuts the sandbox off. New
/// connections follow the new rules at once, and open connections the new rules refuse are closed;
/// turning networking off closes them all. Every invalid field is listed in the 400 answer (paths
/// such as `network.allowed_cidrs[0]`). Backends that can't change a running sandbox's policy answer
/// 422 `unsupported`, and the old policy stays.
#[utoipa::path(
    put,
    path = "/api/sandboxes/{run_id}/network",
    operation_id = "setSandboxNetwork",
    tag = "sandboxes",
    params(RunIdParam),
    request_body = NetworkSpec,
    responses((status = 200, description = "The sandbox's effective network policy", body = NetworkPolicy), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn set_network(
    State(state): State<AppState>,
    RunIdPath(run): RunIdPath,
    ApiJson(body): ApiJson<NetworkSpec>,
) -> Result<Json<NetworkPolicy>, ApiError> {
    let network = body.into_config();
    // The body alone first, so a malformed policy is a 400 whatever the run.
    SandboxConfig { network: network.clone(), ..SandboxConfig::default() }
        .validate()
        .map_err(agentbox_core::Error::InvalidConfig)?;
    let sandbox = state.lifecycle.update_network(&run, network).await?;
    Ok(Json(sandbox.config.network.into()))
}
