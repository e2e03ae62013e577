#!/usr/bin/env bash
# Sets up a fresh machine (virtualenv with torch==2.13.0, build) and runs the whole test suite.
# Needs no network beyond the package registries: tests serve their own Hub and CIFAR-10
# mirror on 127.0.0.1 and read ../shared/data.
#
# On a fresh machine the installs and the build overlap (docs/performance.md, "The test
# command"): crates that do not need libtorch compile while pip installs torch and the tests'
# Python packages, and the build proper runs while apt installs Debian's packages.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LASTLAYER_ROOT"
mkdir -p target
# Background jobs (below) end with this script, however it ends; the first build with the
# compilers it started (its process group).
warm_up=
trap 'kill $(jobs -p) 2>/dev/null || true; [[ -z $warm_up ]] || kill -TERM -- "-$warm_up" 2>/dev/null || true' EXIT

# 1. No torch yet: build what does not need it, beside the installs. torch-sys is kept from
#    looking for torch (no LIBTORCH_USE_PYTORCH, no LIBTORCH), so it stops at once with its
#    "Cannot find a libtorch install" and --keep-going goes on with the rest. This build is a
#    process group of its own, stopped (crates it finished stay built) once torch is in.
if ! "$VIRTUAL_ENV/bin/python" -c "import torch" 2>/dev/null; then
  setsid env -u LIBTORCH_USE_PYTORCH -u LIBTORCH cargo build --keep-going --examples --bins --tests >target/test-warm-up.log 2>&1 &
  warm_up=$!
fi
scripts/setup.sh --no-build
# Pinned Python packages the tests read files with and compare against (safetensors, timm,
# ...). Before the build: torch-sys's build script imports torch from this virtualenv.
pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

# 2. In the background: headless Chromium and its WebDriver, for the page tests, and Slurm with
#    MUNGE, for the job-array test on a one-node cluster of scripts/slurm-cluster.sh (Debian's
#    packages; nothing downloads a browser of its own). We run as root: no sudo.
install_debian_packages() {
  local apt_packages=()
  { command -v chromium && command -v chromedriver; } >/dev/null ||
    apt_packages+=(chromium chromium-driver)
  { command -v sbatch && command -v slurmctld && command -v slurmd && command -v munged; } >/dev/null ||
    apt_packages+=(slurmctld slurmd slurm-client munge)
  ((${#apt_packages[@]} == 0)) ||
    (apt-get update && apt-get install -y --no-install-recommends "${apt_packages[@]}")
}
install_debian_packages >target/test-apt.log 2>&1 &
apt_install=$!

# 3. The build of everything (examples must keep compiling). Step 1 is stopped first, cargo
#    and the compilers it started, so that torch-sys's C++ (the longest chain) starts now.
if [[ -n $warm_up ]]; then
  kill -TERM -- "-$warm_up" 2>/dev/null || true
  wait "$warm_up" 2>/dev/null || true
fi
cargo build --examples --bins --tests
if ! wait "$apt_install"; then
  cat target/test-apt.log >&2
  echo "test.sh: installing the tests' Debian packages failed (log above)" >&2
  exit 1
fi

# The CPU as `--precision auto` sees it: without native bf16 (AVX2 only), bf16 is emulated and
# the tests that force bf16 run on fewer pictures (each says so in its output).
target/debug/lastlayer --no-progress models 2>&1 >/dev/null | grep -o -- "--precision auto.*" | sed 's/^/test.sh: /' || true
# Two tests at a time, each process on one libtorch thread: on 2 cores the suite took 738 s
# with two threads a process and 683 s with one (docs/performance.md, "The test command").
export OMP_NUM_THREADS=1
cargo test --lib --tests -- --test-threads=2
