#!/usr/bin/env bash
# Decoding photos: pictures a second for a phone-sized JPEG (4032x3024, 12 MP) with and
# without applying its EXIF orientation, and the peak memory of decoding and preprocessing a
# 100-megapixel JPEG and of refusing a decompression-bomb PNG, each in a fresh process
# (examples/decode_photos.rs).
#
#   benches/decode.sh [ROUNDS]        (default 10)
#
# The photos are made here with Pillow from ../shared/data/imagenet-check/chelsea.png,
# upscaled with sensor-like noise so that they compress as camera JPEGs do (quality 92, 4:2:0):
#   phone.jpg      4032x3024, no tag
#   phone_o6.jpg   the same pixels with Orientation = 6 (shown 3024x4032, as a portrait photo)
#   big.jpg        12240x8160 (99.9 MP)
#   bomb.png       20000x20000 (400 MP) of one colour: a few hundred KB on disk
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
ROUNDS=${1:-10}
scripts/setup.sh --no-build >/dev/null
cargo build --release --quiet --example decode_photos
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python - "$work" <<'PY'
import sys
import numpy as np
from PIL import Image
out = sys.argv[1]
src = Image.open("../shared/data/imagenet-check/chelsea.png").convert("RGB")
rng = np.random.default_rng(0)
def photo(w, h):
    x = np.asarray(src.resize((w, h), Image.BICUBIC), np.int16)
    x = x + rng.integers(-6, 7, size=x.shape, dtype=np.int16)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
p = photo(4032, 3024)
p.save(f"{out}/phone.jpg", quality=92)
exif = Image.Exif(); exif[0x0112] = 6
p.save(f"{out}/phone_o6.jpg", quality=92, exif=exif.tobytes())
photo(12240, 8160).save(f"{out}/big.jpg", quality=92)
Image.new("L", (20000, 20000)).save(f"{out}/bomb.png")
PY
grep -m1 -o 'model name.*' /proc/cpuinfo
echo "CPU flags: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')($(nproc) cores)"
ls -l "$work"
target/release/examples/decode_photos "$ROUNDS" "$work/phone.jpg" "$work/phone_o6.jpg"
target/release/examples/decode_photos 1 "$work/big.jpg"
target/release/examples/decode_photos 1 "$work/bomb.png" 2>&1 || true
/usr/bin/time -o "$work/time" -f "bomb.png: exit %x, %e s, peak RSS %M KiB" target/release/examples/decode_photos 1 "$work/bomb.png" >/dev/null 2>&1 || true
cat "$work/time"
