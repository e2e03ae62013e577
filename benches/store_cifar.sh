#!/usr/bin/env bash
# The feature store at full CIFAR-10 size (50,000 + 10,000 pictures):
#   1. `train` from start to head on cached features, this build against OLD_BIN (an earlier
#      lastlayer, which must find the same cache entries), alternated ROUNDS times: seconds and
#      peak RSS of each whole process;
#   2. a label fix in the binary batch (one record's label byte changed): the split's entry is
#      remade from the store, and the lookup of its 50,000 row keys is timed (debug log);
#   3. the content keys of 50,000 picture files: hashed the first time, remembered unread the
#      second (the `content keys of ...` log line).
#
#   OLD_BIN=/path/to/earlier/lastlayer benches/store_cifar.sh [ROUNDS]      (default 3)
#
# The data: a CIFAR-10 binary folder of 50,000 + 10,000 distinct records made from the 3,000 of
# ../shared/data (each copy's pixels shifted by its copy number, so that every record is new),
# ResNet-50 with random weights at --input-size 32 (2,048 features a row, as at 224, while the
# one-time extraction stays affordable on a small CPU).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
ROUNDS=${1:-3}
scripts/setup.sh --no-build >/dev/null
cargo build --release --quiet --example random_weights
cargo build --release --quiet
BIN=$LASTLAYER_ROOT/target/release/lastlayer
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
echo "work folder: $work (kept when WORK is set)"
[ -n "${WORK:-}" ] || trap 'rm -rf "$work"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, flags: $(grep -m1 -oE 'avx512_bf16|amx_bf16|avx512f|avx2' /proc/cpuinfo | sort -u | xargs)"
[ -f "$work/weights.safetensors" ] || target/release/examples/random_weights resnet50 "$work/weights.safetensors" >/dev/null

if [ ! -f "$work/cifar/cifar-10-batches-bin/test_batch.bin" ]; then
  python3 - "$work/cifar/cifar-10-batches-bin" <<'PY'
import sys, pathlib
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True)
src = pathlib.Path("../shared/data/cifar10-sample/cifar-10-batches-bin")
recs = (src / "data_batch_1.bin").read_bytes() + (src / "test_batch.bin").read_bytes()
n_src = len(recs) // 3073
def record(i):
    r = bytearray(recs[(i % n_src) * 3073:(i % n_src + 1) * 3073])
    copy = i // n_src
    if copy:
        r[1:] = bytes((b + copy) % 256 for b in r[1:])
    return bytes(r)
for b in range(5):
    (out / f"data_batch_{b + 1}.bin").write_bytes(b"".join(record(b * 10000 + i) for i in range(10000)))
(out / "test_batch.bin").write_bytes(b"".join(record(50000 + i) for i in range(10000)))
(out / "batches.meta.txt").write_bytes((src / "batches.meta.txt").read_bytes())
PY
fi
data=(--data cifar10 --data-dir "$work/cifar")
common=(--model resnet50 --weights "$work/weights.safetensors" --input-size 32 --precision fp32)

# timed LABEL BIN ARGS...: prints "LABEL: <seconds> s, peak RSS <MiB> MiB" for the whole process.
timed() {
  local label=$1 bin=$2; shift 2
  /usr/bin/time -f "%e %M" -o "$work/time" "$bin" --no-progress "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  read -r secs kib <"$work/time"
  echo "$label: $secs s, peak RSS $((kib / 1024)) MiB"
}

if [ ! -f "$work/extracted" ]; then
  timed "one-time extraction (60,000 pictures, this build)" "$BIN" --cache-dir "$work/cache" extract "${common[@]}" "${data[@]}"
  touch "$work/extracted"
fi
for round in $(seq 1 "$ROUNDS"); do
  timed "round $round: train, cached, this build" "$BIN" --cache-dir "$work/cache" train "${common[@]}" "${data[@]}" --out "$work/run-new"
  grep -q "extracting\|extracted now" "$work/err" && { echo "this build ran the backbone on a cached split"; exit 1; }
  if [ -n "${OLD_BIN:-}" ]; then
    timed "round $round: train, cached, OLD_BIN" "$OLD_BIN" --cache-dir "$work/cache" train "${common[@]}" "${data[@]}" --out "$work/run-old"
    grep -q "extracted in" "$work/err" && { echo "OLD_BIN did not find the cache entries"; exit 1; }
  fi
done

# A label fix: record 17 of data_batch_3.bin gets another label.
cp -r "$work/cifar" "$work/cifar-fixed"
python3 - "$work/cifar-fixed/cifar-10-batches-bin/data_batch_3.bin" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[17 * 3073] = (b[17 * 3073] + 1) % 10; open(p, "wb").write(b)
PY
timed "label fix: train (the train entry remade from the store)" "$BIN" -v --cache-dir "$work/cache" train "${common[@]}" --data cifar10 --data-dir "$work/cifar-fixed" --out "$work/run-fixed"
grep -oE "train: [0-9]+ row keys looked up in a store of [0-9]+ rows \([0-9]+ segments\) in [0-9.]+s: [0-9]+ missing" "$work/err" | head -1
grep -oE "train features: [0-9]+ rows, [0-9]+ from the feature store, [0-9]+ extracted now" "$work/err" | head -1

# 50,000 picture files: content keys hashed, then remembered.
if [ ! -d "$work/files" ]; then
  python3 - "$work/cifar/cifar-10-batches-bin" "$work/files" <<'PY'
import sys, pathlib
from PIL import Image
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
classes = [l.strip() for l in (src / "batches.meta.txt").read_text().splitlines() if l.strip()]
for b in range(5):
    recs = (src / f"data_batch_{b + 1}.bin").read_bytes()
    for i in range(10000):
        r = recs[i * 3073:(i + 1) * 3073]
        d = out / classes[r[0]]; d.mkdir(parents=True, exist_ok=True)
        Image.frombytes("RGB", (32, 32), bytes(r[1 + c * 1024 + p] for p in range(1024) for c in range(3))).save(d / f"{b}-{i:05d}.png")
PY
  sleep 3  # files younger than 2 s are hashed every time (racily clean)
fi
for pass in first second; do
  timed "50,000 picture files, $pass pass (extract --split train)" "$BIN" --cache-dir "$work/cache-files" extract "${common[@]}" --data "$work/files" --split train --test-fraction 0
  grep -oE "train: content keys of [0-9]+ pictures in [0-9.]+s \([0-9]+ files read and hashed, [0-9]+ unchanged files not read\)" "$work/err"
done
