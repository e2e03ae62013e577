#!/usr/bin/env bash
# Feature extraction: lastlayer against a plain PyTorch script, same machine, same run.
#
#   benches/extract.sh [MODEL] [N] [ROUNDS]      (defaults: resnet50 1000 3)
#
# Both extract features of the same N real CIFAR-10 pictures from ../shared/data (upscaled to
# the model's input size), with the same random weights in the registry's key names. The
# reference first tries fp32/bf16 x NCHW/channels_last on 256 pictures and keeps the mode whose
# batch loop (start-up excluded) is fastest;
# then the two alternate ROUNDS times. Each figure is the whole process, wall clock: start-up,
# weight loading, decoding and resizing, the backbone, and writing the features. Prints images
# per second (median of the rounds), peak resident memory, and the ratio.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
MODEL=${1:-resnet50}
N=${2:-1000}
ROUNDS=${3:-3}
scripts/setup.sh --no-build >/dev/null
pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt -r benches/requirements.txt
cargo build --release --quiet --example random_weights
cargo build --release --quiet
BIN=target/release/lastlayer

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/examples/random_weights "$MODEL" "$work/weights.safetensors" >/dev/null

# N records, repeating the 3,000 sample pictures if N is larger.
python3 - "$N" "$work" <<'PY'
import sys, pathlib
n, work = int(sys.argv[1]), pathlib.Path(sys.argv[2])
src = pathlib.Path("../shared/data/cifar10-sample/cifar-10-batches-bin")
recs = (src / "data_batch_1.bin").read_bytes() + (src / "test_batch.bin").read_bytes()
out = (recs * (n * 3073 // len(recs) + 1))[: n * 3073]
d = work / "cifar-10-batches-bin"; d.mkdir()
(d / "data_batch_1.bin").write_bytes(out)
(d / "test_batch.bin").write_bytes(out[:3073])
PY

read -r TIMM SIZE MEAN STD < <(python3 - "$MODEL" <<'PY'
import sys, tomllib
m = next(m for m in tomllib.load(open("pretrained/models.toml", "rb"))["model"] if m["name"] == sys.argv[1])
print(m["hub_repo"].removeprefix("timm/"), m["input_size"], ",".join(map(str, m["mean"])), ",".join(map(str, m["std"])))
PY
)

# timed CMD...: prints "<seconds> <peak KiB>" of the whole process.
timed() { /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; cat "$work/time"; }

ref() { timed python3 benches/reference.py "$TIMM" "$work/weights.safetensors" "$1" "$SIZE" "$MEAN" "$STD" "$2" "$work/ref.safetensors"; }

head -c $((256 * 3073)) "$work/cifar-10-batches-bin/data_batch_1.bin" >"$work/calib.bin"
# On a CPU without native bf16 (as `--precision auto` detects it) the reference's bf16 modes are
# emulated, many times slower, and never the fastest: they are not tried there.
auto=$("$BIN" --no-progress models 2>&1 >/dev/null | grep -o -- "--precision auto.*" || true)
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $auto"
modes="fp32-nchw fp32-cl bf16-nchw bf16-cl"
case "$auto" in *"no native bf16"*) modes="fp32-nchw fp32-cl"; echo "reference: bf16 modes skipped (emulated on this CPU)";; esac
best_mode="" best_rate=0
for mode in $modes; do
  ref "$work/calib.bin" "$mode" >/dev/null
  rate=$(grep -oE "batch loop [0-9.]+" "$work/out" | awk '{print $3}')
  echo "reference calibration: $mode $(printf %.1f "$rate") images/s (256 pictures, batch loop only)"
  if python3 -c "import sys; sys.exit(not $rate > $best_rate)"; then best_mode=$mode best_rate=$rate; fi
done
echo "reference setting: $best_mode"

ours=() theirs=() ours_mem=() theirs_mem=()
for round in $(seq 1 "$ROUNDS"); do
  read -r secs mem < <(timed "$BIN" --json --cache-dir "$work/cache-$round" --no-progress extract --model "$MODEL" \
    --weights "$work/weights.safetensors" --data cifar10 --data-dir "$work" --split train --precision auto)
  precision=$(grep -o '"precision": "[a-z0-9]*"' "$work/out" | head -1 | cut -d'"' -f4 || true)
  [ -n "$precision" ] || precision=$(grep -oE "model $MODEL \(([A-Za-z0-9]+)\)" "$work/out" | head -1 | sed -E 's/.*\((.*)\)/\1/')
  engine=$(grep -oE "engine [A-Za-z]+" "$work/err" | head -1 | cut -d' ' -f2 || true)
  ours+=("$(python3 -c "print($N / $secs)")"); ours_mem+=("$mem")
  read -r secs mem < <(ref "$work/cifar-10-batches-bin/data_batch_1.bin" "$best_mode")
  theirs+=("$(python3 -c "print($N / $secs)")"); theirs_mem+=("$mem")
  echo "round $round: lastlayer $(printf %.1f "${ours[-1]}") images/s (precision $precision, engine ${engine:-?}), reference $(printf %.1f "${theirs[-1]}") images/s"
done
python3 - "$MODEL" "$N" "${ours[*]}" "${theirs[*]}" "${ours_mem[*]}" "${theirs_mem[*]}" "$best_mode" <<'PY'
import statistics, sys
model, n, ours, theirs, om, tm, mode = sys.argv[1:8]
o = statistics.median(map(float, ours.split())); t = statistics.median(map(float, theirs.split()))
print(f"{model}, {n} pictures: lastlayer {o:.1f} images/s, reference ({mode}) {t:.1f} images/s, ratio {o / t:.2f}x; "
      f"peak RSS lastlayer {max(map(int, om.split())) / 1024:.0f} MiB, reference {max(map(int, tm.split())) / 1024:.0f} MiB")
PY
