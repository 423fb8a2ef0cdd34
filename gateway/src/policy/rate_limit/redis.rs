//! Buckets in Redis, shared by every gateway instance (`store = "redis"`).
//!
//! The bucket is GCRA in one Lua script (atomic in Redis, on Redis's clock, so instances'
//! clocks do not matter). The hot path does not pay a Redis round trip per request:
//! * **leases**: an instance takes up to `lease` tokens per round trip (1% of a second's
//!   quota, 1 to 64) and spends them locally; unspent tokens expire after the time they stand
//!   for (`lease × per / rate`, 10 ms to 1 s). Redis never hands out more than the bucket
//!   holds, so the fleet never admits more than `burst + rate × t` plus one lease per instance
//!   (tokens taken just before a refill and spent just after); a lease that expires unspent
//!   is admitted nowhere (under-admission of at most one lease per instance per expiry);
//! * **cached refusals**: when the bucket is empty, Redis says when the next token comes;
//!   until then the instance refuses that key without asking again.
//!
//! While Redis is unreachable (connect errors, or 3 command errors or 250 ms timeouts in a row) `[redis].on_error`
//! decides: `local` (this instance's own bucket per key: each instance admits the full limit),
//! `allow` or `deny` (429). A background task pings Redis every 500 ms and switches back when
//! it answers. Errors count in `gateway_rate_limit_store_errors_total{policy}`, the fallback
//! shows in `gateway_rate_limit_store_fallback{policy}`, both transitions are logged.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use prometheus::{IntCounter, IntGauge};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::local::LocalLimiter;
use super::Decision;
use crate::config::{OnError, RateLimitPolicy, RedisConfig};

/// GCRA for `want` tokens at once. KEYS[1]: the bucket (its theoretical arrival time, µs on
/// Redis's clock). ARGV: emission interval (µs), burst × interval (µs), tokens wanted.
/// Returns {granted, remaining, retry_after_µs, until_full_µs}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local n = math.floor((now + capacity - tat) / interval)
if n > want then n = want end
if n < 0 then n = 0 end
tat = tat + n * interval
if n > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local remaining = math.floor((now + capacity - tat) / interval)
if remaining < 0 then remaining = 0 end
local retry = 0
if n == 0 then retry = tat + interval - capacity - now end
if retry < 0 then retry = 0 end
return {n, remaining, retry, tat - now}
";

const TIMEOUT: Duration = Duration::from_millis(250);
/// Failed or timed-out calls in a row before the store falls back to `on_error` (SPEC §8.2).
const FAILURES_BEFORE_FALLBACK: u32 = 3;
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// One Redis connection (multiplexed, reconnecting) shared by every `store = "redis"` policy.
pub struct RedisStore {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    script: redis::Script,
    on_error: OnError,
    /// Redis failed and has not answered a probe since.
    down: AtomicBool,
    /// Calls failed or timed out in a row: a slow (not dead) Redis may miss one deadline
    /// without turning shared limits off; `FAILURES_BEFORE_FALLBACK` in a row do.
    failures: AtomicU32,
    /// Redis answered at least once (the first answer is "connected", later ones "back").
    ever_up: AtomicBool,
    /// The first verdict (up or down) was logged.
    announced: AtomicBool,
    /// Each policy's fallback gauge, set while down.
    gauges: Mutex<Vec<IntGauge>>,
}

