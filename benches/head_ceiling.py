"""The ceiling of a tuned linear head on cached features: softmax regression minimised to
convergence (PyTorch's L-BFGS, strong Wolfe line search, gradient 1e-6) on every training row,
standardised, at each penalty λ of a grid (`mean cross-entropy + λ/2 · |W|²`, lastlayer's
objective; scikit-learn's C = 1 / (λ · rows)), warm-started down it, and its accuracy on the
test rows. The best of the grid is what no validation split can beat; issue 29 compares it with
scikit-learn's protocol (docs/performance.md, "The head on the full CIFAR-10").

usage: head_ceiling.py TRAIN.safetensors TEST.safetensors [--penalties 3e-2,1e-2,...]
       [--transform none|sqrt|l2norm] [--label-smoothing 0.1]
"""
import argparse
import json
import time

import torch
from safetensors.torch import load_file

ap = argparse.ArgumentParser()
ap.add_argument("train")
ap.add_argument("test")
ap.add_argument("--penalties", default="3e-2,1e-2,6e-3,4e-3,3e-3,2e-3,1e-3,5e-4")
ap.add_argument("--transform", default="none", choices=["none", "sqrt", "l2norm"])
ap.add_argument("--label-smoothing", type=float, default=0.0)
a = ap.parse_args()
tr, te = load_file(a.train), load_file(a.test)
X, y = tr["features"].float(), tr["labels"].long()
Xt, yt = te["features"].float(), te["labels"].long()
tf = {"none": lambda v: v, "sqrt": lambda v: v.clamp_min(0).sqrt(), "l2norm": lambda v: v / v.norm(dim=1, keepdim=True)}[a.transform]
X, Xt = tf(X), tf(Xt)
mu, sd = X.mean(0), X.std(0) + 1e-3
Z, Zt = (X - mu) / sd, (Xt - mu) / sd
C, D = int(y.max()) + 1, Z.shape[1]
w = torch.zeros(C, D + 1)
for lam in [float(v) for v in a.penalties.split(",")]:
    t = time.time()
    w = w.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-6, tolerance_change=1e-12, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Z @ w[:, :D].T + w[:, D], y, label_smoothing=a.label_smoothing) + lam / 2 * (w[:, :D] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach()
    acc = ((Zt @ w[:, :D].T + w[:, D]).argmax(1) == yt).float().mean().item()
    print(json.dumps({"l2": lam, "C": 1 / (lam * len(y)), "transform": a.transform, "label_smoothing": a.label_smoothing, "test_accuracy": acc, "seconds": round(time.time() - t, 1)}), flush=True)
