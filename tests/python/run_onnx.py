"""Checks an exported lastlayer ONNX model against the spec and runs it with onnxruntime.

usage: run_onnx.py MODEL.onnx INPUT.safetensors  -> prints JSON: the probabilities (and the
second output, the in-class score, when there is one), the output shape onnx's shape inference
gives, and the model's lastlayer metadata
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
outputs = [o.name for o in session.get_outputs()]
got = session.run(outputs, {"image": x})
probs = got[0]
meta = session.get_modelmeta().custom_metadata_map
print(json.dumps({
    "outputs": outputs,
    "score": got[1].astype("float64").tolist() if len(got) > 1 else None,
    "unknown": json.loads(meta["lastlayer.unknown"]) if "lastlayer.unknown" in meta else None,
    "probabilities": probs.astype("float64").tolist(),
    "output_dims": out_dims,
    "classes": json.loads(meta["lastlayer.classes"]),
    "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0],
}))
