#!/usr/bin/env bash
# Instructions the gateway spends per proxied request, counted by valgrind (callgrind): a
# deterministic figure for A/B comparisons on a noisy machine, where CPU seconds move ±20 %.
#
#   tests/bench/instructions_per_request.sh [GATEWAY_BIN] [EXTRA_TOML]
#     GATEWAY_BIN  default target/release/gateway (cargo build --release first)
#     EXTRA_TOML   appended to the config, e.g. $'[tracing]\notlp_endpoint = "http://127.0.0.1:18201/v1/traces"'
#
# One origin (the sample backend) on 127.0.0.1:18201, the gateway on 127.0.0.1:18200 under
# callgrind; `hey -c 10` sends 1,000 then 4,000 requests; the result is
# (instructions at 4,000 - instructions at 1,000) / 3,000, so start-up cost cancels out.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/gateway}
EXTRA=${2:-}
for t in valgrind hey; do command -v $t >/dev/null || { apt-get install -y -qq valgrind hey >/dev/null; }; done
dir=$(mktemp -d)
trap 'kill $origin 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/gw.toml" <<TOML
[server]
worker_threads = 1
[[listeners]]
name = "http"
listen = "127.0.0.1:18200"
[upstreams.plain]
targets = [{ addr = "127.0.0.1:18201" }]
[[routes]]
name = "plain"
upstream = "plain"
$EXTRA
TOML
cargo build --release -q -p tests --bin backend-under-test
target/release/backend-under-test --listen 127.0.0.1:18201 --name origin >/dev/null 2>&1 &
origin=$!
count() {
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.$1" "$BIN" run -c "$dir/gw.toml" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18200/ && break; sleep 0.2; done
  hey -n "$1" -c 10 http://127.0.0.1:18200/ >/dev/null 2>&1
  kill -INT $pid; wait $pid 2>/dev/null || true
  grep -E "^summary|^totals" "$dir/cg.$1" | head -1 | awk '{print $2}'
}
a=$(count 1000)
b=$(count 4000)
python3 -c "print(f'{($b - $a) / 3000:.0f} instructions per request')"
