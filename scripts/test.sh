#!/usr/bin/env bash
# Sets up a fresh machine (virtualenv with torch==2.13.0, build) and runs the whole test suite.
# Needs no network beyond the package registries: tests serve their own Hub and CIFAR-10
# mirror on 127.0.0.1 and read ../shared/data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LASTLAYER_ROOT"
scripts/setup.sh --no-build
# Pinned Python packages the tests read files with and compare against (safetensors, timm, ...).
pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
# Headless Chromium and its WebDriver, for the page test in tests/serve.rs (Debian's packages;
# nothing downloads a browser of its own). We run as root: no sudo.
{ command -v chromium && command -v chromedriver; } >/dev/null ||
  (apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver)
cargo build --examples                # examples must keep compiling
cargo test --lib --tests -- --test-threads=2
