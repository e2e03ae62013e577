"""scikit-learn's probe with issue 29's protocol, on cached features: `LogisticRegression`
(lbfgs, features standardised), C from {0.01, 0.03, 0.1, 0.3} chosen by accuracy on a
stratified 80/20 split of train (random_state 0), then refit on all of train with that C.
Prints JSON: seconds, chosen C, test accuracy.

usage: head_protocol_reference.py TRAIN.safetensors TEST.safetensors
"""
import json
import sys
import time

from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

train, test = load_file(sys.argv[1]), load_file(sys.argv[2])
X, y = train["features"], train["labels"]
t0 = time.time()
Xa, Xv, ya, yv = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
sc = StandardScaler().fit(Xa)
scores = {C: LogisticRegression(C=C, max_iter=1000).fit(sc.transform(Xa), ya).score(sc.transform(Xv), yv) for C in [0.01, 0.03, 0.1, 0.3]}
C = max(scores, key=lambda c: (scores[c], -c))
sc = StandardScaler().fit(X)
clf = LogisticRegression(C=C, max_iter=1000).fit(sc.transform(X), y)
print(json.dumps({"seconds": time.time() - t0, "C": C, "val_accuracy": scores, "test_accuracy": clf.score(sc.transform(test["features"]), test["labels"])}))
