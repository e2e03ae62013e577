#!/usr/bin/env bash
# GPU measurement (issue 14): the whole of CIFAR-10 (60,000 synthetic pictures: 50,000 train,
# 10,000 test) through ResNet-50 and EfficientNet-Lite0 with `lastlayer --device cuda extract`,
# timed as whole processes, against this machine's own PyTorch running the same network, weights
# and preprocessing (benches/gpu_reference.py), in one short, self-contained run.
#
# Made for the lent GPU machine: PyTorch 2.11 with CUDA, no Rust toolchain, no network. Build
# first, here, with ../shared/tools/device-build.sh (writes target/device/lastlayer and
# target/device/random_weights against torch 2.11), then run from the repository root there,
# carrying target/device:
#
#   benches/gpu.sh            # about 3 minutes on a fast GPU; every step has its own timeout
#
# Steps: (1) what the machine is; (2) synthetic CIFAR-10 written there; (3) CPU-vs-CUDA
# difference of the preprocessing kernels (benches/gpu_preprocess.py); (4) per model: random
# weights, then ROUNDS x {lastlayer extract, reference}, each a whole process, the features of
# the two compared; (5) `lastlayer train` on the cached ResNet-50 features (the head: on the
# CPU, then with LASTLAYER_HEAD_DEVICE=backbone on the GPU) and `lastlayer predict` on three PNG
# pictures, both with --device cuda; (5b) views made on the device and on the CPU; (6) a summary.
#
# Environment knobs: N=60000 (pictures, 5/6 train), DEVICE=cuda, BIN=target/device,
# ROUNDS=1, BATCH=256 (the reference's batch; lastlayer uses its own default for the device
# unless EXTRACT_BATCH is set), STEP_TIMEOUT=100 (seconds per step), BUDGET=480 (seconds: later
# steps are skipped past it), PYTHON=python3, MODELS="resnet50 efficientnet_lite0",
# CPU_PREPROCESS=1 (also time ResNet-50 with LASTLAYER_PREPROCESS=cpu: float inputs made on the
# CPU and copied, the path before issue 14), VIEWS=1 and VIEWS_LIMIT=6000 (ResNet-50 with
# `--augment flip,crops=2 --tta flip` on that many pictures, the views made on the device and
# then on the CPU). To check the script itself on a CPU:
#   DEVICE=cpu N=96 BIN=target/release MODELS=resnet50 benches/gpu.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${N:-60000}
DEVICE=${DEVICE:-cuda}
BIN=${BIN:-target/device}
ROUNDS=${ROUNDS:-1}
BATCH=${BATCH:-256}
STEP_TIMEOUT=${STEP_TIMEOUT:-100}
BUDGET=${BUDGET:-480}
CPU_PREPROCESS=${CPU_PREPROCESS:-1}
VIEWS=${VIEWS:-1}
VIEWS_LIMIT=${VIEWS_LIMIT:-6000}
STARTED=$(date +%s)
PYTHON=${PYTHON:-python3}
MODELS=${MODELS:-resnet50 efficientnet_lite0}
[ "$DEVICE" = cuda ] && DTYPE=bf16 || DTYPE=fp32
EXTRA=()
[ -n "${EXTRACT_BATCH:-}" ] && EXTRA=(--extract-batch-size "$EXTRACT_BATCH")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { echo "== $*" >&2; }
now() { date +%s.%N; }
# step NAME CMD...: runs CMD under the step timeout, stdout to $work/NAME.out, stderr to
# $work/NAME.err; sets SECS (wall clock of the whole process) and returns CMD's status.
step() {
  local name=$1; shift
  SECS=0
  if [ $(($(date +%s) - STARTED)) -gt "$BUDGET" ]; then say "$name skipped: past the ${BUDGET}s budget"; return 125; fi
  local t0; t0=$(now)
  timeout "$STEP_TIMEOUT" "$@" >"$work/$name.out" 2>"$work/$name.err"
  local rc=$?
  SECS=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
  if [ $rc -ne 0 ]; then
    say "$name failed (status $rc$([ $rc -eq 124 ] && echo ", timed out after ${STEP_TIMEOUT}s")); its last lines:"
    tail -n 15 "$work/$name.err" >&2
  fi
  return $rc
}

