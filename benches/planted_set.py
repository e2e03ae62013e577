"""Writes the planted-fault set of `benches/review.sh` (the one tests/review.rs makes, in Python):
the CIFAR-10 sample in ../shared/data as class folders, train/<class>/NNNN.png and
test/<class>/NNNN.png, with
  - 2% of the training pictures moved into a wrong class's folder,
  - 2% of the test pictures copied into train (their class's folder) as JPEG at quality 70,
    shifted one pixel to the right (the first column repeated): train/<class>/copy-NNNN.jpg,
  - 0.5% of the test pictures copied byte for byte: train/<class>/same-NNNN.png.

usage: planted_set.py CIFAR_BATCHES_DIR OUT_DIR SEED  -> prints the planted faults as JSON
    {"wrong_labels": {name: true class}, "near_copies": [[test, train]], "exact_copies": [[test, train]]}
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

src, out, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
classes = [c.strip() for c in (src / "batches.meta.txt").read_text().splitlines() if c.strip()]
rng = np.random.default_rng(seed)


def records(name):
    raw = np.frombuffer((src / name).read_bytes(), dtype=np.uint8).reshape(-1, 3073)
    return raw[:, 0].astype(int), raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="PNG")


train_y, train_x = records("data_batch_1.bin")
test_y, test_x = records("test_batch.bin")
moved = set(rng.permutation(len(train_y))[: len(train_y) // 50].tolist())
wrong_labels = {}
for i, (y, img) in enumerate(zip(train_y, train_x)):
    c = y
    if i in moved:
        c = (y + int(rng.integers(1, 10))) % 10
        wrong_labels[f"train/{classes[c]}/{i:04d}.png"] = classes[y]
    save(img, out / f"train/{classes[c]}/{i:04d}.png")
for i, (y, img) in enumerate(zip(test_y, test_x)):
    save(img, out / f"test/{classes[y]}/{i:04d}.png")
order = rng.permutation(len(test_y)).tolist()
near, exact = order[: len(test_y) // 50], order[len(test_y) // 50 : len(test_y) // 50 + len(test_y) // 200]
near_copies, exact_copies = [], []
for i in near:
    img = test_x[i]
    shifted = np.concatenate([img[:, :1], img[:, :-1]], axis=1)
    name = f"train/{classes[test_y[i]]}/copy-{i:04d}.jpg"
    Image.fromarray(shifted).save(out / name, format="JPEG", quality=70)
    near_copies.append([f"test/{classes[test_y[i]]}/{i:04d}.png", name])
for i in exact:
    a, b = f"test/{classes[test_y[i]]}/{i:04d}.png", f"train/{classes[test_y[i]]}/same-{i:04d}.png"
    shutil.copyfile(out / a, out / b)
    exact_copies.append([a, b])
print(json.dumps({"wrong_labels": wrong_labels, "near_copies": near_copies, "exact_copies": exact_copies}))
