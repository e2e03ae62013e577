#!/usr/bin/env bash
# Sets up a fresh machine: a project-local virtualenv (.venv, git-ignored) with torch==2.13.0
# from PyPI (the libtorch that tch 0.26 links), then builds the release binary.
# Safe to run again: it skips what is already there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LASTLAYER_ROOT"

TORCH_VERSION=2.13.0
if ! "$VIRTUAL_ENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: creating .venv with torch==$TORCH_VERSION (a few minutes, about 5 GB)" >&2
  python3 -m venv "$VIRTUAL_ENV"
  "$VIRTUAL_ENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
# libheif, for HEIC/HEIF (iPhone photos) and AVIF pictures: Debian's package. lastlayer loads it
# when the first such picture comes, so it builds and runs without it; only those pictures
# need it (the error then says what to install).
if ! ldconfig -p 2>/dev/null | grep -q 'libheif\.so\.1'; then
  as_root=()
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && as_root=(sudo); }
  if [ "$(id -u)" = 0 ] || [ ${#as_root[@]} -gt 0 ]; then
    echo "setup: installing libheif (HEIC and AVIF pictures) with apt-get" >&2
    "${as_root[@]}" apt-get update -qq
    packages=(libheif1)
    # Debian 13 and later ship libheif's HEVC and AV1 decoders as plugins of their own.
    for p in libheif-plugin-libde265 libheif-plugin-dav1d; do
      apt-cache show "$p" >/dev/null 2>&1 && packages+=("$p")
    done
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
  else
    echo "setup: HEIC and AVIF pictures need libheif, which is not installed: apt-get install libheif1 (as root)" >&2
  fi
fi
if [ "${1:-}" != "--no-build" ]; then
  echo "setup: building lastlayer (release)" >&2
  cargo build --release --quiet
fi
