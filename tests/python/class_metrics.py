"""scikit-learn's figures for a run's head on cached features, to check `eval`'s.

usage: class_metrics.py FEATURES.safetensors HEAD.safetensors -> prints JSON: accuracy,
balanced accuracy (`balanced_accuracy_score`), macro F1 (`f1_score(average="macro")`), per-class
recall (`recall_score(average=None)`), and the expected calibration error in 15 equal-width
bins of the top probability, computed here with numpy.
"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

data = load_file(sys.argv[1])
head = load_file(sys.argv[2])
x, y = data["features"].astype(np.float64), data["labels"]
logits = x @ head["weight"].astype(np.float64).T + head["bias"].astype(np.float64)
pred = logits.argmax(1)
p = np.exp(logits - logits.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
top = p.max(1)
right = pred == y
bins = np.clip(np.ceil(top * 15).astype(int), 1, 15) - 1
ece = sum(abs(right[bins == b].mean() - top[bins == b].mean()) * (bins == b).sum() for b in range(15) if (bins == b).any()) / len(y)
classes = sorted(set(y.tolist()) | set(pred.tolist()))
print(json.dumps({
    "accuracy": accuracy_score(y, pred),
    "balanced_accuracy": balanced_accuracy_score(y, pred),
    "macro_f1": f1_score(y, pred, average="macro", zero_division=0),
    "recall": dict(zip(map(str, classes), recall_score(y, pred, labels=classes, average=None, zero_division=0).tolist())),
    "ece": float(ece),
}))
