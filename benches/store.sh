#!/usr/bin/env bash
# The feature store: what a re-run costs after a user edits a folder data set, as a fraction of
# the first extraction, whole `lastlayer extract` processes timed wall clock.
#
#   benches/store.sh [MODEL] [PICTURES]        (defaults: resnet50 600)
#   OLD_BIN=path/to/older/lastlayer benches/store.sh   # the same steps with another build too
#
# The data: PICTURES real CIFAR-10 pictures from ../shared/data as PNG files in class folders
# (20% of them put in test by a hash of their names), random weights in the registry's key
# names (the timing does not depend on the weights' values), fp32, the default batch. Steps:
#   first        the first extraction: every picture through the backbone
#   same         the same command again
#   label fix    one picture moved to another class folder
#   +10          10 new pictures added (their backbone time is printed beside)
#   full/sample  in a fresh cache, `--sample 0.5` first, then the full data (timed)
# Each line prints seconds, the fraction of `first`, and the rows the run reports it sent
# through the backbone (`backbone_rows`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
MODEL=${1:-resnet50}
N=${2:-600}
scripts/setup.sh --no-build >/dev/null
cargo build --release --quiet --example random_weights
cargo build --release --quiet
BIN=$LASTLAYER_ROOT/target/release/lastlayer

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/examples/random_weights "$MODEL" "$work/weights.safetensors" >/dev/null
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, flags: $(grep -m1 -oE 'avx512_bf16|amx_bf16|avx512f|avx2' /proc/cpuinfo | sort -u | xargs)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# PICTURES records (then 10 more) as PNG files: <root>/<class>/<nnnn>.png.
make_pngs() { # ROOT FIRST COUNT
  python3 - "$1" "$2" "$3" <<'PY'
import sys, pathlib
from PIL import Image
root, first, count = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
src = pathlib.Path("../shared/data/cifar10-sample/cifar-10-batches-bin")
recs = (src / "data_batch_1.bin").read_bytes() + (src / "test_batch.bin").read_bytes()
classes = [l.strip() for l in (src / "batches.meta.txt").read_text().splitlines() if l.strip()]
for i in range(first, first + count):
    r = recs[i * 3073:(i + 1) * 3073]
    px = bytes(r[1 + c * 1024 + p] for p in range(1024) for c in range(3))
    d = root / classes[r[0]]; d.mkdir(parents=True, exist_ok=True)
    Image.frombytes("RGB", (32, 32), px).save(d / f"{i:05d}.png")
PY
}

# step NAME BIN DATA CACHE [ARGS...]: times one extract; prints "seconds backbone_rows".
step() {
  local bin=$1 data=$2 cache=$3; shift 3
  /usr/bin/time -f "%e" -o "$work/time" "$bin" --json --cache-dir "$cache" --no-progress extract --model "$MODEL" \
    --weights "$work/weights.safetensors" --data "$data" --precision fp32 "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  local rows
  rows=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(s.get("backbone_rows", -1) for s in d["splits"]))' "$work/out")
  echo "$(cat "$work/time") $rows"
}

run_all() { # LABEL BIN
  local label=$1 bin=$2 data=$work/data-$1 cache=$work/cache-$1
  make_pngs "$data" 0 "$N"
  read -r first first_rows < <(step "$bin" "$data" "$cache")
  read -r same same_rows < <(step "$bin" "$data" "$cache")
  local pic; pic=$(find "$data" -name '*.png' | sort | head -1)
  local cls; cls=$(basename "$(dirname "$pic")")
  local other; other=$(find "$data" -mindepth 1 -maxdepth 1 -type d ! -name "$cls" | sort | head -1)
  mv "$pic" "$other/"
  read -r fix fix_rows < <(step "$bin" "$data" "$cache")
  make_pngs "$data" "$N" 10
  read -r add add_rows < <(step "$bin" "$data" "$cache")
  read -r _ sample_rows < <(step "$bin" "$data" "$cache-2" --sample 0.5)
  read -r full full_rows < <(step "$bin" "$data" "$cache-2")
  python3 - "$label" "$N" "$first" "$first_rows" "$same" "$same_rows" "$fix" "$fix_rows" "$add" "$add_rows" "$full" "$full_rows" "$sample_rows" <<'PY'
import sys
label, n = sys.argv[1], int(sys.argv[2])
first, fr, same, sr, fix, xr, add, ar, full, ur, smp = sys.argv[3:]
first = float(first)
per = first / int(n)
print(f"{label}: first extraction of {n} pictures {first:.1f}s ({fr} rows through the backbone)")
for name, secs, rows in [("same command", same, sr), ("label fix", fix, xr), ("+10 pictures", add, ar), (f"full after --sample 0.5 ({smp} rows)", full, ur)]:
    secs = float(secs)
    extra = f"; the 10 pictures' share of the first extraction {10 * per:.2f}s ({10 * per / first:.3f}), the rest {secs / first - 10 * per / first:.3f}" if name.startswith("+10") else ""
    print(f"{label}: {name:<34} {secs:6.2f}s = {secs / first:.3f} of the first ({rows} rows through the backbone){extra}")
PY
}

run_all new "$BIN"
if [ -n "${OLD_BIN:-}" ]; then
  run_all old "$OLD_BIN"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
