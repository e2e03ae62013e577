#!/usr/bin/env bash
# Head training on features bigger than memory: writes synthetic features of ROWS x WIDTH f32
# (default 2,000,000 x 1,024 = 7.6 GiB) in a temporary folder, trains a head on them with the
# streamed trainer (minibatches read from the file; src/head/streamed.rs), and prints the time
# per epoch, then scores the head on the same file as a too-big test split is scored, and prints
# the peak resident memory (VmHWM, and /usr/bin/time's maximum resident set size).
# The file is deleted at the end. Target: peak RSS under 2 GiB, whatever ROWS is.
#
#   benches/head_mmap.sh                       # 2,000,000 x 1,024, 10 classes, 2 epochs
#   ROWS=200000 benches/head_mmap.sh           # the same at a tenth: RSS should not change
#   WORK=/big/disk benches/head_mmap.sh        # where the file goes (default: $TMPDIR)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$LASTLAYER_ROOT"
ROWS=${ROWS:-2000000} WIDTH=${WIDTH:-1024} CLASSES=${CLASSES:-10} EPOCHS=${EPOCHS:-2}
cargo build --quiet --example head_streamed
bin=target/debug/examples/head_streamed
work=$(mktemp -d "${WORK:-${TMPDIR:-/tmp}}/head-mmap.XXXXXX")
trap 'rm -rf "$work"' EXIT
/usr/bin/time -f "write: %e s, max RSS %M KiB" "$bin" write "$work/features.safetensors" "$ROWS" "$WIDTH" "$CLASSES"
ls -l "$work/features.safetensors"
/usr/bin/time -f "train: %e s wall, max RSS %M KiB" "$bin" train "$work/features.safetensors" "$CLASSES" "$EPOCHS"
