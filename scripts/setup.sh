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
if [ "${1:-}" != "--no-build" ]; then
  echo "setup: building lastlayer (release)" >&2
  cargo build --release --quiet
fi
