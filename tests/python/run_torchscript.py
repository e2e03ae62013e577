"""Runs an exported lastlayer classifier with torch.jit.load.

usage: run_torchscript.py MODEL.pt INPUT.safetensors  -> prints the probabilities as JSON
"""
import json
import sys

import torch
from safetensors.torch import load_file

model = torch.jit.load(sys.argv[1]).eval()
x = load_file(sys.argv[2])["x"]
with torch.inference_mode():
    print(json.dumps(model(x).tolist()))
