"""Scores a model file in Keras on the CIFAR-10 test batch: does Keras load what we wrote, and
does it compute what we computed? Prints one JSON line: Keras' version, test loss and accuracy.

    python keras_evaluate.py --model results/airbench94/latest/model.h5 --data data/bin/cifar-10-batches-bin
    python keras_evaluate.py --model cnn_model.h5 --data … --input-scale 255

The loss is the categorical cross-entropy of the softmax of the model's output when its last
layer gives logits (no softmax), as `cargo xtask evaluate` computes it. With `--ours
predictions.csv` (from `simplecnn evaluate --predictions`), also the share of images whose top
class is ours and the largest difference in a class probability.

    simplecnn evaluate --model run/model.keras --data data/bin --predictions /tmp/ours.csv
    python keras_evaluate.py --model run/model.keras --data … --ours /tmp/ours.csv"""

import argparse
import json

import common


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the cifar-10-batches-bin folder")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--input-scale", type=float, default=1.0,
                   help="multiply the [0, 1] pixels by this (255: a model trained on raw pixels)")
    p.add_argument("--ours", help="our per-image probabilities (simplecnn evaluate --predictions)")
    a = p.parse_args()
    import keras
    import numpy as np

    model = keras.models.load_model(a.model, compile=False)
    x, y = common.load(a.data, ["test_batch.bin"])
    x = np.transpose(x, (0, 2, 3, 1)) * a.input_scale  # NHWC, as Keras takes it
    out = np.concatenate([np.asarray(model(x[i:i + a.batch_size], training=False))
                          for i in range(0, len(x), a.batch_size)])
    last = model.layers[-1].get_config().get("activation")
    if last != "softmax":
        out = out - out.max(axis=1, keepdims=True)
        out = np.exp(out) / np.exp(out).sum(axis=1, keepdims=True)
    loss = float(-np.mean(np.log(np.clip(out[np.arange(len(y)), y], 1e-7, 1.0))))
    accuracy = float(np.mean(out.argmax(axis=1) == y))
    report = {"keras": keras.__version__, "backend": keras.backend.backend(),
              "dtype_policy": model.layers[-1].dtype_policy.name,
              "loss": loss, "accuracy": accuracy, "count": len(y)}
    if a.ours:
        ours = np.loadtxt(a.ours, delimiter=",", skiprows=1, ndmin=2)
        if ours.shape != (len(y), 3 + out.shape[1]):
            raise SystemExit(f"{a.ours}: {ours.shape} values, expected {len(y)} rows of "
                             f"index, label, predicted and {out.shape[1]} probabilities")
        if not np.array_equal(ours[:, 1].astype(int), y):
            raise SystemExit(f"{a.ours}: its labels are not the test batch's")
        diff = np.abs(ours[:, 3:] - out)
        report["top1_agreement"] = float(np.mean(ours[:, 2].astype(int) == out.argmax(axis=1)))
        report["max_probability_difference"] = float(diff.max())
        report["mean_probability_difference"] = float(diff.mean())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
