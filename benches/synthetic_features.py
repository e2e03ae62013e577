"""Synthetic features of CIFAR-10's full shape for benches/review.sh, shaped like real ones: ten
classes whose means and within-class covariance are those of REAL (a lastlayer cache entry's
features.safetensors, e.g. EfficientNet-Lite0 features of the CIFAR-10 sample), drawn as
Gaussians; at another width, the same spectrum's shape stretched over that many directions
(a random rotation), the class means in the leading ones.

usage: synthetic_features.py REAL.safetensors OUT_DIR WIDTH [TRAIN_ROWS TEST_ROWS]
    writes OUT_DIR/syn{WIDTH}-train.safetensors and -test.safetensors (`features`, `labels`)
"""
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

real, out, width = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = {"train": int(sys.argv[4]) if len(sys.argv) > 4 else 50000, "test": int(sys.argv[5]) if len(sys.argv) > 5 else 10000}
t = load_file(real)
x, y = t["features"].astype(np.float64), t["labels"]
classes = int(y.max()) + 1
means = np.stack([x[y == c].mean(0) for c in range(classes)])
lam, vec = np.linalg.eigh(np.cov(x - means[y], rowvar=False))
lam, vec = np.clip(lam[::-1], 0, None), vec[:, ::-1]
d = x.shape[1]
if width == d:
    basis, spectrum, centres = vec, lam, means @ vec
else:
    k = np.arange(width) * (d - 1) / (width - 1)
    spectrum = np.interp(k, np.arange(d), lam) * d / width
    basis = np.linalg.qr(np.random.default_rng(1).standard_normal((width, width)))[0]
    centres = np.zeros((classes, width))
    centres[:, :d] = means @ vec
    centres += (x.mean(0) @ vec).mean()
for split, seed in (("train", 2), ("test", 3)):
    rng = np.random.default_rng(seed)
    n = rows[split]
    labels = rng.integers(0, classes, n)
    f = np.empty((n, width), dtype=np.float32)
    for s in range(0, n, 5000):
        m = min(5000, n - s)
        z = rng.standard_normal((m, width)) * np.sqrt(spectrum)
        f[s : s + m] = (centres[labels[s : s + m]] + z) @ basis.T
    save_file({"features": f, "labels": labels.astype(np.int64)}, f"{out}/syn{width}-{split}.safetensors")
print(f"wrote {out}/syn{width}-train/test.safetensors: {rows['train']} + {rows['test']} rows of {width}")