# (1) The machine, and its own libtorch for lastlayer.
TORCH_LIB=$("$PYTHON" -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")') || { say "no PyTorch for $PYTHON"; exit 1; }
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -x "$BIN/lastlayer" ] && [ -x "$BIN/random_weights" ] || { say "$BIN/lastlayer or $BIN/random_weights missing: run ../shared/tools/device-build.sh and carry target/device"; exit 1; }
"$PYTHON" -c 'import torch; print("PyTorch", torch.__version__, "CUDA", torch.version.cuda, "GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
echo "CPU: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$BIN/lastlayer" --version

# (2) Synthetic CIFAR-10 in the binary layout: random pixels, labels 0-9 in turn.
say "writing $N synthetic CIFAR-10 pictures"
"$PYTHON" - "$N" "$work/cifar-10-batches-bin" <<'PY' || exit 1
import os, sys
n, d = int(sys.argv[1]), sys.argv[2]
os.makedirs(d)
test = n // 6
sizes = [(f"data_batch_{i + 1}.bin", (n - test) // 5 + (1 if i < (n - test) % 5 else 0)) for i in range(5)]
start = 0
for name, rows in sizes + [("test_batch.bin", test)]:
    with open(f"{d}/{name}", "wb") as f:
        for r in range(start, start + rows):
            f.write(bytes([r % 10]) + os.urandom(3072))
    start += rows
open(f"{d}/batches.meta.txt", "w").write("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
PY

# (3) The preprocessing kernels, CPU against the device.
say "preprocessing on the CPU against $DEVICE (same ops as src/data/preprocess.rs)"
step preprocess "$PYTHON" benches/gpu_preprocess.py "$DEVICE" && cat "$work/preprocess.out"

# (4) Extraction, whole processes, lastlayer and the reference alternating.
declare -A OURS REF
for model in $MODELS; do
  read -r SIZE MEAN STD < <("$PYTHON" - "$model" <<'PY'
import re, sys
text = open("pretrained/models.toml").read()
block = text.split(f'name = "{sys.argv[1]}"')[1].split("[[model]]")[0]
get = lambda k: re.search(rf"^{k} = (.*)$", block, re.M).group(1)
vec = lambda k: ",".join(x.strip() for x in get(k).strip("[]").split(","))
print(get("input_size"), vec("mean"), vec("std"))
PY
)
  "$BIN/random_weights" "$model" "$work/$model.safetensors" >/dev/null || { say "random_weights $model failed"; continue; }
  for round in $(seq 1 "$ROUNDS"); do
    cache="$work/cache-$model-$round"
    say "$model round $round: lastlayer --device $DEVICE extract ($N pictures)"
    if step "ours-$model-$round" "$BIN/lastlayer" --json --no-progress -v --device "$DEVICE" --cache-dir "$cache" extract \
        --model "$model" --weights "$work/$model.safetensors" --data cifar10 --data-dir "$work" --split train,test \
        --precision auto "${EXTRA[@]}"; then
      OURS[$model]="${OURS[$model]:-} $SECS"
      echo "$model round $round: lastlayer $(printf %.1f "$SECS") s, $(awk -v n="$N" -v s="$SECS" 'BEGIN { printf "%.0f", n / s }') pictures/s (whole process)"
      grep -E "backbone|preprocess|features:|device|cuda|Cuda" "$work/ours-$model-$round.err" | sed 's/^/    log: /' | head -n 12
    fi
    say "$model round $round: reference ($DTYPE, batch $BATCH)"
    if step "ref-$model-$round" "$PYTHON" benches/gpu_reference.py "$model" "$work/$model.safetensors" \
        "$work/cifar-10-batches-bin" "$SIZE" "$MEAN" "$STD" "$DEVICE" "$DTYPE" "$BATCH" "$work/ref-$model.pt"; then
      REF[$model]="${REF[$model]:-} $SECS"
      echo "$model round $round: reference $(printf %.1f "$SECS") s, $(awk -v n="$N" -v s="$SECS" 'BEGIN { printf "%.0f", n / s }') pictures/s (whole process; $(cat "$work/ref-$model-$round.out"))"
    fi
  done
  if [ "$model" = resnet50 ] && [ "$CPU_PREPROCESS" = 1 ]; then
    say "$model: lastlayer with LASTLAYER_PREPROCESS=cpu (float inputs made on the CPU and copied)"
    if LASTLAYER_PREPROCESS=cpu step "cpupre-$model" "$BIN/lastlayer" --json --no-progress -v --device "$DEVICE" \
        --cache-dir "$work/cache-cpupre" extract --model "$model" --weights "$work/$model.safetensors" --data cifar10 \
        --data-dir "$work" --split train,test --precision auto "${EXTRA[@]}"; then
      echo "$model, preprocessing on the CPU: lastlayer $(printf %.1f "$SECS") s, $(awk -v n="$N" -v s="$SECS" 'BEGIN { printf "%.0f", n / s }') pictures/s (whole process)"
      grep -E "preprocess" "$work/cpupre-$model.err" | sed 's/^/    log: /' | head -n 2
    fi
    rm -rf "$work/cache-cpupre"
  fi
  # The same network? lastlayer's cached features (train then test) against the reference's.
  if [ -f "$work/ref-$model.pt" ] && [ -d "$work/cache-$model-1" ]; then
    "$PYTHON" - "$work/cache-$model-1" "$work/ref-$model.pt" "$model" <<'PY'
import glob, json, struct, sys, torch
def load(path):
    data = bytearray(open(path, "rb").read()); n = struct.unpack("<Q", data[:8])[0]
    v = json.loads(data[8:8 + n])["features"]; s, e = v["data_offsets"]
    return torch.frombuffer(data, dtype=torch.float32, count=(e - s) // 4, offset=8 + n + s).view(v["shape"]).clone()
parts = {p.split("/")[-2].split("-")[0]: p for p in glob.glob(f"{sys.argv[1]}/features/*/*/features.safetensors")}
ours = torch.cat([load(parts["train"]), load(parts["test"])])
ref = torch.load(sys.argv[2])
d = (ours - ref).abs()
cos = torch.nn.functional.cosine_similarity(ours, ref, dim=1)
print(f"{sys.argv[3]}: lastlayer against reference features, {tuple(ours.shape)}: max |difference| {d.max():.3g} "
      f"(largest |feature| {ref.abs().max():.3g}), mean |difference| {d.mean():.3g}, smallest cosine similarity {cos.min():.5f}")
PY
  fi
done

# (5) The head, on the CPU and on the device, and predict on the device, from the cached
# ResNet-50 features.
# head_figures NAME: the head's own seconds and the test accuracy from `train --json`'s output.
head_figures() {
  "$PYTHON" -c 'import json, sys; o = json.load(open(sys.argv[1])); print("head %.2f s, test accuracy %.4f" % (o["report"]["seconds"], o["test_accuracy"]))' \
    "$work/$1.out" 2>/dev/null || echo "head figures unreadable"
}
if [ -d "$work/cache-resnet50-1" ]; then
  say "lastlayer --device $DEVICE train (head on cached ResNet-50 features)"
  if step train "$BIN/lastlayer" --json --no-progress -v --device "$DEVICE" --cache-dir "$work/cache-resnet50-1" train \
      --model resnet50 --weights "$work/resnet50.safetensors" --data cifar10 --data-dir "$work" --precision auto --out "$work/run"; then
    echo "train (cached features, head on the CPU): $(printf %.1f "$SECS") s whole process; $(head_figures train)"
    grep -E "head|features:|device|cuda|Cuda" "$work/train.err" | sed 's/^/    log: /' | head -n 8
    say "the same head trained on $DEVICE (LASTLAYER_HEAD_DEVICE=backbone)"
    if LASTLAYER_HEAD_DEVICE=backbone step train-dev "$BIN/lastlayer" --json --no-progress -v --device "$DEVICE" \
        --cache-dir "$work/cache-resnet50-1" train --model resnet50 --weights "$work/resnet50.safetensors" --data cifar10 \
        --data-dir "$work" --precision auto --out "$work/run-dev"; then
      echo "train (cached features, head on $DEVICE): $(printf %.1f "$SECS") s whole process; $(head_figures train-dev)"
      grep -E "head:" "$work/train-dev.err" | sed 's/^/    log: /' | head -n 2
    fi
    "$PYTHON" - "$work/pics" <<'PY'
import os, struct, sys, zlib
os.makedirs(sys.argv[1])
def png(path, w, h):
    rows = b"".join(b"\0" + os.urandom(3 * w) for _ in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
for i, (w, h) in enumerate([(640, 480), (300, 451), (32, 32)]):
    png(f"{sys.argv[1]}/{i}.png", w, h)
PY
    say "lastlayer --device $DEVICE predict (3 PNG pictures of different sizes)"
    if step predict "$BIN/lastlayer" --json -v --device "$DEVICE" predict "$work/run" "$work/pics"; then
      echo "predict: $(printf %.1f "$SECS") s whole process, $(grep -o '"path"' "$work/predict.out" | wc -l) pictures classified"
      grep -E "backbone|preprocess|device|cuda|Cuda" "$work/predict.err" | sed 's/^/    log: /' | head -n 6
    fi
  fi
fi

# (5b) Views on the device: ResNet-50 with `--augment flip,crops=2 --tta flip` on at most
# VIEWS_LIMIT pictures of each split (`--limit`; 4 views a training picture, 2 a test picture), the views
# made on the device, then with LASTLAYER_PREPROCESS=cpu (made on the CPU, copied as floats);
# the two paths' features compared.
if [ "$VIEWS" = 1 ] && [ -f "$work/resnet50.safetensors" ]; then
  min() { echo $(($1 < $2 ? $1 : $2)); }
  rows=$(( $(min "$VIEWS_LIMIT" $((N - N / 6))) * 4 + $(min "$VIEWS_LIMIT" $((N / 6))) * 2 ))
  for where in device cpu; do
    say "resnet50 with views, made on the $where (at most $VIEWS_LIMIT pictures a split: $rows backbone rows)"
    if LASTLAYER_PREPROCESS=$where step "views-$where" "$BIN/lastlayer" --json --no-progress -v --device "$DEVICE" \
        --cache-dir "$work/cache-views-$where" extract --model resnet50 --weights "$work/resnet50.safetensors" --data cifar10 \
        --data-dir "$work" --split train,test --precision auto --limit "$VIEWS_LIMIT" --augment flip,crops=2 --tta flip "${EXTRA[@]}"; then
      echo "views made on the $where: $(printf %.1f "$SECS") s whole process, $(awk -v n="$rows" -v s="$SECS" 'BEGIN { printf "%.0f", n / s }') backbone rows/s"
      grep -E "preprocess" "$work/views-$where.err" | sed 's/^/    log: /' | head -n 1
    fi
  done
  if [ -d "$work/cache-views-device" ] && [ -d "$work/cache-views-cpu" ]; then
    "$PYTHON" - "$work/cache-views-device" "$work/cache-views-cpu" <<'PY'
import glob, json, struct, sys, torch
def load(path):
    data = bytearray(open(path, "rb").read()); n = struct.unpack("<Q", data[:8])[0]
    v = json.loads(data[8:8 + n])["features"]; s, e = v["data_offsets"]
    return torch.frombuffer(data, dtype=torch.float32, count=(e - s) // 4, offset=8 + n + s).view(v["shape"]).clone()
for split in ("train", "test"):
    a, b = (load(glob.glob(f"{d}/features/*/{split}-*/features.safetensors")[0]) for d in sys.argv[1:3])
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    print(f"views, {split} {tuple(a.shape)}: device against CPU views, max |difference| {(a - b).abs().max():.3g} "
          f"(largest |feature| {b.abs().max():.3g}), smallest cosine similarity {cos.min():.5f}")
PY
  fi
fi

# (6) Summary: medians of the rounds.
echo "summary ($N pictures, $DEVICE):"
for model in $MODELS; do
  "$PYTHON" - "$model" "$N" "${OURS[$model]:-}" "${REF[$model]:-}" <<'PY'
import statistics, sys
model, n, ours, ref = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
o = statistics.median(map(float, ours)) if ours else None
r = statistics.median(map(float, ref)) if ref else None
line = f"  {model}: lastlayer " + (f"{o:.1f} s ({n / o:.0f} pictures/s)" if o else "failed")
line += ", reference " + (f"{r:.1f} s ({n / r:.0f} pictures/s)" if r else "failed")
if o and r:
    line += f", lastlayer/reference speed {r / o:.2f}x"
if o and model == "resnet50" and n == 60000:
    line += f"; target under 30 s: {'met' if o < 30 else 'NOT met'}"
print(line)
PY
done
