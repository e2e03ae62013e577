"""Reads a lastlayer feature-cache entry the way docs/formats.md tells Python users to.

usage: read_cache.py ENTRY_DIR  -> prints {"rows", "width", "labels_dtype", "first_labels", "sum"} as JSON
"""
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

entry = Path(sys.argv[1])
manifest = json.loads((entry / "manifest.json").read_text())
tensors = load_file(entry / "features.safetensors")
features, labels = tensors["features"], tensors["labels"]
assert features.shape == (manifest["rows"], manifest["feature_width"]), features.shape
print(json.dumps({
    "rows": features.shape[0],
    "width": features.shape[1],
    "labels_dtype": str(labels.dtype),
    "first_labels": labels[:10].tolist(),
    "sum": float(features.double().sum()),
    "classes": manifest["classes"],
}))
