//! Balancers against the systems users already run: libmemcached's ketama, a real Redis
//! Cluster node's CLUSTER KEYSLOT, and end to end through the gateway to sharded backends.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use bytes::Bytes;
use gateway::balance::{ketama::Ketama, slots, Balance, PickCtx};
use http::StatusCode;

use crate::client::{get, request, send, H1};
use crate::harness::{
    backend, closed_port, redis_server, repo_root, require_package, Gateway, Proc,
};

/// Build tests/reference/ketama_ref.c against the real libmemcached.
fn ketama_reference() -> (tempfile::TempDir, std::path::PathBuf) {
    require_package("libmemcached-dev");
    require_package("gcc");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("ketama_ref");
    let status = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&bin)
        .arg(repo_root().join("tests/reference/ketama_ref.c"))
        .arg("-lmemcached")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building the libmemcached reference failed"
    );
    (dir, bin)
}

/// libmemcached's choice (as "host:port") for each key.
fn libmemcached_picks(
    bin: &std::path::Path,
    servers: &[(String, u16, u32)],
    keys: &[String],
) -> Vec<String> {
    let mut child = Command::new(bin)
        .args(servers.iter().map(|(h, p, w)| format!("{h}:{p}:{w}")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = keys.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    out.lines().map(str::to_string).collect()
}

/// The id libmemcached gives a server: the host alone on the default port, else host:port.
fn memcached_id(host: &str, port: u16) -> String {
    if port == 11211 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

#[test]
fn consistent_hash_agrees_with_libmemcached_weighted_ketama() {
    let (_dir, bin) = ketama_reference();
    let mut rng = fastrand_like(7);
    let keys: Vec<String> = (0..20_000)
        .map(|i| match i % 4 {
            0 => format!("user:{i}"),
            1 => format!("session-{}", rng() % 1_000_000),
            2 => format!("{i}"),
            _ => format!("k/{i}/ünï"),
        })
        .collect();
    let mut cases: Vec<Vec<(String, u16, u32)>> = vec![
        vec![
            ("10.0.0.1".into(), 11211, 1),
            ("10.0.0.2".into(), 11211, 2),
            ("10.0.0.3".into(), 11212, 1),
        ],
        // 25 equal servers: where libmemcached's single-precision rounding gives 39 digests.
        (0..25).map(|i| (format!("10.1.0.{i}"), 11211, 1)).collect(),
        (0..47)
            .map(|i| (format!("cache{i}.example"), 11211, 1))
            .collect(),
    ];
    for n in [2usize, 5, 9, 12, 30] {
        cases.push(
            (0..n)
                .map(|i| {
                    (
                        format!("10.2.{n}.{i}"),
                        11211 + (i % 3) as u16,
                        1 + (rng() % 20) as u32,
                    )
                })
                .collect(),
        );
    }
    for servers in cases {
        let ids: Vec<String> = servers
            .iter()
            .map(|(h, p, _)| memcached_id(h, *p))
            .collect();
        let ring = Ketama::new(
            &ids.iter()
                .zip(&servers)
                .map(|(id, s)| (id.as_str(), s.2))
                .collect::<Vec<_>>(),
        );
        let reference = libmemcached_picks(&bin, &servers, &keys);
        for (key, want) in keys.iter().zip(&reference) {
            let i = ring
                .pick(
                    &PickCtx::hashed(Some(ring.hash_key(key.as_bytes()))),
                    &mut |_| true,
                )
                .unwrap();
            let got = format!("{}:{}", servers[i].0, servers[i].1);
            assert_eq!(&got, want, "key {key:?} with {} servers", servers.len());
        }
    }
}

/// A small deterministic generator for test data.
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// A real redis-server in cluster mode on a loopback port.
fn redis_cluster_node() -> (Proc, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // Cluster mode also binds the bus port, port + 10000: both must be free and below 65536.
    let addr = loop {
        let a = closed_port();
        if a.port() < 55_000
            && std::net::TcpListener::bind(("127.0.0.1", a.port() + 10_000)).is_ok()
        {
            break a;
        }
    };
    let conf = dir.path().join("nodes.conf");
    let proc = redis_server(
        addr,
        dir.path(),
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            conf.to_str().unwrap(),
        ],
    );
    (proc, addr, dir)
}

/// `CLUSTER KEYSLOT` for every key, pipelined over one RESP connection.
fn redis_keyslots(addr: SocketAddr, keys: &[Vec<u8>]) -> Vec<u16> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut out = Vec::new();
    for k in keys {
        out.extend_from_slice(b"*3\r\n$7\r\nCLUSTER\r\n$7\r\nKEYSLOT\r\n");
        out.extend_from_slice(format!("${}\r\n", k.len()).as_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(b"\r\n");
    }
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let writer = std::thread::spawn(move || s.write_all(&out).unwrap());
    let mut slots = Vec::with_capacity(keys.len());
    let mut line = String::new();
    for _ in keys {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let n = line
            .trim()
            .strip_prefix(':')
            .unwrap_or_else(|| panic!("redis said {line:?}"));
        slots.push(n.parse().unwrap());
    }
    writer.join().unwrap();
    slots
}

#[test]
fn slots_agree_with_a_real_redis_cluster_node() {
    let (_redis, addr, _dir) = redis_cluster_node();
    let mut rng = fastrand_like(11);
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for i in 0..5000u64 {
        keys.push(format!("user:{i}").into_bytes());
        keys.push(format!("{{user{}}}.following", i % 97).into_bytes());
    }
    for tricky in [
        "",
        "{",
        "}",
        "{}",
        "{}{x}",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "foo{bar",
        "{{}}",
        "a{b}c{d}",
        "{user1000}.followers",
        "ünï{cödé}",
        "{ }",
        "x{\u{0}}y",
    ] {
        keys.push(tricky.as_bytes().to_vec());
    }
    for _ in 0..2000 {
        let len = (rng() % 24) as usize;
        keys.push(
            (0..len)
                .map(|_| b"ab{}c\x00\xff"[(rng() % 7) as usize])
                .collect(),
        );
    }
    let want = redis_keyslots(addr, &keys);
    for (k, w) in keys.iter().zip(&want) {
        assert_eq!(
            slots::key_slot(k),
            *w,
            "key {:?}",
            String::from_utf8_lossy(k)
        );
    }
}

fn sharded_config(
    primaries: &[SocketAddr],
    replicas: &[SocketAddr],
    balancer: &str,
    hash_on: &str,
    extra_target: &dyn Fn(usize) -> String,
) -> String {
    let targets: Vec<String> = primaries
        .iter()
        .zip(replicas)
        .enumerate()
        .map(|(i, (p, r))| {
            format!(
                "{{ addr = \"{p}\", id = \"shard-{i}\", backups = [\"{r}\"]{} }}",
                extra_target(i)
            )
        })
        .collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.users]
balancer = "{balancer}"
hash_on = "{hash_on}"
connect_timeout = "300ms"
targets = [
  {}
]

[[routes]]
name = "users"
match = {{ path_prefix = "/users" }}
upstream = "users"
"#,
        targets.join(",\n  ")
    )
}

