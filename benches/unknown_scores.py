"""Which "in-class" score tells pictures of no trained class apart best, on cached features.

For every pair of CIFAR-10 classes held out (45 pairs): the training features of the other 8
classes are split as lastlayer splits them (10% of each class for validation); a softmax head
(multinomial logistic regression on standardised features, L2 with C = 0.05, L-BFGS) is
trained on the rest, and the test pictures of the 8 classes (in-class) and of the 2 held out
(unknown) are scored by
  msp      the top softmax probability (Hendrycks & Gimpel 2017): the baseline
  energy   logsumexp of the logits (Liu et al. 2020)
  maha     minus the Mahalanobis distance to the nearest class mean over the feature width,
           shared covariance shrunk by 0.1 towards its mean variance (Lee et al. 2018)
  knn5     cosine similarity to the 5th nearest L2-normalised training feature (Sun et al. 2022)
  mix      lastlayer's score: energy and maha, each standardised on the validation pictures,
           summed
Printed: each score's AUROC (unknown against in-class) and FPR at 95% in-class kept, per pair,
then mean [min, max] over the pairs and in how many pairs it beats msp on each and on both.

    python benches/unknown_scores.py TRAIN_ENTRY TEST_ENTRY   # two cache entries of one model
e.g. after
    lastlayer extract --model efficientnet_lite0 --weights lite0.safetensors --data cifar10 \
        --data-dir ../shared/data/cifar10-sample --precision fp32
"""
import itertools
import sys

import numpy as np
import torch
from safetensors.numpy import load_file

torch.set_num_threads(1)


def load(entry):
    t = load_file(f"{entry}/features.safetensors")
    return t["features"].astype(np.float64), t["labels"]


def auroc(inc, unk):
    # Mann-Whitney U with mid-ranks.
    s = np.r_[inc, unk]
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and sorted_s[j] == sorted_s[i]:
            j += 1
        ranks[order[i:j]] = (i + j + 1) / 2
        i = j
    return (ranks[: len(inc)].sum() - len(inc) * (len(inc) + 1) / 2) / (len(inc) * len(unk))


def fpr95(inc, unk):
    t = np.sort(inc)[int(np.floor(0.05 * len(inc)))]
    return float((unk >= t).mean())


def softmax_head(x, y, c, C=0.05):
    X = torch.tensor(x)
    m, s = X.mean(0), X.std(0) + 1e-6
    X = (X - m) / s
    Y = torch.tensor(y)
    W = torch.zeros(X.shape[1], c, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ W + b, Y) + 0.5 / (C * len(X)) * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: ((torch.tensor(z) - m) / s @ W + b).detach().numpy()


def main():
    xtr, ytr = load(sys.argv[1])
    xte, yte = load(sys.argv[2])
    names = ["msp", "energy", "maha", "knn5", "mix"]
    res = {n: [] for n in names}
    rng = np.random.default_rng(0)
    for held in itertools.combinations(range(10), 2):
        kt, ke = ~np.isin(ytr, held), ~np.isin(yte, held)
        xa, classes = xtr[kt], np.unique(ytr[kt])
        ya = np.searchsorted(classes, ytr[kt])
        val = np.zeros(len(ya), bool)
        for c in range(len(classes)):
            rows = np.flatnonzero(ya == c)
            val[rng.choice(rows, max(1, len(rows) // 10), replace=False)] = True
        xf, yf, xv = xa[~val], ya[~val], xa[val]
        logits = softmax_head(xf, yf, len(classes))
        mu = np.stack([xf[yf == c].mean(0) for c in range(len(classes))])
        centre = xf.mean(0)
        cen = xf - mu[yf]
        cov = cen.T @ cen / len(xf)
        cov = 0.9 * cov + 0.1 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        lam, vec = np.linalg.eigh(cov)
        whiten = vec / np.sqrt(lam)[None]
        nu = (mu - centre) @ whiten

        def parts(x):
            lg = logits(x)
            mx = lg.max(1, keepdims=True)
            p = np.exp(lg - mx)
            energy = np.log(p.sum(1)) + mx[:, 0]
            p /= p.sum(1, keepdims=True)
            z = (x - centre) @ whiten
            maha = -((z[:, None, :] - nu[None]) ** 2).sum(-1).min(1) / x.shape[1]
            return p.max(1), energy, maha

        _, ev, mv = parts(xv)
        msp, energy, maha = parts(xte)
        unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
        s = {
            "msp": msp,
            "energy": energy,
            "maha": maha,
            "knn5": -np.sort(-(unit(xte) @ unit(xf).T), axis=1)[:, 4],
            "mix": (energy - ev.mean()) / ev.std() + (maha - mv.mean()) / mv.std(),
        }
        line = [f"held out {held}:"]
        for n in names:
            r = (auroc(s[n][ke], s[n][~ke]), fpr95(s[n][ke], s[n][~ke]))
            res[n].append(r)
            line.append(f"{n} {r[0]:.3f}/{r[1]:.3f}")
        print(" ".join(line), flush=True)
    base = np.array(res["msp"])
    print(f"AUROC / FPR95 over {len(base)} pairs: mean [min, max]; pairs where the score beats msp")
    for n in names:
        a = np.array(res[n])
        print(
            f"{n:7s} AUROC {a[:, 0].mean():.3f} [{a[:, 0].min():.3f}, {a[:, 0].max():.3f}]  "
            f"FPR95 {a[:, 1].mean():.3f} [{a[:, 1].min():.3f}, {a[:, 1].max():.3f}]  "
            f"beats msp: AUROC {int((a[:, 0] > base[:, 0]).sum())}, FPR95 {int((a[:, 1] < base[:, 1]).sum())}, "
            f"both {int(((a[:, 0] > base[:, 0]) & (a[:, 1] < base[:, 1])).sum())}"
        )


if __name__ == "__main__":
    main()
