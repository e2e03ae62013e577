#!/usr/bin/env bash
# bf16: what choosing the store's engine by the whole split costs a small sample, and what it
# saves the full run after it (docs/performance.md, "A sample, then the full data, in bf16").
#
#   benches/bf16_sample.sh [ROUNDS]      (default 2)
#
# EfficientNet-Lite0 (random weights: the time does not depend on their values) at 224 px,
# --precision bf16, the shared CIFAR-10 sample's 2,000 training pictures. Each round, each in a
# fresh cache:
#   sample, eager    `--limit 30` with LASTLAYER_ENGINE=eager: the engine the old rule chose
#   sample, frozen   `--limit 30`, engine left to lastlayer (now: the whole split's, frozen)
#   full after it    all 2,000 after that sample (30 rows from the store)
#   full, fresh      all 2,000 in a fresh cache: what the full run cost after an eager sample
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
ROUNDS=${1:-2}
scripts/setup.sh --no-build >/dev/null
cargo build --release --quiet --example random_weights
cargo build --release --quiet
BIN=$LASTLAYER_ROOT/target/release/lastlayer
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/examples/random_weights efficientnet_lite0 "$work/w.safetensors" >/dev/null
data=../shared/data/cifar10-sample/cifar-10-batches-bin
grep -m1 -o 'model name.*' /proc/cpuinfo
echo "CPU flags: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')($(nproc) cores)"
run() { # what, cache, limit, engine
  local t0 t1
  t0=$(date +%s.%N)
  LASTLAYER_ENGINE=$4 "$BIN" --json --no-progress --cache-dir "$2" extract --model efficientnet_lite0 --weights "$work/w.safetensors" \
    --data cifar10 --data-dir "$data" --split train --limit "$3" --precision bf16 >"$work/out.json" 2>"$work/err.log"
  t1=$(date +%s.%N)
  printf "%-16s %5s pictures: %7.2f s, %4s rows through the backbone (%s)\\n" "$1" "$3" "$(echo "$t1 - $t0" | bc)" \
    "$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['backbone_rows'])" "$work/out.json")" \
    "$(grep -o -m1 'engine [A-Za-z]*' "$work/err.log" || echo 'no extraction')"
}
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  run "sample, eager" "$work/old-$r" 30 eager
  run "sample, frozen" "$work/new-$r" 30 ""
  run "full after it" "$work/new-$r" 2000 ""
  run "full, fresh" "$work/fresh-$r" 2000 ""
done
