//! The share of keys that move to another target when one of N targets is removed, averaged
//! over every single removal, for the keyed balancers. Exact for ketama (ring arcs), Maglev
//! (table entries) and slots (slot ranges); hash mod N over 200,000 sample keys.
//!
//! `cargo bench -p gateway --bench remap`

use gateway::balance::{ketama::Ketama, maglev, slots, xxh3, Balance, PickCtx};

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("shard-{i}")).collect()
}

fn without(v: &[String], r: usize) -> Vec<String> {
    v.iter()
        .enumerate()
        .filter(|(i, _)| *i != r)
        .map(|(_, s)| s.clone())
        .collect()
}

fn hash_mod(n: usize) -> f64 {
    let all = ids(n);
    let keys: Vec<u64> = (0..200_000u32)
        .map(|k| xxh3(format!("key-{k}").as_bytes()))
        .collect();
    let mut total = 0.0;
    for r in 0..n {
        let rest = without(&all, r);
        let moved = keys
            .iter()
            .filter(|&&h| all[(h % n as u64) as usize] != rest[(h % (n as u64 - 1)) as usize])
            .count();
        total += moved as f64 / keys.len() as f64;
    }
    total / n as f64
}

fn ketama(n: usize) -> f64 {
    let all = ids(n);
    let ring = |v: &[String]| Ketama::new(&v.iter().map(|s| (s.as_str(), 1)).collect::<Vec<_>>());
    let full = ring(&all);
    let mut total = 0.0;
    for r in 0..n {
        let rest = without(&all, r);
        let less = ring(&rest);
        total += gateway::balance::ketama::moved_share(&full, &all, &less, &rest);
    }
    total / n as f64
}

fn maglev_share(n: usize, m: usize) -> f64 {
    let all = ids(n);
    let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    let full = maglev::Maglev::new(&refs, &vec![true; n], m);
    let mut total = 0.0;
    for r in 0..n {
        let mut up = vec![true; n];
        up[r] = false;
        let less = maglev::Maglev::new(&refs, &up, m);
        let moved = full
            .table()
            .iter()
            .zip(less.table())
            .filter(|(a, b)| a != b)
            .count();
        total += moved as f64 / m as f64;
    }
    total / n as f64
}

fn slots_share(n: usize) -> f64 {
    let all = ids(n);
    let full = slots::Slots::new(&vec![Vec::new(); n]);
    let mut total = 0.0;
    for r in 0..n {
        let rest = without(&all, r);
        let less = slots::Slots::new(&vec![Vec::new(); n - 1]);
        let moved = (0..16384u16)
            .filter(|&s| {
                let a = full.owner_of(s).map(|i| &all[i]);
                let b = less.owner_of(s).map(|i| &rest[i]);
                a != b
            })
            .count();
        total += moved as f64 / 16384.0;
    }
    total / n as f64
}

fn main() {
    // Keep the unused-import lints quiet for the trait used by the helpers above.
    let _ = |b: &dyn Balance| b.pick(&PickCtx::hashed(None), &mut |_| true);
    println!("| N | ideal 1/N | hash (mod N) | consistent_hash (ketama) | maglev (default M) | maglev (M = 655373) | slots (even split) |");
    println!("|---|---|---|---|---|---|---|");
    for n in [3, 5, 10, 20, 24, 25, 30, 50, 100] {
        println!(
            "| {n} | {:.2}% | {:.2}% | {:.2}% | {:.2}% | {:.2}% | {:.2}% |",
            100.0 / n as f64,
            100.0 * hash_mod(n),
            100.0 * ketama(n),
            100.0 * maglev_share(n, maglev::default_table_size(n)),
            100.0 * maglev_share(n, 655_373),
            100.0 * slots_share(n),
        );
    }
}
