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
# Headless Chromium and its WebDriver, for the page test in tests/serve.rs, and Slurm with MUNGE,
# for the job-array test on a one-node cluster of scripts/slurm-cluster.sh (Debian's packages;
# nothing downloads a browser of its own). We run as root: no sudo.
apt_packages=()
{ command -v chromium && command -v chromedriver; } >/dev/null ||
  apt_packages+=(chromium chromium-driver)
{ command -v sbatch && command -v slurmctld && command -v slurmd && command -v munged; } >/dev/null ||
  apt_packages+=(slurmctld slurmd slurm-client munge)
((${#apt_packages[@]} == 0)) ||
  (apt-get update && apt-get install -y --no-install-recommends "${apt_packages[@]}")
# One build of everything (examples must keep compiling): cargo then compiles the library's
# unit tests and the test binary beside the rest instead of after it.
cargo build --examples --bins --tests
# The CPU as `--precision auto` sees it: without native bf16 (AVX2 only), bf16 is emulated and
# the tests that force bf16 run on fewer pictures (each says so in its output).
target/debug/lastlayer --no-progress models 2>&1 >/dev/null | grep -o -- "--precision auto.*" | sed 's/^/test.sh: /' || true
# Two tests at a time, each process on one libtorch thread: on 2 cores the suite took 738 s
# with two threads a process and 683 s with one (docs/performance.md, "The test command").
export OMP_NUM_THREADS=1
cargo test --lib --tests -- --test-threads=2
