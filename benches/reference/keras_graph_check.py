"""Loads model files we wrote in Keras and compares Keras' predictions with the expected ones:

    target/reference-venv/keras/bin/python benches/reference/keras_graph_check.py \
        crates/store/tests/data/graphs/expected.json keras3 ours.keras [ours.h5 ...]

`keras3`/`keras2`/`more3`/`more2`/`nested3` picks the expected predictions (those of the fixture the files came from).
Prints the largest absolute difference per file; exits 1 when one is over 1e-5.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np


def main(expected_path, which, files):
    expected = json.load(open(expected_path))
    inputs = "more_input_nhwc" if which.startswith("more") else "input_nhwc"
    x = np.array(expected[inputs], dtype=np.float32)
    want = np.array(expected[which]["predictions"], dtype=np.float32)
    worst = 0.0
    for f in files:
        m = keras.saving.load_model(f, compile=False)
        got = m.predict(x, verbose=0)
        diff = float(np.abs(got - want).max())
        worst = max(worst, diff)
        print(f"{f}: Keras {keras.__version__} loads it, {len(m.layers)} layers, "
              f"largest difference {diff:.2e}")
    sys.exit(0 if worst < 1e-5 else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
