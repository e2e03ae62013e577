"""Why `lastlayer review`'s exact duplicate search cannot be made several times cheaper on a
2-core AVX2 CPU, measured (docs/performance.md, "Review: how long `lastlayer review` takes").

usage: review_limits.py WORK RUN
    WORK: a work folder of benches/review.sh part 1 (planted/, planted.json, cache/), RUN: one
    of its run folders (e.g. run-EfficientNet-Lite0-224px).

(1) Fewer dimensions: the whitened features truncated to their k leading directions
    (PCA-whitening to k dimensions, as image retrieval does) against all 1,280: the planted
    JPEG copies' similarity and the other pairs above each threshold. A bound on the dropped
    dimensions (Cauchy-Schwarz) cannot skip pairs either: their share of the whitened energy
    is printed.
(2) Fewer bits: a 4096 x 1280 by 1280 x 4096 product in fp32 against int8 (fbgemm's dynamic
    quantized linear, the fastest int8 product libtorch offers on the CPU), same process.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

work, run = Path(sys.argv[1]), sys.argv[2]
planted = json.load(open(work / "planted.json"))
near = [tuple(p) for p in planted["near_copies"]]
exact = [tuple(p) for p in planted["exact_copies"]]
card = json.load(open(work / run / "head.json"))
cache = work / "cache" / "features" / card["backbone"]["model"]


def entry(split, rows):
    for d in cache.iterdir():
        m = d / "manifest.json"
        if m.exists():
            j = json.load(open(m))
            k = j["key"]
            if k["split"] == split and k["weights_sha256"] == card["backbone"]["weights_sha256"] and k["preprocessing"] == card["preprocessing"] and j["rows"] == rows:
                return load_file(d / "features.safetensors")["features"].astype(np.float64)
    sys.exit(f"no cached {split} features for {run} in {cache}")


xtr, xte = entry("train", card["data"]["train_rows"]), entry("test", card["data"]["test_rows"])
root = work / "planted"
trn = [f"train/{c.name}/{f.name}" for c in sorted((root / "train").iterdir()) for f in sorted(c.iterdir())]
ten = [f"test/{c.name}/{f.name}" for c in sorted((root / "test").iterdir()) for f in sorted(c.iterdir())]
ti, te = {n: i for i, n in enumerate(trn)}, {n: i for i, n in enumerate(ten)}
pairs = [(te[a], ti[b]) for a, b in near]
excl = set(ti[b] for _, b in near + exact)
keep = np.array([i not in excl for i in range(len(trn))])
planted_rows = set(i for i, _ in pairs) | set(te[x] for x, _ in exact)
rows = [i for i in range(len(ten)) if i not in planted_rows]


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# The whitening of src/review/similar.rs: centred on the training mean, each principal
# direction divided by sqrt(lambda + eps), eps a tenth of the mean eigenvalue.
mu = xtr.mean(0)
lam, V = np.linalg.eigh(np.cov(xtr - mu, rowvar=False))
lam, V = np.clip(lam[::-1], 0, None), V[:, ::-1]
eps = 0.1 * lam.mean()
energy = np.cumsum(lam / (lam + eps)) / (lam / (lam + eps)).sum()
d = len(lam)
print(f"{run}: {len(trn)} train, {len(ten)} test rows of {d}; {len(pairs)} planted JPEG copies; eigenvalues above eps: {(lam > eps).sum()}")
print("  whitened energy in the leading 128/256/384/512 directions: " + " ".join(f"{energy[k - 1]:.2f}" for k in (128, 256, 384, 512)))
print("  k: planted copies' lowest / median similarity; at threshold t: copies found, test pictures with another train pair >= t, pairs within train >= t")
for k in (d, 512, 384, 256, 128):
    W = V[:, :k] / np.sqrt(lam[:k] + eps)
    a, b = unit((xte - mu) @ W), unit((xtr - mu) @ W)
    S = a @ b.T
    ps = np.sort(np.array([S[i, j] for i, j in pairs]))
    others = np.array([S[i, keep].max() for i in rows])
    within = (b @ b.T)[np.triu_indices(len(b), 1)]
    cells = " ".join(f"{t}: {(ps >= t).sum()}/{len(ps)} {(others >= t).sum()} {(within >= t).sum()};" for t in (0.3, 0.4, 0.5))
    print(f"  k={k}: {ps[0]:.3f} / {ps[len(ps) // 2]:.3f}; {cells}")

torch.manual_seed(0)
n, dim, reps = 4096, 1280, 5
a = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
b = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
a @ b.T
t = time.perf_counter()
for _ in range(reps):
    a @ b.T
fp32 = 2 * n * n * dim * reps / (time.perf_counter() - t) / 1e9
torch.backends.quantized.engine = "fbgemm"
qb = torch.quantize_per_channel(b, b.abs().amax(1) / 127, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
packed = torch.ops.quantized.linear_prepack(qb, None)
torch.ops.quantized.linear_dynamic(a, packed, False)
t = time.perf_counter()
for _ in range(reps):
    out = torch.ops.quantized.linear_dynamic(a, packed, False)
int8 = 2 * n * n * dim * reps / (time.perf_counter() - t) / 1e9
print(f"{n} x {dim} by {dim} x {n}: fp32 {fp32:.1f} GFLOP/s, int8 (fbgemm) {int8:.1f} GOP/s = {int8 / fp32:.2f}x; int8's largest error {(out - a @ b.T).abs().max():.4f}")
print(f"  the 60,000-row search (1.8e9 pairs x 1,280 multiply-adds = 4.6e12 operations): fp32 {4.6e12 / fp32 / 1e9:.0f} s, int8 {4.6e12 / int8 / 1e9:.0f} s at these rates")
