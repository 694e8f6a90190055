//! Name resolution for the egress proxy: the configured DNS servers, or the host's resolver.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a resolver could not be built or a name was not resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// hickory refused the configuration of `network.dns_servers`.
    #[error("cannot build a resolver for network.dns_servers: {0}")]
    Build(#[source] NetError),
    /// The host's resolver failed.
    #[error("{0}")]
    Host(#[source] std::io::Error),
    /// The configured servers failed or found nothing.
    #[error("{0}")]
    Servers(#[source] NetError),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer without addresses.
    #[error("no addresses")]
    NoAddresses,
}

/// Where names are looked up.
#[derive(Clone)]
pub enum Resolver {
    /// The host's own resolver (`getaddrinfo`: /etc/hosts, then the host's DNS).
    Host,
    /// The servers in `network.dns_servers`, queried over UDP and TCP on port 53.
    Servers(Arc<TokioResolver>),
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host => f.write_str("Resolver::Host"),
            Self::Servers(_) => f.write_str("Resolver::Servers"),
        }
    }
}

impl Resolver {
    /// A resolver for `dns_servers` (validated IP addresses); the host's when empty.
    ///
    /// # Errors
    /// [`ResolveError::Build`] when the resolver can't be built.
    pub fn new(dns_servers: &[String]) -> Result<Self, ResolveError> {
        let servers: Vec<IpAddr> = dns_servers.iter().filter_map(|s| s.parse().ok()).collect();
        if servers.is_empty() {
            return Ok(Self::Host);
        }
        let config =
            ResolverConfig::from_name_servers(servers.into_iter().map(NameServerConfig::udp_and_tcp).collect());
        let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let resolver = builder.build().map_err(ResolveError::Build)?;
        Ok(Self::Servers(Arc::new(resolver)))
    }

    /// Every address `name` resolves to (a normalized DNS name, not an IP literal).
    ///
    /// # Errors
    /// A [`ResolveError`] saying why nothing was found.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let work = async {
            match self {
                Self::Host => {
                    let addrs = tokio::net::lookup_host((name, 0)).await.map_err(ResolveError::Host)?;
                    Ok::<Vec<IpAddr>, ResolveError>(addrs.map(|a: SocketAddr| a.ip()).collect())
                }
                Self::Servers(r) => {
                    // A trailing dot: the name is absolute, no search domains.
                    let found = r.lookup_ip(format!("{name}.")).await.map_err(ResolveError::Servers)?;
                    Ok(found.iter().collect())
                }
            }
        };
        let mut ips =
            tokio::time::timeout(LOOKUP_TIMEOUT, work).await.map_err(|_| ResolveError::Timeout(LOOKUP_TIMEOUT))??;
        let mut seen = std::collections::HashSet::new();
        ips.retain(|ip| seen.insert(*ip));
        if ips.is_empty() {
            return Err(ResolveError::NoAddresses);
        }
        Ok(ips)
    }
}
