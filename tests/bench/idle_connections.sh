#!/usr/bin/env bash
# What an idle client connection costs the gateway: RSS growth per connection with N idle
# connections that each made one GET, for HTTP/1.1 keep-alive, HTTP/2 with prior knowledge
# (h2c) and HTTP/2 over TLS.
#
#   tests/bench/idle_connections.sh [GATEWAY_BIN] [N]     (default target/release/gateway, 10000)
#
# One origin (the sample backend) on 127.0.0.1:18321; the gateway (one worker thread) on
# 127.0.0.1:18320 (HTTP/1.1), :18322 (h2c) and :18323 (HTTPS, self-signed).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/gateway}
N=${2:-10000}
ulimit -n "$(ulimit -Hn)"
dir=$(mktemp -d)
cat > "$dir/gw.toml" <<TOML
[server]
worker_threads = 1
[[listeners]]
name = "http"
listen = "127.0.0.1:18320"
[[listeners]]
name = "h2c"
listen = "127.0.0.1:18322"
h2c = true
[[listeners]]
name = "https"
listen = "127.0.0.1:18323"
tls = { self_signed = true }
[upstreams.plain]
targets = [{ addr = "127.0.0.1:18321" }]
[[routes]]
name = "plain"
upstream = "plain"
TOML
cargo build --release -q -p tests --bin backend-under-test
target/release/backend-under-test --listen 127.0.0.1:18321 --name origin >/dev/null 2>&1 &
origin=$!
trap 'kill $origin 2>/dev/null; rm -rf "$dir"' EXIT
for mode in h1 h2c tls; do
  RUST_LOG=warn "$BIN" run -c "$dir/gw.toml" >/dev/null 2>&1 &
  gw=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18320/ && break; sleep 0.1; done
  port=18320; [ $mode = h2c ] && port=18322; [ $mode = tls ] && port=18323
  python3 tests/bench/idle_connections.py $gw $port "$N" $mode
  kill $gw; wait $gw 2>/dev/null || true
done
