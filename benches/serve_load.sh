#!/usr/bin/env bash
# `lastlayer serve` under load from a real HTTP load generator (oha), against the offline rate
# of `extract` and `predict` over the same pictures, alternated in rounds on the same machine.
#
#   benches/serve_load.sh [SECONDS] [ROUNDS]        (defaults: 20 2)
#
# Environment:
#   MODEL       backbone, random weights (default resnet18)
#   CLIENTS     concurrent clients (default "1 4 16 64")
#   N           pictures of the offline runs (default 256; a second run of 64 is subtracted to
#               leave start-up out: rate = (N - 64) / (t(N) - t(64)))
#   QUEUE       serve's --queue for the levels (default 64: every level is below the limit)
#   SERVE_ARGS  more `serve` flags, e.g. "--max-wait-ms 0" or "--max-batch 8"
#   SERVE_ENV   environment for this branch's `serve`, e.g. "LASTLAYER_ENGINE=eager"
#   BASELINE    a `lastlayer` binary to compare single-client latency with (e.g. one built from
#               main before dynamic batching): both serve the run, and 1-client runs of half
#               SECONDS alternate between them three times a round
#   WAITS       --max-wait-ms values to compare at 16 clients after the rounds (e.g. "0 5 20")
#
# The picture: the shared photograph imagenet-check/coffee.png (600x400) saved as a JPEG
# (quality 90), served by oha as the body of every request; the offline runs read N copies of
# it. Per level it prints pictures/s, p50/p99 latency, the status codes and oha's errors; then
# the served rate at 16 clients over the offline extract rate, p99 over the time of one full
# batch at the offline rate, and one overload run (64 clients against --queue 8) that must
# give only 200s and 503s while /health answers at once.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
SECONDS_PER_LEVEL=${1:-20}
ROUNDS=${2:-2}
MODEL=${MODEL:-resnet18}
CLIENTS=${CLIENTS:-"1 4 16 64"}
N=${N:-256}
QUEUE=${QUEUE:-64}
SERVE_ARGS=${SERVE_ARGS:-}
SERVE_ENV=${SERVE_ENV:-}
OHA_VERSION=1.16.0

scripts/setup.sh --no-build >/dev/null
pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
# oha, from crates.io, into a folder of the project's target (not the user's ~/.cargo).
OHA=$(command -v oha || true)
if [ -z "$OHA" ] || ! "$OHA" --version | grep -q " $OHA_VERSION"; then
  OHA=target/oha/bin/oha
  [ -x "$OHA" ] && "$OHA" --version | grep -q " $OHA_VERSION" ||
    cargo install oha --locked --version "$OHA_VERSION" --root target/oha --quiet
fi
cargo build --release --quiet --example random_weights
cargo build --release --quiet
BIN=target/release/lastlayer

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores;" \
  "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16)$' | tr '\n' ' ')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

target/release/examples/random_weights "$MODEL" "$work/weights.safetensors" >/dev/null
"$BIN" --json --cache-dir "$work/cache-train" --no-progress -q train --model "$MODEL" --weights "$work/weights.safetensors" \
  --data cifar10 --data-dir ../shared/data/cifar10-sample/cifar-10-batches-bin --limit 40 --precision fp32 --out "$work/run" >/dev/null