impl RedisStore {
    /// The store, connecting in the background (start-up does not wait for Redis: until it
    /// answers, `on_error` applies). The keeper task lives as long as the store.
    pub fn start(cfg: &RedisConfig) -> Option<Arc<Self>> {
        let client = match redis::Client::open(cfg.url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "redis: bad url");
                return None;
            }
        };
        let store = Arc::new(Self {
            client,
            conn: ArcSwapOption::empty(),
            script: redis::Script::new(GCRA),
            on_error: cfg.on_error,
            down: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ever_up: AtomicBool::new(false),
            announced: AtomicBool::new(false),
            gauges: Mutex::new(Vec::new()),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(keep(Arc::downgrade(&store)));
        }
        Some(store)
    }

    fn register(&self, gauge: IntGauge) {
        gauge.set(i64::from(self.is_down()));
        if let Ok(mut g) = self.gauges.lock() {
            g.push(gauge);
        }
    }

    /// A call failed or timed out: down after `FAILURES_BEFORE_FALLBACK` in a row.
    fn call_failed(&self, why: &str) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= FAILURES_BEFORE_FALLBACK {
            self.set_down(true, why);
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    fn set_down(&self, down: bool, why: &str) {
        let was_down = self.down.swap(down, Ordering::Relaxed);
        // The store starts as down (until Redis first answers): the first verdict is always
        // told, so a Redis unreachable from the start is logged too.
        let first = !self.announced.load(Ordering::Relaxed)
            && !self.announced.swap(true, Ordering::Relaxed);
        if was_down == down && !first {
            return;
        }
        if down {
            tracing::warn!(reason = why, on_error = ?self.on_error, "redis: unreachable, rate limits fall back to on_error");
            crate::events::push(
                crate::events::Kind::StoreFallback,
                "bad",
                "redis",
                format!(
                    "unreachable ({why}): rate limits fall back to on_error = {:?}",
                    self.on_error
                ),
            );
        } else if !self.ever_up.swap(true, Ordering::Relaxed) {
            tracing::info!("redis: connected, shared rate limits are in Redis");
            crate::events::push(
                crate::events::Kind::StoreFallback,
                "info",
                "redis",
                "connected: shared rate limits are in Redis",
            );
        } else {
            tracing::info!("redis: reachable again, shared rate limits are back");
            crate::events::push(
                crate::events::Kind::StoreFallback,
                "good",
                "redis",
                "reachable again: shared rate limits are back",
            );
        }
        if let Ok(g) = self.gauges.lock() {
            for gauge in g.iter() {
                gauge.set(i64::from(down));
            }
        }
    }

    async fn take(
        &self,
        bucket: &str,
        interval_us: u64,
        capacity_us: u64,
        want: u64,
    ) -> Result<[u64; 4], String> {
        let Some(conn) = self.conn.load_full() else {
            return Err("not connected".into());
        };
        let mut conn = (*conn).clone();
        let mut invocation = self.script.key(bucket);
        invocation.arg(interval_us).arg(capacity_us).arg(want);
        let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
        match tokio::time::timeout(TIMEOUT, call).await {
            Ok(Ok(v)) if v.len() == 4 => {
                self.failures.store(0, Ordering::Relaxed);
                let u = |i: usize| u64::try_from(v[i]).unwrap_or(0);
                Ok([u(0), u(1), u(2), u(3)])
            }
            Ok(Ok(v)) => Err(format!("unexpected script reply {v:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

/// Connect, then probe while down; ends when the store is dropped (config generation gone).
async fn keep(store: Weak<RedisStore>) {
    loop {
        let Some(s) = store.upgrade() else { return };
        if s.conn.load().is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(TIMEOUT)
                .set_response_timeout(TIMEOUT)
                .set_number_of_retries(1);
            match tokio::time::timeout(
                TIMEOUT * 2,
                ConnectionManager::new_with_config(s.client.clone(), config),
            )
            .await
            {
                Ok(Ok(c)) => s.conn.store(Some(Arc::new(c))),
                Ok(Err(e)) => s.set_down(true, &e.to_string()),
                Err(_) => s.set_down(true, "connect timed out"),
            }
        }
        if s.is_down() {
            if let Some(conn) = s.conn.load_full() {
                let mut conn = (*conn).clone();
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut conn);
                if let Ok(Ok(_)) = tokio::time::timeout(TIMEOUT, ping).await {
                    s.failures.store(0, Ordering::Relaxed);
                    s.set_down(false, "");
                }
            }
        }
        drop(s);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Tokens this instance holds for one key, and a refusal it may repeat without asking.
struct Lease {
    tokens: AtomicU64,
    /// µs since the limiter's start.
    expires_us: AtomicU64,
    denied_until_us: AtomicU64,
    /// Bucket state at the last refill, for the `RateLimit` field.
    remaining: AtomicU64,
    until_full_us: AtomicU64,
    last_used_us: AtomicU64,
    refill: tokio::sync::Mutex<()>,
}

impl Lease {
    fn new() -> Self {
        Self {
            tokens: AtomicU64::new(0),
            expires_us: AtomicU64::new(0),
            denied_until_us: AtomicU64::new(0),
            remaining: AtomicU64::new(0),
            until_full_us: AtomicU64::new(0),
            last_used_us: AtomicU64::new(0),
            refill: tokio::sync::Mutex::new(()),
        }
    }

    /// Spend a leased token, or repeat a cached refusal; `None`: ask Redis.
    fn try_spend(&self, now_us: u64) -> Option<Decision> {
        self.last_used_us.store(now_us, Ordering::Relaxed);
        let denied_until = self.denied_until_us.load(Ordering::Relaxed);
        if denied_until > now_us {
            return Some(Decision::deny(Duration::from_micros(denied_until - now_us)));
        }
        if self.expires_us.load(Ordering::Relaxed) <= now_us {
            return None;
        }
        let mut left = self.tokens.load(Ordering::Relaxed);
        loop {
            if left == 0 {
                return None;
            }
            match self.tokens.compare_exchange_weak(
                left,
                left - 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Decision::allow(
                        self.remaining.load(Ordering::Relaxed) + left - 1,
                        Duration::from_micros(self.until_full_us.load(Ordering::Relaxed)),
                    ))
                }
                Err(now) => left = now,
            }
        }
    }
}

/// One `store = "redis"` policy in this instance.
pub struct RedisLimiter {
    store: Arc<RedisStore>,
    /// `gateway:rl:NAME:` (no hash tag: a policy's buckets spread over a cluster's slots).
    prefix: String,
    interval_us: u64,
    capacity_us: u64,
    lease: u64,
    lease_ttl: Duration,
    leases: DashMap<u64, Arc<Lease>>,
    start: Instant,
    errors: IntCounter,
}

impl RedisLimiter {
    pub fn new(
        name: &str,
        policy: &RateLimitPolicy,
        store: &Arc<RedisStore>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let interval = policy.emission_interval();
        let interval_us = (interval.as_micros() as u64).max(1);
        let per_second = 1_000_000 / interval_us;
        let lease = (per_second / 100).clamp(1, 64);
        store.register(metrics.rate_limit_store_fallback.with_label_values(&[name]));
        Self {
            store: store.clone(),
            prefix: format!("gateway:rl:{name}:"),
            interval_us,
            capacity_us: interval_us.saturating_mul(policy.burst),
            lease,
            lease_ttl: (interval * lease as u32)
                .clamp(Duration::from_millis(10), Duration::from_secs(1)),
            leases: DashMap::new(),
            start: Instant::now(),
            errors: metrics
                .rate_limit_store_errors_total
                .with_label_values(&[name]),
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn fallback(&self, key: u64, local: &LocalLimiter) -> Decision {
        match self.store.on_error {
            OnError::Local => local.check(key),
            OnError::Allow => Decision::allow(0, Duration::ZERO),
            OnError::Deny => Decision::deny(Duration::from_secs(1)),
        }
    }

    fn lease(&self, key: u64) -> Arc<Lease> {
        if let Some(l) = self.leases.get(&key) {
            return l.clone();
        }
        self.leases
            .entry(key)
            .or_insert_with(|| Arc::new(Lease::new()))
            .clone()
    }

    /// Without a round trip, when possible.
    pub fn check_now(&self, key: u64, local: &LocalLimiter) -> Option<Decision> {
        if self.store.is_down() {
            return Some(self.fallback(key, local));
        }
        let lease = self.leases.get(&key)?;
        lease.try_spend(self.now_us())
    }

    /// Ask Redis for a lease (one caller per key at a time; the others wait for its answer).
    pub async fn check_remote(&self, key: u64, local: &LocalLimiter) -> Decision {
        let lease = self.lease(key);
        let _one = lease.refill.lock().await;
        if let Some(d) = lease.try_spend(self.now_us()) {
            return d;
        }
        if self.store.is_down() {
            return self.fallback(key, local);
        }
        let bucket = format!("{}{key:016x}", self.prefix);
        match self
            .store
            .take(&bucket, self.interval_us, self.capacity_us, self.lease)
            .await
        {
            Ok([granted, remaining, retry_us, until_full_us]) => {
                let now = self.now_us();
                if granted == 0 {
                    let retry_us = retry_us.max(1);
                    lease
                        .denied_until_us
                        .store(now + retry_us, Ordering::Relaxed);
                    return Decision::deny(Duration::from_micros(retry_us));
                }
                lease.remaining.store(remaining, Ordering::Relaxed);
                lease.until_full_us.store(until_full_us, Ordering::Relaxed);
                lease.tokens.store(granted - 1, Ordering::Release);
                lease
                    .expires_us
                    .store(now + self.lease_ttl.as_micros() as u64, Ordering::Relaxed);
                Decision::allow(
                    remaining + granted - 1,
                    Duration::from_micros(until_full_us),
                )
            }
            Err(e) => {
                self.errors.inc();
                self.store.call_failed(&e);
                self.fallback(key, local)
            }
        }
    }

    /// Drop leases idle for 10 s (their tokens have long expired).
    pub fn evict_idle(&self) {
        let now = self.now_us();
        let idle = Duration::from_secs(10).as_micros() as u64;
        self.leases
            .retain(|_, l| now.saturating_sub(l.last_used_us.load(Ordering::Relaxed)) < idle);
        self.leases.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}
