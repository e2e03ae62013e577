#!/usr/bin/env bash
# How long `lastlayer fetch` takes to give up on a CDN that sends half a file and then stalls
# forever: (retries + 1) x LASTLAYER_TIMEOUT plus the backoff waits, instead of hanging.
# Usage: benches/download_stall.sh [path/to/lastlayer]   (default target/debug/lastlayer)
set -euo pipefail
bin="${1:-target/debug/lastlayer}"
work="$(mktemp -d)"
python3 "$(dirname "$0")/stall_server.py" > "$work/port" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
export HF_ENDPOINT="http://127.0.0.1:$(cat "$work/port")" LASTLAYER_RETRIES=2 LASTLAYER_RETRY_BASE_MS=1000
for t in 2 5; do
  rm -rf "$work/hf" "$work/cache"
  start=$(date +%s.%N)
  set +e
  HF_HOME="$work/hf" LASTLAYER_CACHE="$work/cache" LASTLAYER_TIMEOUT=$t timeout 300 "$bin" -q fetch resnet18 2>/dev/null
  code=$?
  set -e
  end=$(date +%s.%N)
  printf 'LASTLAYER_TIMEOUT=%s LASTLAYER_RETRIES=2: exit %s after %.1f s (expected 3 x %s s + 1 s + 2 s backoff = %s s)\n' \
    "$t" "$code" "$(echo "$end - $start" | bc)" "$t" "$((3 * t + 3))"
done
