//! Byte counting and bandwidth limits on the proxy's connections to destinations.
//!
//! Every byte the proxy reads from or writes to a destination passes through a
//! [`Metered`] stream, which counts it exactly and takes it from the sandbox's
//! token bucket for that direction. The buckets are shared by all of a
//! sandbox's connections, so the limit is per sandbox. A bucket holds at most
//! 50 ms worth of tokens; a read or write may overdraw it by one chunk, and the
//! next one waits until the debt is paid back, so the long-run rate is exact.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use agentbox_core::LockExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest read or write through an unlimited bucket.
const MAX_CHUNK: usize = 64 * 1024;
/// Smallest read or write through a limited bucket.
const MIN_CHUNK: usize = 512;

#[derive(Debug)]
struct BucketState {
    rate: Option<u64>,
    tokens: f64,
    last: Instant,
}

/// A token bucket measured in bytes.
#[derive(Debug)]
pub struct Bucket {
    state: Mutex<BucketState>,
}

impl Bucket {
    /// A bucket refilled at `rate` bytes per second, or unlimited.
    #[must_use]
    pub fn new(rate: Option<u64>) -> Self {
        let b = Self { state: Mutex::new(BucketState { rate: None, tokens: 0.0, last: Instant::now() }) };
        b.set_rate(rate);
        b
    }

    fn capacity(rate: u64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let r = rate as f64;
        (r / 20.0).max(MIN_CHUNK as f64)
    }

    /// Changes the rate, live; the bucket starts full.
    pub fn set_rate(&self, rate: Option<u64>) {
        let mut s = self.state.lock_unpoisoned();
        if s.rate != rate {
            s.rate = rate;
            s.tokens = rate.map_or(0.0, Self::capacity);
            s.last = Instant::now();
        }
    }

    /// How long to wait before the next transfer; `None` when it may go now.
    fn delay(&self) -> Option<Duration> {
        let mut s = self.state.lock_unpoisoned();
        let rate = s.rate?;
        let now = Instant::now();
        #[allow(clippy::cast_precision_loss)]
        let r = rate as f64;
        s.tokens = (s.tokens + now.duration_since(s.last).as_secs_f64() * r).min(Self::capacity(rate));
        s.last = now;
        if s.tokens >= 0.0 { None } else { Some(Duration::from_secs_f64(-s.tokens / r).max(Duration::from_millis(1))) }
    }

    /// The largest transfer to attempt now.
    fn chunk(&self) -> usize {
        let s = self.state.lock_unpoisoned();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        s.rate.map_or(MAX_CHUNK, |r| (Self::capacity(r) as usize).clamp(MIN_CHUNK, MAX_CHUNK))
    }

    fn consume(&self, n: usize) {
        let mut s = self.state.lock_unpoisoned();
        if s.rate.is_some() {
            #[allow(clippy::cast_precision_loss)]
            let n = n as f64;
            s.tokens -= n;
        }
    }
}

/// A sandbox's counters and limits.
#[derive(Debug)]
pub struct Meter {
    /// Bytes received from destinations.
    pub bytes_in: AtomicU64,
    /// Bytes sent to destinations.
    pub bytes_out: AtomicU64,
    /// The download limit.
    pub down: Bucket,
    /// The upload limit.
    pub up: Bucket,
}

impl Meter {
    /// Counters at zero with the given limits (bytes per second).
    #[must_use]
    pub fn new(down: Option<u64>, up: Option<u64>) -> Self {
        Self { bytes_in: AtomicU64::new(0), bytes_out: AtomicU64::new(0), down: Bucket::new(down), up: Bucket::new(up) }
    }
}

type Sleep = Pin<Box<tokio::time::Sleep>>;

/// A connection to a destination whose traffic is counted and limited.
pub struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
    read_wait: Option<Sleep>,
    write_wait: Option<Sleep>,
    scratch: Vec<u8>,
}

impl<S> Metered<S> {
    /// Wraps a connection.
    pub fn new(inner: S, meter: Arc<Meter>) -> Self {
        Self { inner, meter, read_wait: None, write_wait: None, scratch: Vec::new() }
    }
}

/// Waits while `bucket` is in debt, keeping the timer in `slot`.
fn poll_bucket(bucket: &Bucket, slot: &mut Option<Sleep>, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        if let Some(sleep) = slot.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            *slot = None;
        }
        match bucket.delay() {
            None => return Poll::Ready(()),
            Some(d) => *slot = Some(Box::pin(tokio::time::sleep(d))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(poll_bucket(&this.meter.down, &mut this.read_wait, cx));
        let max = buf.remaining().min(this.meter.down.chunk());
        if max == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.scratch.len() < max {
            this.scratch.resize(max, 0);
        }
        let mut limited = ReadBuf::new(&mut this.scratch[..max]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.put_slice(limited.filled());
        this.meter.down.consume(n);
        this.meter.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(poll_bucket(&this.meter.up, &mut this.write_wait, cx));
        let max = buf.len().min(this.meter.up.chunk());
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..max]))?;
        this.meter.up.consume(n);
        this.meter.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_bucket_never_waits() {
        let b = Bucket::new(None);
        b.consume(1 << 30);
        assert!(b.delay().is_none());
        assert_eq!(b.chunk(), MAX_CHUNK);
    }

    #[test]
    fn limited_bucket_owes_what_it_overdrew() {
        let b = Bucket::new(Some(10_000));
        assert_eq!(b.chunk(), MIN_CHUNK);
        assert!(b.delay().is_none());
        b.consume(MIN_CHUNK + 5_000);
        let wait = b.delay().expect("in debt");
        // 5000 bytes of debt at 10 kB/s is half a second (less what refilled meanwhile).
        assert!(wait <= Duration::from_millis(500) && wait > Duration::from_millis(400), "{wait:?}");
        b.set_rate(None);
        assert!(b.delay().is_none());
    }
}
