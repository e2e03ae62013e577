"""Writes CIFAR-10 records as a folder data set with some classes held out as unknown.

    python cifar_folders.py CIFAR_BIN_DIR OUT HELD_A,HELD_B

OUT/data/train/<class>/<i>.png (data_batch_*.bin) and OUT/data/test/<class>/<i>.png
(test_batch.bin) for the classes not held out; OUT/unknown/<class>-<i>.png for the test
records of the held-out classes. PNG keeps the pixels exactly.
"""
import pathlib, sys
import numpy as np
from PIL import Image

src, out, held = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), {int(c) for c in sys.argv[3].split(",")}
names = (src / "batches.meta.txt").read_text().split()
for split, files in [("train", sorted(src.glob("data_batch_*.bin"))), ("test", [src / "test_batch.bin"])]:
    i = 0
    for f in files:
        rec = np.fromfile(f, dtype=np.uint8).reshape(-1, 3073)
        for r in rec:
            label = int(r[0])
            pic = Image.fromarray(r[1:].reshape(3, 32, 32).transpose(1, 2, 0))
            if label in held:
                if split == "test":
                    d = out / "unknown"
                    d.mkdir(parents=True, exist_ok=True)
                    pic.save(d / f"{names[label]}-{i:05d}.png")
            else:
                d = out / "data" / split / names[label]
                d.mkdir(parents=True, exist_ok=True)
                pic.save(d / f"{i:05d}.png")
            i += 1
