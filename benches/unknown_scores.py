"""Which "in-class" score tells pictures of no trained class apart best, on cached features.

For every pair of held-out CIFAR-10 classes (45 pairs): a softmax head is trained on the other 8
classes' training features (scikit-learn logistic regression, C tuned on a validation split as
lastlayer's --weight-decay auto does), and the test pictures of the 8 classes (in-class) and of
the 2 held-out ones (unknown) are scored by
  msp      top softmax probability (Hendrycks & Gimpel 2017), the baseline
  energy   logsumexp of the logits (Liu et al. 2020)
  knn-K    cosine similarity to the K-th nearest L2-normalised training feature (Sun et al. 2022)
  maha     minus the Mahalanobis distance to the nearest class mean, shared covariance with
           shrinkage (Lee et al. 2018)
and each score's AUROC (unknown vs in-class) and FPR at 95% in-class kept are printed, per pair
and as the mean, min and max over the pairs.

    python benches/unknown_scores.py TRAIN_DIR TEST_DIR   # two cache entries (features.safetensors)
"""
import sys, itertools
import numpy as np
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

def load(d):
    t = load_file(f"{d}/features.safetensors")
    return t["features"].astype(np.float64), t["labels"]

def fpr95(inc, unk):
    thr = np.quantile(inc, 0.05)     # keeps 95% of in-class
    return float((unk >= thr).mean())

def auroc(inc, unk):
    return roc_auc_score(np.r_[np.ones(len(inc)), np.zeros(len(unk))], np.r_[inc, unk])

def l2n(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)

def main():
    xtr, ytr = load(sys.argv[1]); xte, yte = load(sys.argv[2])
    ks = [1, 5, 10, 20, 50]
    names = ["msp", "energy"] + [f"knn-{k}" for k in ks] + ["maha"]
    res = {n: [] for n in names}
    rng = np.random.default_rng(0)
    for held in itertools.combinations(range(10), 2):
        keep_tr = ~np.isin(ytr, held); keep_te = ~np.isin(yte, held)
        xa, ya = xtr[keep_tr], ytr[keep_tr]
        sc = StandardScaler().fit(xa)
        # C on a 10% split, then refit on all (as lastlayer does)
        idx = rng.permutation(len(xa)); nv = len(xa) // 10
        best = None
        for C in [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]:
            m = LogisticRegression(C=C, max_iter=300).fit(sc.transform(xa[idx[nv:]]), ya[idx[nv:]])
            p = m.predict_proba(sc.transform(xa[idx[:nv]]))
            loss = -np.log(p[np.arange(nv), np.searchsorted(m.classes_, ya[idx[:nv]])] + 1e-12).mean()
            if best is None or loss < best[0]: best = (loss, C)
        m = LogisticRegression(C=best[1], max_iter=300).fit(sc.transform(xa), ya)
        logits = m.decision_function(sc.transform(xte))
        p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        s = {"msp": p.max(1), "energy": np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)}
        sim = l2n(xte) @ l2n(xa).T
        srt = -np.sort(-sim, axis=1)
        for k in ks: s[f"knn-{k}"] = srt[:, k - 1]
        mu = np.stack([xa[ya == c].mean(0) for c in np.unique(ya)])
        cen = xa - mu[np.searchsorted(np.unique(ya), ya)]
        cov = cen.T @ cen / len(xa); cov = 0.9 * cov + 0.1 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        prec = np.linalg.inv(cov)
        d = np.stack([np.einsum("nd,de,ne->n", xte - m_, prec, xte - m_) for m_ in mu], 1)
        s["maha"] = -d.min(1)
        line = [f"held out {held}: acc {(m.predict(sc.transform(xte[keep_te])) == yte[keep_te]).mean():.3f}"]
        for n in names:
            a, f = auroc(s[n][keep_te], s[n][~keep_te]), fpr95(s[n][keep_te], s[n][~keep_te])
            res[n].append((a, f)); line.append(f"{n} {a:.3f}/{f:.3f}")
        print("  ".join(line), flush=True)
    print("score: AUROC mean [min, max] / FPR95 mean [min, max] over", len(res["msp"]), "pairs")
    for n in names:
        a = np.array(res[n])
        print(f"{n:8s} AUROC {a[:,0].mean():.3f} [{a[:,0].min():.3f}, {a[:,0].max():.3f}]  FPR95 {a[:,1].mean():.3f} [{a[:,1].min():.3f}, {a[:,1].max():.3f}]  beats msp on both in {sum((x[0] > y[0]) and (x[1] < y[1]) for x, y in zip(res[n], res['msp']))} pairs")

if __name__ == "__main__":
    main()
