//! The CPU cost of response compression per KiB of JSON, at the levels the gateway uses
//! (`policy/compress.rs`): `cargo bench -p gateway --bench compress`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gateway::policy::compress::{compress_all, Coding};

fn json(kib: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < kib * 1024 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"user {i}\",\"email\":\"user{i}@example.com\",\"active\":{},\"score\":{}}}",
            i % 3 == 0,
            (i * 7919) % 1000
        ));
        i += 1;
    }
    s.push(']');
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("compress_json");
    for kib in [4usize, 64] {
        let data = json(kib);
        g.throughput(Throughput::Bytes(data.len() as u64));
        for (name, coding) in [
            ("gzip", Coding::Gzip),
            ("br", Coding::Br),
            ("zstd", Coding::Zstd),
        ] {
            let out = compress_all(coding, &data);
            eprintln!(
                "{name} {kib} KiB: {} -> {} bytes ({:.1}%)",
                data.len(),
                out.len(),
                out.len() as f64 * 100.0 / data.len() as f64
            );
            g.bench_with_input(BenchmarkId::new(name, kib), &data, |b, d| {
                b.iter(|| compress_all(coding, d))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
