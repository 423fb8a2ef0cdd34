//! What the rate limiter costs per request, and what a million keys cost in memory.
//!
//! `cargo bench -p gateway --bench rate_limit` (starts its own redis-server on a loopback
//! port for the Redis cases).

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::balance::key::KeySpec;
use gateway::config::{OnError, RateLimitPolicy, RedisConfig, Store};
use gateway::policy::rate_limit::redis::RedisStore;
use gateway::policy::rate_limit::RateLimiterRt;

fn policy(rate: u64, burst: u64, store: Store) -> RateLimitPolicy {
    RateLimitPolicy {
        key: KeySpec::Ip,
        rate,
        per: Duration::from_secs(1),
        burst,
        store,
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A million distinct keys: memory held, and memory after their buckets are full again and
/// eviction ran.
fn million_keys() {
    let m = gateway::metrics::Metrics::new();
    let before = rss_kib();
    let rl = RateLimiterRt::new("mem", policy(1000, 1, Store::Local), None, &m);
    let start = Instant::now();
    for k in 0..1_000_000u64 {
        black_box(rl.check_now(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    }
    let filled = start.elapsed();
    let held = rss_kib();
    let keys = rl.keys();
    std::thread::sleep(Duration::from_millis(20));
    rl.evict_idle();
    let after = rss_kib();
    eprintln!(
        "1,000,000 keys: {keys} held, +{} MiB RSS ({} bytes/key), inserted in {filled:?}; after eviction: {} keys, +{} MiB",
        held.saturating_sub(before) / 1024,
        held.saturating_sub(before) * 1024 / 1_000_000,
        rl.keys(),
        after.saturating_sub(before) / 1024
    );
}

struct Redis(Child, String);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis(child, format!("redis://{addr}"))
}

fn bench(c: &mut Criterion) {
    million_keys();
    let m = gateway::metrics::Metrics::new();
    let mut g = c.benchmark_group("rate_limit");
    let local = RateLimiterRt::new(
        "l",
        policy(1_000_000_000, 1_000_000, Store::Local),
        None,
        &m,
    );
    g.bench_function("local/one_key", |b| {
        b.iter(|| local.check_now(black_box(42)))
    });
    let mut k = 0u64;
    g.bench_function("local/1M_keys", |b| {
        b.iter(|| {
            k = (k + 1) % 1_000_000;
            local.check_now(black_box(k))
        })
    });

    let server = redis();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Arc<RedisStore> = rt.block_on(async {
        let s = RedisStore::start(&RedisConfig {
            url: server.1.clone(),
            on_error: OnError::Local,
        })
        .expect("store");
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.is_down() {
            assert!(Instant::now() < deadline, "redis not reachable");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s
    });
    // A high limit: leases of 64 tokens, one round trip per 64 requests.
    let leased = RateLimiterRt::new(
        "r",
        policy(1_000_000, 1_000_000, Store::Redis),
        Some(&store),
        &m,
    );
    g.bench_function("redis/one_key_leased", |b| {
        b.iter(|| rt.block_on(leased.check(black_box(7))))
    });
    // A new key every request: a Redis round trip each time (the worst case).
    let mut fresh = 1u64 << 40;
    g.bench_function("redis/new_key_round_trip", |b| {
        b.iter(|| {
            fresh += 1;
            rt.block_on(leased.check(black_box(fresh)))
        })
    });
    g.finish();
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