python3 - "$work" "$N" <<'PY'
import pathlib, sys
from PIL import Image
work, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
photo = Image.open("../shared/data/imagenet-check/coffee.png").convert("RGB")
photo.save(work / "photo.jpg", quality=90)
# Each copy carries its own JPEG comment (the pixels are the same): the feature store computes a
# picture's bytes once, so identical copies would go through the backbone once and the offline
# rate would be void. (Changing a pixel is not enough: JPEG's quantisation can erase it.)
for count in (n, 64):
    for split, per_class in (("train", count // 2), ("test", 1)):
        for cls in ("a", "b"):
            d = work / f"photos-{count}" / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                photo.save(d / f"{i:05d}.jpg", quality=90, comment=f"{split} {cls} {i}".encode())
PY
PHOTO=$work/photo.jpg
echo "picture: coffee.png as a $(python3 -c "from PIL import Image; print('x'.join(map(str, Image.open('$PHOTO').size)))") JPEG, $(stat -c %s "$PHOTO") bytes"

now() { date +%s.%N; }
# Seconds of `extract` over the folder of COUNT copies (a fresh cache each time).
extract_secs() {
  local t0; t0=$(now)
  # The frozen engine, as `serve` runs on the CPU: the faster offline rate per picture (start-up
  # is subtracted below), whatever engine `extract` would pick for these few pictures.
  LASTLAYER_ENGINE=frozen "$BIN" --json --cache-dir "$work/cache-x$1-$RANDOM" --no-progress extract --model "$MODEL" --weights "$work/weights.safetensors" \
    --data "$work/photos-$1" --split train --precision fp32 >"$work/extract.json" 2>"$work/extract.err"
  python3 -c "print($(now) - $t0)"
}
predict_secs() {
  local t0; t0=$(now)
  "$BIN" --json -q predict "$work/run" "$work/photos-$1/train" >"$work/predict.json"
  python3 -c "print($(now) - $t0)"
}
rate() { python3 -c "print(($N - 64) / ($1 - $2))"; }

# start NAME BIN [FLAGS...]: a server for the run on a free port, warmed up (64 requests from
# 16 clients); sets NAME_pid and NAME_url. SERVE_ENV applies to this branch's binary only.
start() {
  local name=$1 bin=$2 url="" envs=()
  shift 2
  [ "$bin" = "$BIN" ] && read -r -a envs <<<"$SERVE_ENV"
  env "${envs[@]}" "$bin" --json serve "$work/run" --port 0 "$@" >"$work/$name.out" 2>"$work/$name.err" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 600); do
    url=$(grep -oE 'http://[0-9.:]+' "$work/$name.out" | head -1 || true)
    [ -n "$url" ] && break
    sleep 0.2
  done
  [ -n "$url" ] || { cat "$work/$name.err" >&2; exit 1; }
  declare -g "${name}_pid=$pid" "${name}_url=$url"
  "$OHA" -n 64 -c 16 -m POST -D "$PHOTO" -T image/jpeg --no-tui --output-format json "$url/predict" >/dev/null
}
# stop NAME: SIGTERM, which must end the server with exit status 0.
stop() {
  local pid_var="${1}_pid"
  kill -TERM "${!pid_var}"
  wait "${!pid_var}" || { echo "serve ($1) exited with $? after SIGTERM" >&2; exit 1; }
}
peak_rss_mib() { local pid_var="${1}_pid"; awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/${!pid_var}/status"; }

# load URL CLIENTS [SECONDS]: one oha run; prints "pictures/s p50 p99 codes errors" (pictures/s:
# 200s over oha's whole run, the requests still in flight at the end waited for).
load() {
  "$OHA" -z "${3:-$SECONDS_PER_LEVEL}s" -c "$2" -w -m POST -D "$PHOTO" -T image/jpeg --no-tui --output-format json "$1/predict" >"$work/oha.json"
  python3 - "$work/oha.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0)
errors = sum(r.get("errorDistribution", {}).values())
print(f'{ok / s["total"]:.4f} {p["p50"]:.4f} {p["p99"]:.4f} {",".join(f"{k}:{v}" for k, v in sorted(codes.items())) or "none"} {errors}')
PY
}

declare -A served p50 p99
ours_p50=() base_p50=()
for round in $(seq 1 "$ROUNDS"); do
  x_all=$(extract_secs "$N"); x_64=$(extract_secs 64)
  extract_rates+=("$(rate "$x_all" "$x_64")")
  echo "round $round: extract $(printf %.2f "${extract_rates[-1]}") pictures/s (start-up excluded; $(grep -oE "engine [A-Za-z]+" "$work/extract.err" | head -1 || echo 'engine ?'))"
  start new "$BIN" --queue "$QUEUE" $SERVE_ARGS
  [ "$round" = 1 ] && echo "serve: $(grep -oE 'engine [A-Za-z]+.*' "$work/new.err" | head -1 || true)"
  for c in $CLIENTS; do
    read -r rate_c q50 q99 codes errors < <(load "$new_url" "$c")
    served[$round,$c]=$rate_c p50[$round,$c]=$q50 p99[$round,$c]=$q99
    echo "round $round: serve, $c clients: $(printf %.2f "$rate_c") pictures/s, p50 $(printf %.3f "$q50") s, p99 $(printf %.3f "$q99") s, status $codes, errors $errors"
  done
  echo "round $round: serve's peak RSS $(peak_rss_mib new) MiB; $(curl -s "$new_url/metrics" | grep -E '^lastlayer_batch_size_(sum|count)' | tr '\n' ' ')"
  if [ -n "${BASELINE:-}" ]; then
    # Single-client latency, this branch against BASELINE: both servers up, short runs alternated.
    start base "$BASELINE" --queue "$QUEUE"
    for i in 1 2 3; do
      read -r _ q50 _ _ _ < <(load "$new_url" 1 $((SECONDS_PER_LEVEL / 2))); ours_p50+=("$q50")
      read -r _ q50b _ _ _ < <(load "$base_url" 1 $((SECONDS_PER_LEVEL / 2))); base_p50+=("$q50b")
      echo "round $round: 1 client, p50 this branch $(printf %.3f "$q50") s, BASELINE $(printf %.3f "$q50b") s"
    done
    stop base
  fi
  stop new
  p_all=$(predict_secs "$N"); p_64=$(predict_secs 64)
  predict_rates+=("$(rate "$p_all" "$p_64")")
  echo "round $round: predict $(printf %.2f "${predict_rates[-1]}") pictures/s (start-up excluded)"
done

# Above the queue limit: 64 clients against --queue 8, /health timed meanwhile.
start over "$BIN" --queue 8 $SERVE_ARGS
"$OHA" -z "${SECONDS_PER_LEVEL}s" -c 64 -w -m POST -D "$PHOTO" -T image/jpeg --no-tui --output-format json "$over_url/predict" >"$work/oha.json" &
oha_pid=$!
sleep $((SECONDS_PER_LEVEL / 2))
health=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' "$over_url/health")
wait "$oha_pid"
overload=$(python3 - "$work/oha.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(",".join(f"{k}:{v}" for k, v in sorted(r.get("statusCodeDistribution", {}).items())), sum(r.get("errorDistribution", {}).values()))
PY
)
echo "overload (64 clients, --queue 8): status ${overload% *}, errors ${overload##* }; GET /health during it: ${health% *} in ${health#* } s; peak RSS $(peak_rss_mib over) MiB"
stop over

for w in ${WAITS:-}; do
  start wait "$BIN" --queue "$QUEUE" --max-wait-ms "$w" $SERVE_ARGS
  read -r rate_w q50 q99 codes errors < <(load "$wait_url" 16)
  echo "--max-wait-ms $w, 16 clients: $(printf %.2f "$rate_w") pictures/s, p50 $(printf %.3f "$q50") s, p99 $(printf %.3f "$q99") s, status $codes, errors $errors"
  read -r _ q50 q99 codes errors < <(load "$wait_url" 1)
  echo "--max-wait-ms $w, 1 client: p50 $(printf %.3f "$q50") s, p99 $(printf %.3f "$q99") s, status $codes, errors $errors"
  stop wait
done

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
served_flat=""
for c in $CLIENTS; do
  for round in $(seq 1 "$ROUNDS"); do served_flat+="$c:${served[$round,$c]}:${p50[$round,$c]}:${p99[$round,$c]} "; done
done
max_batch=$(python3 -c "import json; print(json.load(open('$work/over.out')).get('max_batch', 32))" 2>/dev/null || echo 32)
python3 - "${extract_rates[*]}" "${predict_rates[*]}" "$served_flat" "${ours_p50[*]:-}" "${base_p50[*]:-}" "$max_batch" <<'PY'
import statistics, sys
x = statistics.median(map(float, sys.argv[1].split()))
p = statistics.median(map(float, sys.argv[2].split()))
levels = {}
for item in sys.argv[3].split():
    c, rate, q50, q99 = item.split(":")
    levels.setdefault(int(c), []).append((float(rate), float(q50), float(q99)))
full_batch = int(sys.argv[6]) / x
print(f"offline (medians of the rounds): extract {x:.2f} pictures/s, predict {p:.2f} pictures/s; "
      f"one full batch of {sys.argv[6]} at the extract rate: {full_batch:.2f} s")
for c, runs in sorted(levels.items()):
    rate = statistics.median(r[0] for r in runs); q50 = statistics.median(r[1] for r in runs); q99 = statistics.median(r[2] for r in runs)
    print(f"serve, {c} clients: {rate:.2f} pictures/s = {rate / x:.2f}x extract, {rate / p:.2f}x predict; "
          f"p50 {q50:.3f} s, p99 {q99:.3f} s = {q99 / full_batch:.2f}x one full batch")
ours, base = [float(v) for v in sys.argv[4].split()], [float(v) for v in sys.argv[5].split()]
if base:
    o, b = statistics.median(ours), statistics.median(base)
    print(f"single client p50 (medians of {len(base)} alternations): this branch {o:.3f} s, BASELINE {b:.3f} s: {o / b:.2f}x")
PY
