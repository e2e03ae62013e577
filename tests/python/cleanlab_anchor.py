"""The anchor for `lastlayer review`'s label issues: cleanlab's confident learning on 5-fold
scikit-learn probabilities over the same cached features (the recipe of cleanlab's own
tutorials: a standardised LogisticRegression, cross_val_predict, find_label_issues).

usage: cleanlab_anchor.py FEATURES.safetensors VIEWS RANK_BY
    FEATURES: a lastlayer cache entry's features.safetensors (`features` [N, D], `labels` [N]);
    VIEWS: rows a picture (with --augment, row p*VIEWS is picture p itself);
    RANK_BY: self_confidence or normalized_margin.
prints {"ranked": [picture indices, likeliest label error first], "out_of_fold_accuracy", "seconds"} as JSON
"""
import json
import sys
import time

import numpy as np
from cleanlab.filter import find_label_issues
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

path, views, rank_by = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = load_file(path)
x = t["features"][::views].astype(np.float64)
y = t["labels"][::views].astype(np.int64)
start = time.time()
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
probs = cross_val_predict(model, x, y, cv=folds, method="predict_proba")
ranked = find_label_issues(labels=y, pred_probs=probs, return_indices_ranked_by=rank_by)
print(json.dumps({
    "ranked": [int(i) for i in ranked],
    "out_of_fold_accuracy": float((probs.argmax(axis=1) == y).mean()),
    "seconds": time.time() - start,
}))
