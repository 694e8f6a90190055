//! Rate limits: per token for authenticated requests, per client address for failed authentication.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Limits;

/// The server's rate limiters.
#[derive(Debug)]
pub struct RateLimits {
    token: DefaultDirectRateLimiter,
    auth_failures: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

impl RateLimits {
    /// Limiters for these limits.
    #[must_use]
    pub fn new(limits: &Limits) -> Self {
        let token = Quota::per_second(nz(limits.rate_limit_per_second)).allow_burst(nz(limits.rate_limit_burst));
        let failures = Quota::per_minute(nz(limits.auth_failures_per_minute));
        Self {
            token: RateLimiter::direct(token),
            auth_failures: RateLimiter::keyed(failures),
            clock: DefaultClock::default(),
        }
    }

    fn wait_secs(&self, not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u64 {
        let wait = not_until.wait_time_from(self.clock.now());
        wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.as_secs() == 0))
    }

    /// Counts one authenticated request.
    ///
    /// # Errors
    /// Seconds to wait when over the limit.
    pub fn check_token(&self) -> Result<(), u64> {
        self.token.check().map_err(|n| self.wait_secs(&n))
    }

    /// Counts one failed authentication from `peer`.
    ///
    /// # Errors
    /// Seconds to wait when `peer` failed too often.
    pub fn check_auth_failure(&self, peer: IpAddr) -> Result<(), u64> {
        self.auth_failures.check_key(&peer).map_err(|n| self.wait_secs(&n))
    }

    /// Forgets addresses whose limits have fully recovered.
    pub fn prune(&self) {
        self.auth_failures.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_beyond_the_quota_are_refused_with_a_wait() {
        let limits =
            Limits { rate_limit_per_second: 1, rate_limit_burst: 2, auth_failures_per_minute: 1, ..Limits::default() };
        let r = RateLimits::new(&limits);
        assert!(r.check_token().is_ok());
        assert!(r.check_token().is_ok());
        assert_eq!(r.check_token(), Err(1));
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert!(r.check_auth_failure(ip).is_ok());
        assert!(r.check_auth_failure(ip).unwrap_err() >= 1);
        assert!(r.check_auth_failure(IpAddr::from([127, 0, 0, 2])).is_ok());
    }
}
