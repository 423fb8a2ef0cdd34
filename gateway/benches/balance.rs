//! Pick latency per balancer (given the key's hash), key hashing, and table builds.
//!
//! `cargo bench -p gateway --bench balance`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway::balance::{self, PickCtx};
use gateway::config::{BalancerKind, Target};

fn targets(n: usize) -> Vec<Target> {
    (0..n)
        .map(|i| Target {
            id: format!("10.0.{}.{}:8080", i / 250, i % 250),
            addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 8080)),
            host: None,
            resolve: false,
            weight: 1 + (i % 3) as u32,
            backups: Vec::new(),
            slots: Vec::new(),
        })
        .collect()
}

const KINDS: [BalancerKind; 8] = [
    BalancerKind::RoundRobin,
    BalancerKind::WeightedRoundRobin,
    BalancerKind::Random,
    BalancerKind::LeastRequest,
    BalancerKind::Hash,
    BalancerKind::ConsistentHash,
    BalancerKind::Maglev,
    BalancerKind::Slots,
];

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for n in [3, 10, 100, 1000] {
        let ts = targets(n);
        let up = vec![true; n];
        let loads: Vec<i64> = (0..n as i64).map(|i| i % 7).collect();
        for kind in KINDS {
            let algo = balance::build(kind, &ts, &up, None);
            // Precomputed key hashes, cycled, so the branch predictor cannot learn one key.
            let hashes: Vec<u64> = (0..1024u32)
                .map(|i| algo.hash_key(format!("user-{i}").as_bytes()))
                .collect();
            let load = |i: usize| loads[i];
            let mut k = 0usize;
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    let ctx = PickCtx {
                        hash: Some(hashes[k]),
                        load: &load,
                    };
                    black_box(algo.pick(&ctx, &mut |_| true))
                })
            });
        }
    }
    group.finish();
}

fn key_hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_hash");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let ts = targets(10);
    let up = vec![true; 10];
    let key = b"user-1234567890ab";
    for kind in [
        BalancerKind::Hash,
        BalancerKind::ConsistentHash,
        BalancerKind::Maglev,
        BalancerKind::Slots,
    ] {
        let algo = balance::build(kind, &ts, &up, None);
        group.bench_function(kind.as_str(), |b| {
            b.iter(|| black_box(algo.hash_key(black_box(key))))
        });
    }
    group.finish();
}

fn table_builds(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    for n in [100, 1000] {
        let ts = targets(n);
        let up = vec![true; n];
        for kind in [BalancerKind::ConsistentHash, BalancerKind::Maglev] {
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                b.iter(|| black_box(balance::build(kind, &ts, &up, None)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks, key_hashing, table_builds);
criterion_main!(benches);
