"""scikit-learn's LogisticRegression (lbfgs) on the same features and the same validation split
as lastlayer's head: C tuned on that split (grid 0.001..10), features standardised as
lastlayer does, then refit on all of train with the chosen C (scaler refit too), the standard
protocol. Prints JSON: seconds (all fits, the refit included), chosen C, the test accuracy of
the refit model and of the model fitted without the validation rows.

usage: head_reference.py TRAIN.safetensors TEST.safetensors VAL_ROWS.json
"""
import json
import sys
import time

import numpy as np
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

train, test = load_file(sys.argv[1]), load_file(sys.argv[2])
val_rows = np.array(json.load(open(sys.argv[3])), dtype=np.int64)
X, y = train["features"], train["labels"]
mask = np.ones(len(y), dtype=bool)
mask[val_rows] = False
t0 = time.time()
scaler = StandardScaler().fit(X[mask])
Xtr, Xva, Xte = scaler.transform(X[mask]), scaler.transform(X[val_rows]), scaler.transform(test["features"])
best = None
for C in [0.001, 0.01, 0.1, 1.0, 10.0]:
    clf = LogisticRegression(C=C, max_iter=1000).fit(Xtr, y[mask])
    acc = clf.score(Xva, y[val_rows])
    if best is None or acc > best[0]:
        best = (acc, C, clf)
no_refit_accuracy = best[2].score(Xte, test["labels"])
scaler_all = StandardScaler().fit(X)
refit = LogisticRegression(C=best[1], max_iter=1000).fit(scaler_all.transform(X), y)
seconds = time.time() - t0
print(json.dumps({
    "seconds": seconds, "C": best[1], "val_accuracy": best[0],
    "test_accuracy": refit.score(scaler_all.transform(test["features"]), test["labels"]),
    "test_accuracy_no_refit": no_refit_accuracy,
}))
