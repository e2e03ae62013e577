#!/usr/bin/env bash
# Extraction from a Hub data set's parquet files against the same pictures from CIFAR-10's
# binary files, same binary, same machine, alternating rounds.
#
#   benches/hf_parquet.sh [MODEL] [N] [ROUNDS] [SIZE]     (defaults: resnet18 3000 3 64)
#   LASTLAYER_BIN=target/debug/lastlayer benches/hf_parquet.sh ...   (an existing build)
#
# The N records (the 3,000 of ../shared/data repeated) are written twice: as
# cifar-10-batches-bin (raw pixels), and as PNGs in a parquet file with an `img` column, as
# `datasets` writes CIFAR-10 (`uoft-cs/cifar10`), placed in a Hugging Face cache exactly as
# `huggingface_hub` lays it out (refs/main, snapshots/<commit>, blobs/<sha256>; the commit is
# the sha1 of the file, standing in for the Hub's) and read with --offline. Each figure is the
# whole `extract` process, wall clock, on an empty feature cache: start-up, listing, reading
# (and for parquet, decoding PNGs), resizing, the backbone, writing the features.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
MODEL=${1:-resnet18}
N=${2:-3000}
ROUNDS=${3:-3}
SIZE=${4:-64}
if [ -z "${LASTLAYER_BIN:-}" ]; then
  cargo build --release --quiet --example random_weights
  cargo build --release --quiet
  BIN=target/release/lastlayer
  EX=target/release/examples/random_weights
else
  BIN=$LASTLAYER_BIN
  EX=$(dirname "$BIN")/examples/random_weights
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$EX" "$MODEL" "$work/weights.safetensors" >/dev/null

python3 - "$N" "$work" <<'PY'
import hashlib, io, json, os, pathlib, sys
import pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
n, work = int(sys.argv[1]), pathlib.Path(sys.argv[2])
src = pathlib.Path("../shared/data/cifar10-sample/cifar-10-batches-bin")
recs = (src / "data_batch_1.bin").read_bytes() + (src / "test_batch.bin").read_bytes()
out = (recs * (n * 3073 // len(recs) + 1))[: n * 3073]
d = work / "cifar-10-batches-bin"; d.mkdir()
(d / "data_batch_1.bin").write_bytes(out)
(d / "test_batch.bin").write_bytes(out[:3073 * 10])
names = [l for l in (src / "batches.meta.txt").read_text().splitlines() if l.strip()]
def table(raw):
    imgs, labels = [], []
    for i in range(len(raw) // 3073):
        r = raw[i * 3073:(i + 1) * 3073]
        px = bytes(r[1 + c * 1024 + p] for p in range(1024) for c in range(3))
        b = io.BytesIO(); Image.frombytes("RGB", (32, 32), px).save(b, format="PNG")
        imgs.append({"bytes": b.getvalue(), "path": None}); labels.append(r[0])
    t = pa.table({"img": pa.array(imgs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])), "label": pa.array(labels, type=pa.int64())})
    meta = {"info": {"features": {"img": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}}}
    return t.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
repo = work / "hf/hub/datasets--bench--cifar10"
files = {"plain_text/train-00000-of-00001.parquet": table(out), "plain_text/test-00000-of-00001.parquet": table(out[:3073 * 10])}
blobs = {}
for name, t in files.items():
    tmp = work / "tmp.parquet"; pq.write_table(t, tmp, row_group_size=1000)  # datasets: 1,000 rows a group for CIFAR-10
    data = tmp.read_bytes(); sha = hashlib.sha256(data).hexdigest(); blobs[name] = (sha, data)
commit = hashlib.sha1(b"".join(d for _, d in blobs.values())).hexdigest()
(repo / "blobs").mkdir(parents=True); (repo / "refs").mkdir()
(repo / "refs/main").write_text(commit)
for name, (sha, data) in blobs.items():
    (repo / "blobs" / sha).write_bytes(data)
    link = repo / "snapshots" / commit / name; link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(repo / "blobs" / sha, link.parent), link)
print(f"{n} pictures: binary {len(out)} bytes, parquet {len(blobs['plain_text/train-00000-of-00001.parquet'][1])} bytes")
PY

timed() { /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; cat "$work/time"; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, flags: $(grep -m1 -o -w -E 'avx512f|avx512_bf16|amx_tile|avx2' /proc/cpuinfo | sort -u | xargs); binary $BIN"
common=(extract --model "$MODEL" --weights "$work/weights.safetensors" --split train --precision fp32 --input-size "$SIZE")
bin=() hf=()
for round in $(seq 1 "$ROUNDS"); do
  read -r secs mem < <(HF_HOME="$work/hf" timed "$BIN" --json --no-progress --cache-dir "$work/c-bin-$round" "${common[@]}" --data cifar10 --data-dir "$work")
  bin+=("$(python3 -c "print($N / $secs)")")
  read -r secs2 mem2 < <(HF_HOME="$work/hf" timed "$BIN" --json --no-progress --offline --cache-dir "$work/c-hf-$round" "${common[@]}" --data hf:bench/cifar10:plain_text)
  hf+=("$(python3 -c "print($N / $secs2)")")
  echo "round $round: binary files $(printf %.1f "${bin[-1]}") images/s (${mem} KiB peak), parquet $(printf %.1f "${hf[-1]}") images/s (${mem2} KiB peak)"
done
python3 - "${bin[*]}" "${hf[*]}" <<'PY'
import statistics, sys
b = statistics.median(map(float, sys.argv[1].split())); h = statistics.median(map(float, sys.argv[2].split()))
print(f"median: binary files {b:.1f} images/s, parquet {h:.1f} images/s, parquet/binary {h / b:.2f}x")
PY
