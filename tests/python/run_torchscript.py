"""Runs an exported lastlayer classifier with torch.jit.load.

usage: run_torchscript.py MODEL.pt INPUT.safetensors  -> prints the probabilities as JSON, or
{"probabilities", "score"} for a run with an unknown threshold (the module returns a tuple)
"""
import json
import sys

import torch
from safetensors.torch import load_file

model = torch.jit.load(sys.argv[1]).eval()
x = load_file(sys.argv[2])["x"]
with torch.inference_mode():
    out = model(x)
if isinstance(out, tuple):
    probs, score = out
    print(json.dumps({"probabilities": probs.tolist(), "score": score.tolist()}))
else:
    print(json.dumps(out.tolist()))
