#!/usr/bin/env bash
# Extraction with 1, 2 and 4 Slurm workers on this machine: a one-node cluster
# (scripts/slurm-cluster.sh), an array job of `lastlayer extract --shard auto` workers with
# cores / workers libtorch threads each (OMP_NUM_THREADS, --cpus-per-task), over the CIFAR-10
# sample in ../shared/data; then `lastlayer cache merge`. Prints per worker count the array's
# wall time (sbatch --wait: submit to last task done, Slurm's ~2 s polling included), images/s,
# the merge time, and the merged file's sha256 (the same for every worker count).
#
#   benches/scale_out.sh                        # resnet18 (random weights), 1000 train pictures
#   MODEL=efficientnet_lite0 LIMIT=2000 WORKERS="1 2" benches/scale_out.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
MODEL=${MODEL:-resnet18} LIMIT=${LIMIT:-1000} WORKERS=${WORKERS:-"1 2 4"}
cargo build --quiet --bin lastlayer --example random_weights
bin=$PWD/target/debug/lastlayer
work=$(mktemp -d /tmp/llso.XXXXXX)
cluster=$(mktemp -d /tmp/llsc.XXXXXX)
trap 'scripts/slurm-cluster.sh stop "$cluster" >/dev/null 2>&1 || true; rm -rf "$work" "$cluster"' EXIT
scripts/slurm-cluster.sh start "$cluster" >/dev/null
export SLURM_CONF=$cluster/slurm.conf
target/debug/examples/random_weights "$MODEL" "$work/w.safetensors" >/dev/null
cores=$(nproc)
data=$(cd ../shared/data/cifar10-sample/cifar-10-batches-bin && pwd)
args="--model $MODEL --weights $work/w.safetensors --data cifar10 --data-dir $data --split train --limit $LIMIT --precision fp32"
echo "machine: $cores cores; $MODEL, $LIMIT CIFAR-10 pictures at the model's input size, fp32"
for n in $WORKERS; do
  threads=$((cores / n)); ((threads < 1)) && threads=1
  cache=$work/cache-$n
  t0=$(date +%s.%N)
  sbatch --array=0-$((n - 1)) --wait --quiet --cpus-per-task="$threads" --output="$work/out-$n-%a.txt" \
    --wrap "OMP_NUM_THREADS=$threads exec $bin --cache-dir $cache --no-progress extract $args --shard auto"
  t1=$(date +%s.%N)
  "$bin" --cache-dir "$cache" -q cache merge >/dev/null
  t2=$(date +%s.%N)
  sum=$(sha256sum "$cache"/features/"$MODEL"/train-*/features.safetensors | cut -c1-16)
  awk -v n="$n" -v th="$threads" -v a="$t0" -v b="$t1" -v c="$t2" -v rows="$LIMIT" -v sum="$sum" 'BEGIN {
    printf "%d worker(s) x %d thread(s): extract %.1f s (%.1f images/s), merge %.2f s, features sha256 %s\n", n, th, b - a, rows / (b - a), c - b, sum }'
done
