#!/usr/bin/env bash
# Sets up a fresh machine, builds lastlayer, and runs the main job: an ImageNet-pretrained
# ResNet-50 from the Hugging Face Hub, CIFAR-10 from its official URL, features of a 2%
# stratified sample (1,000 training and 200 test pictures) extracted once and cached, a new
# last layer trained on them, evaluated, and exported to runs/demo-resnet50-cifar10.
# About 5-10 minutes on a 2-core CPU after the downloads (torch ~2.5 GB, weights ~100 MB,
# CIFAR-10 163 MB). Run it again: the features come from the cache and training takes seconds.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$LASTLAYER_ROOT"
scripts/setup.sh
exec target/release/lastlayer run --model resnet50 --data cifar10 --sample 0.02 \
  --out runs/demo-resnet50-cifar10 "$@"
