#!/usr/bin/env bash
# Peak resident memory of `lastlayer extract` for N pictures, for several N: extraction streams
# (batches are decoded, run and saved in chunks), so it should grow only by the features kept
# for the final file (N x D x 4 bytes).
#
#   benches/memory.sh [MODEL] [N...]        (defaults: efficientnet_lite0 2000 20000)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
MODEL=${1:-efficientnet_lite0}
shift || true
SIZES=("${@:-2000 20000}")
[ $# -gt 0 ] && SIZES=("$@") || SIZES=(2000 20000)
scripts/setup.sh --no-build >/dev/null
cargo build --release --quiet --example random_weights
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/examples/random_weights "$MODEL" "$work/weights.safetensors" >/dev/null
for n in "${SIZES[@]}"; do
  python3 - "$n" "$work/data-$n" <<'PY'
import sys, pathlib
n, d = int(sys.argv[1]), pathlib.Path(sys.argv[2]) / "cifar-10-batches-bin"
src = pathlib.Path("../shared/data/cifar10-sample/cifar-10-batches-bin")
recs = (src / "data_batch_1.bin").read_bytes() + (src / "test_batch.bin").read_bytes()
d.mkdir(parents=True)
(d / "data_batch_1.bin").write_bytes((recs * (n * 3073 // len(recs) + 1))[: n * 3073])
(d / "test_batch.bin").write_bytes(recs[:3073])
PY
  /usr/bin/time -f "%e %M" -o "$work/time" target/release/lastlayer --cache-dir "$work/cache-$n" -q extract --model "$MODEL" \
    --weights "$work/weights.safetensors" --data cifar10 --data-dir "$work/data-$n" --split train --precision auto >/dev/null
  read -r secs kib <"$work/time"
  width=$(python3 -c "import tomllib; print(next(m['feature_width'] for m in tomllib.load(open('pretrained/models.toml','rb'))['model'] if m['name']=='$MODEL'))")
  echo "$MODEL, $n pictures: peak RSS $((kib / 1024)) MiB (features alone $((n * width * 4 / 1048576)) MiB), $(python3 -c "print(f'{$n / $secs:.1f}')") images/s"
  rm -rf "$work/data-$n" "$work/cache-$n"
done
