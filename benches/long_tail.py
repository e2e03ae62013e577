"""`--class-weight` on a long-tailed CIFAR-10 subset, against scikit-learn on the same features.

From the cached features of a training split, each class c (0..9) keeps round(n0 · 100^(-c/9))
pictures (n0 = the smallest class's size in the file, 200 for ../shared/data's sample), so
class sizes fall geometrically from n0 to n0/100, drawn with `--seed`; the test split stays
balanced. lastlayer's default head (`examples/head_from_features`, the library's `train_head`)
is trained with `--class-weight none` and `balanced`; scikit-learn's `LogisticRegression`
(lbfgs, features standardised) with `class_weight=None` and `"balanced"`, C from
{0.01, 0.03, 0.1, 0.3} chosen on a stratified 80/20 split of the subset (by accuracy without
weights, by balanced accuracy with them), then refit on the whole subset. Prints one JSON line
a head: test accuracy, balanced accuracy, macro F1, seconds, and `tail_accuracy`, the accuracy
a test set in the training subset's class proportions would get (Σ_c share_c · recall_c): the
case where test pictures come as training pictures do.

usage: long_tail.py TRAIN.safetensors TEST.safetensors [--seeds 0,1,2] [--bin PATH]
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

ap = argparse.ArgumentParser()
ap.add_argument("train")
ap.add_argument("test")
ap.add_argument("--seeds", default="0,1,2")
ap.add_argument("--bin", default="target/release/examples/head_from_features")
a = ap.parse_args()
train, test = load_file(a.train), load_file(a.test)
X, y = train["features"], train["labels"]
Xt, yt = test["features"], test["labels"]
k = int(y.max()) + 1
n0 = min(int((y == c).sum()) for c in range(k))
sizes = [max(1, round(n0 * 100 ** (-c / (k - 1)))) for c in range(k)]


def sklearn_head(Xs, ys, weighted):
    t0 = time.time()
    score = balanced_accuracy_score if weighted else accuracy_score
    cw = "balanced" if weighted else None
    Xa, Xv, ya, yv = train_test_split(Xs, ys, test_size=0.2, stratify=ys, random_state=0)
    sc = StandardScaler().fit(Xa)
    best = max(
        ((score(yv, LogisticRegression(C=C, class_weight=cw, max_iter=2000).fit(sc.transform(Xa), ya).predict(sc.transform(Xv))), C) for C in [0.01, 0.03, 0.1, 0.3]),
        key=lambda t: (t[0], -t[1]),
    )
    sc = StandardScaler().fit(Xs)
    clf = LogisticRegression(C=best[1], class_weight=cw, max_iter=2000).fit(sc.transform(Xs), ys)
    pred = clf.predict(sc.transform(Xt))
    recall = [float((pred[yt == c] == c).mean()) for c in range(k)]
    return {"test_recall": recall, "seconds": time.time() - t0, "C": best[1], "test_accuracy": accuracy_score(yt, pred),
            "test_balanced_accuracy": balanced_accuracy_score(yt, pred), "test_macro_f1": f1_score(yt, pred, average="macro")}


with tempfile.TemporaryDirectory() as work:
    for seed in [int(s) for s in a.seeds.split(",")]:
        rng = np.random.default_rng(seed)
        rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), sizes[c], replace=False) for c in range(k)]))
        path = os.path.join(work, f"tail-{seed}.safetensors")
        save_file({"features": np.ascontiguousarray(X[rows]), "labels": np.ascontiguousarray(y[rows])}, path)
        for weight in ["none", "balanced"]:
            ours = json.loads(subprocess.run([a.bin, path, a.test, "--class-weight", weight, "--seed", str(seed)], check=True, capture_output=True, text=True).stdout)
            ours.pop("val_rows")
            theirs = sklearn_head(X[rows], y[rows], weight == "balanced")
            for name, r in [(f"lastlayer --class-weight {weight}", ours), (f"scikit-learn class_weight={weight}", theirs)]:
                r["tail_accuracy"] = float(np.dot(np.array(sizes) / sum(sizes), r["test_recall"]))
                print(json.dumps({"seed": seed, "sizes": sizes, "head": name, **r}), flush=True)