async fn served_by(conn: &mut H1, user: &str) -> String {
    let res = conn
        .send(request(
            "GET",
            &format!("/users/{}", user.replace('{', "%7B").replace('}', "%7D")),
            &[("x-user-id", user)],
            Bytes::new(),
        ))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    res.header("x-served-by").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_keys_land_on_their_shard_and_fail_over_to_its_backup() {
    let mut primaries = Vec::new();
    let mut replicas = Vec::new();
    for i in 0..3 {
        primaries.push(backend(&format!("shard-{i}")).await);
        replicas.push(backend(&format!("shard-{i}-replica")).await);
    }
    let ranges = ["0-5460", "5461-10922", "10923-16383"];
    let config = sharded_config(
        &primaries.iter().map(|b| b.addr).collect::<Vec<_>>(),
        &replicas.iter().map(|b| b.addr).collect::<Vec<_>>(),
        "slots",
        "header.x-user-id",
        &|i| format!(", slots = [\"{}\"]", ranges[i]),
    );
    let gw = Gateway::start(&config);
    let mut conn = H1::connect(gw.addr("http")).await;
    let shard_of = |user: &str| {
        let slot = slots::key_slot(user.as_bytes());
        [5460, 10922, 16383]
            .iter()
            .position(|&end| slot <= end)
            .unwrap()
    };
    let users: Vec<String> = (0..150)
        .map(|i| format!("u{i}"))
        .chain(["{tag}a".into(), "{tag}b".into()])
        .collect();
    for u in &users {
        assert_eq!(
            served_by(&mut conn, u).await,
            format!("shard-{}", shard_of(u)),
            "user {u}"
        );
    }
    // Hashtags keep related keys on one shard.
    assert_eq!(
        served_by(&mut conn, "{tag}a").await,
        served_by(&mut conn, "{tag}b").await
    );

    // Shard 1's primary dies: its keys go to its replica, everyone else stays put.
    let dead = primaries.remove(1);
    let dead_addr = dead.addr;
    dead.shutdown().await;
    for u in &users {
        let want = match shard_of(u) {
            1 => "shard-1-replica".to_string(),
            s => format!("shard-{s}"),
        };
        assert_eq!(
            served_by(&mut conn, u).await,
            want,
            "user {u} after shard-1's primary died"
        );
    }
    // It comes back: its keys return to it.
    let listener = tokio::net::TcpListener::bind(dead_addr).await.unwrap();
    let _back = backends::spawn(
        listener,
        &backends::Options {
            name: "shard-1".into(),
            ..Default::default()
        },
    )
    .unwrap();
    for u in &users {
        assert_eq!(
            served_by(&mut conn, u).await,
            format!("shard-{}", shard_of(u)),
            "user {u} after fail-back"
        );
    }
    // Without the key: 400 naming it.
    let res = conn
        .send(request("GET", "/users/x", &[], Bytes::new()))
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.json()["error"], "missing hash key header.x-user-id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keyed_balancer_keeps_a_key_on_one_shard_and_spreads_keys() {
    for (balancer, hash_on, key_in) in [
        ("hash", "query.user", "query"),
        ("consistent_hash", "cookie.session", "cookie"),
        ("maglev", "header.x-user-id", "header"),
        ("slots", "path", "path"),
    ] {
        let mut bs = Vec::new();
        for i in 0..4 {
            bs.push(backend(&format!("shard-{i}")).await);
        }
        let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
        let config = sharded_config(
            &addrs,
            // Dead backups on addresses nothing else takes (ephemeral ports could collide).
            &(0..4)
                .map(|i| SocketAddr::from(([127, 0, 0, 10 + i], 9)))
                .collect::<Vec<_>>(),
            balancer,
            hash_on,
            &|_| String::new(),
        );
        let gw = Gateway::start(&config);
        let mut conn = H1::connect(gw.addr("http")).await;
        let mut seen: HashMap<String, String> = HashMap::new();
        for round in 0..3 {
            for u in 0..60 {
                let (path, headers): (String, Vec<(&str, String)>) = match key_in {
                    "query" => (format!("/users/x?user=u{u}"), vec![]),
                    "cookie" => (
                        "/users/x".into(),
                        vec![("cookie", format!("a=b; session=s{u}"))],
                    ),
                    "header" => ("/users/x".into(), vec![("x-user-id", format!("u{u}"))]),
                    _ => (format!("/users/u{u}"), vec![]),
                };
                let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let res = conn
                    .send(request("GET", &path, &hs, Bytes::new()))
                    .await
                    .unwrap();
                assert_eq!(res.status, StatusCode::OK, "{balancer}");
                let by = res.header("x-served-by").to_string();
                if round == 0 {
                    seen.insert(format!("u{u}"), by);
                } else {
                    assert_eq!(
                        seen[&format!("u{u}")],
                        by,
                        "{balancer}: key u{u} moved between requests"
                    );
                }
            }
        }
        let distinct: std::collections::HashSet<&String> = seen.values().collect();
        assert!(distinct.len() >= 3, "{balancer} used only {distinct:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_balancers_share_traffic_as_configured() {
    let a = backend("a").await;
    let b = backend("b").await;
    let c = backend("c").await;
    let mk = |balancer: &str, weights: [u32; 3]| {
        format!(
            r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.u]
balancer = "{balancer}"
targets = [{{ addr = "{}", id = "a", weight = {} }}, {{ addr = "{}", id = "b", weight = {} }}, {{ addr = "{}", id = "c", weight = {} }}]

[[routes]]
name = "r"
upstream = "u"
"#,
            a.addr, weights[0], b.addr, weights[1], c.addr, weights[2]
        )
    };
    // Smooth weighted round robin, 5:1:1: nginx's sequence, repeated.
    let gw = Gateway::start(&mk("weighted_round_robin", [5, 1, 1]));
    let mut conn = H1::connect(gw.addr("http")).await;
    let mut seq = String::new();
    for _ in 0..14 {
        let res = conn
            .send(request("GET", "/", &[], Bytes::new()))
            .await
            .unwrap();
        seq.push_str(res.header("x-served-by"));
    }
    assert_eq!(seq, "aabacaaaabacaa");
    drop(gw);
    for balancer in ["round_robin", "random", "least_request"] {
        let gw = Gateway::start(&mk(balancer, [1, 1, 1]));
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut conn = H1::connect(gw.addr("http")).await;
        for _ in 0..300 {
            let res = conn
                .send(request("GET", "/", &[], Bytes::new()))
                .await
                .unwrap();
            *counts
                .entry(res.header("x-served-by").to_string())
                .or_default() += 1;
        }
        for t in ["a", "b", "c"] {
            let n = counts.get(t).copied().unwrap_or(0);
            if balancer == "round_robin" {
                assert_eq!(n, 100, "{balancer}: {counts:?}");
            } else {
                assert!((60..140).contains(&n), "{balancer}: {counts:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_steers_concurrent_load_away_from_a_slow_target() {
    let fast1 = backend("fast1").await;
    let fast2 = backend("fast2").await;
    let slow = backend("slow").await;
    slow.state.set_faults(None, Some(150));
    let gw = Gateway::start(&format!(
        r#"
[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.u]
balancer = "least_request"
targets = [{{ addr = "{}", id = "fast1" }}, {{ addr = "{}", id = "fast2" }}, {{ addr = "{}", id = "slow" }}]

[[routes]]
name = "r"
upstream = "u"
"#,
        fast1.addr, fast2.addr, slow.addr
    ));
    let addr = gw.addr("http");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut conn = H1::connect(addr).await;
            for _ in 0..25 {
                let res = conn
                    .send(request("GET", "/", &[], Bytes::new()))
                    .await
                    .unwrap();
                assert_eq!(res.status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (f1, f2, s) = (
        fast1.state.requests(),
        fast2.state.requests(),
        slow.state.requests(),
    );
    assert_eq!(f1 + f2 + s, 200);
    // Round robin would send it a third (67); with requests piling up there, the power of
    // two choices sends it only what arrives while it is idle.
    assert!(s < 20, "slow target got {s} of 200 (fast: {f1}, {f2})");
    assert!(f1 > 50 && f2 > 50, "fast: {f1}, {f2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_where_a_key_goes_and_why() {
    let (_dir, bin) = ketama_reference();
    let servers: Vec<(String, u16, u32)> = (0..5)
        .map(|i| (format!("10.9.0.{i}"), 11211, 1 + i as u32))
        .collect();
    let targets: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, (h, _, w))| {
            format!(
                "{{ addr = \"127.0.0.1:{}\", id = \"{h}\", weight = {w} }}",
                20000 + i
            )
        })
        .collect();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.cache]
balancer = "consistent_hash"
hash_on = "query.key"
targets = [{}]

[upstreams.kv]
balancer = "slots"
hash_on = "header.x-key"
targets = [{{ addr = "127.0.0.1:21000", id = "kv-0" }}, {{ addr = "127.0.0.1:21001", id = "kv-1" }}, {{ addr = "127.0.0.1:21002", id = "kv-2" }}]

[[routes]]
name = "cache"
match = {{ path_prefix = "/cache" }}
upstream = "cache"

[[routes]]
name = "kv"
match = {{ path_prefix = "/kv", methods = ["GET"] }}
upstream = "kv"
"#,
        targets.join(", ")
    );
    let gw = Gateway::start(&config);
    let admin = gw.admin();
    let keys: Vec<String> = (0..300).map(|i| format!("object-{i}")).collect();
    let reference = libmemcached_picks(&bin, &servers, &keys);
    let ring = Ketama::new(
        &servers
            .iter()
            .map(|(h, _, w)| (h.as_str(), *w))
            .collect::<Vec<_>>(),
    );
    let mut conn = H1::connect(admin).await;
    for (k, want) in keys.iter().zip(&reference) {
        let v = conn
            .send(request(
                "GET",
                &format!("/admin/explain?path=/cache/x&query.key={k}"),
                &[],
                Bytes::new(),
            ))
            .await
            .unwrap()
            .json();
        assert_eq!(v["route"], "cache");
        assert_eq!(v["balancer"], "consistent_hash");
        assert_eq!(v["key"], k.as_str());
        let hash = v["hash"].as_u64().unwrap();
        assert_eq!(hash, ring.hash_key(k.as_bytes()));
        assert_eq!(
            v["ring_point"].as_u64().map(|p| p as u32),
            ring.locate(hash).ring_point
        );
        let want_host = want.split(':').next().unwrap();
        assert_eq!(v["target"], want_host, "key {k}");
        assert_eq!(v["fallbacks"].as_array().unwrap().len(), 4);
    }
    let v = get(
        admin,
        "/admin/explain?path=/kv/a&header.x-key=%7Buser1000%7D.following",
    )
    .await
    .json();
    let slot = slots::key_slot(b"{user1000}.following");
    assert_eq!(v["slot"], slot);
    let owner = slots::even_split(3)
        .iter()
        .position(|r| r.contains(&slot))
        .unwrap();
    assert_eq!(v["target"], format!("kv-{owner}"));
    assert_eq!(v["fallbacks"], serde_json::json!([]));
    let v = get(admin, "/admin/explain?method=POST&path=/kv/a")
        .await
        .json();
    assert_eq!(v["route"], serde_json::Value::Null);
    let v = get(admin, "/admin/explain?path=/kv/a").await.json();
    assert!(v["reason"].as_str().unwrap().contains("400"), "{v}");
    let bad = send(
        admin,
        request("GET", "/admin/explain?bogus=1", &[], Bytes::new()),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
