"""Checks an exported lastlayer ONNX model against the spec and runs it with onnxruntime.

usage: run_onnx.py MODEL.onnx INPUT.safetensors  -> prints JSON: the probabilities, the
output shape onnx's shape inference gives, and the model's lastlayer metadata
"""
import json
import sys

import onnx
import onnxruntime
from safetensors.numpy import load_file

model = onnx.load(sys.argv[1])
onnx.checker.check_model(model, full_check=True)
inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
out_dims = [d.dim_param or d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]

session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = load_file(sys.argv[2])["x"]
(probs,) = session.run(["probabilities"], {"image": x})
meta = session.get_modelmeta().custom_metadata_map
print(json.dumps({
    "probabilities": probs.astype("float64").tolist(),
    "output_dims": out_dims,
    "classes": json.loads(meta["lastlayer.classes"]),
    "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0],
}))
