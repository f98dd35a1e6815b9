"""Checks an exported ONNX file with the real `onnx` package and runs it in ONNX Runtime, for the
CLI's tests.

  onnx_check.py MODEL.onnx IMAGE.png …   checker.check_model(full_check=True), then the class
                                         probabilities ONNX Runtime gives each image (pixels
                                         / 255, NHWC), with the file's metadata, as JSON
  onnx_check.py --keras EXPECTED.json INPUT_KEY WRITER MODEL.onnx
                                         the same check, then the largest difference between
                                         ONNX Runtime's output on EXPECTED[INPUT_KEY] and the
                                         predictions Keras made (EXPECTED[WRITER])
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image


def against_keras(expected, input_key, writer, path):
    onnx.checker.check_model(onnx.load(path), full_check=True)
    with open(expected) as f:
        v = json.load(f)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.array(v[input_key], dtype=np.float32)
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    keras = np.array(v[writer]["predictions"], dtype=np.float32)
    print(json.dumps({"max_difference": float(np.abs(y - keras).max())}))


def main():
    if sys.argv[1] == "--keras":
        return against_keras(*sys.argv[2:6])
    path, images = sys.argv[1], sys.argv[2:]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
                  for p in images])
    (probabilities,) = session.run(None, {session.get_inputs()[0].name: x})
    print(json.dumps({
        "probabilities": probabilities.tolist(),
        "metadata": {p.key: p.value for p in model.metadata_props},
        "opset": [o.version for o in model.opset_import],
        "input": [d.dim_param or d.dim_value for d in
                  model.graph.input[0].type.tensor_type.shape.dim],
    }))


if __name__ == "__main__":
    main()
