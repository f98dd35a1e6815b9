"""Keras' own architectures (`keras.applications`) against this workbench, inference only:

    target/reference-venv/keras/bin/python benches/reference/keras_applications.py \
        target/release/simplecnn OUT_DIR [Family ...]

Each architecture is built by Keras with `weights=None, classes=10` at 32x32 (or the smallest
size Keras allows), its BatchNormalization moving statistics set to random values (so
inference-mode normalisation is exercised), saved as `.keras`, and asked for the class
probabilities of 8 random 32x32 PNG images (lossless: both sides read the same pixels,
scaled to [0, 1]). Our `simplecnn predict --json` gives its probabilities for the same files;
the table shows the largest difference and whether the top class agrees, or our error line.
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from PIL import Image

A = keras.applications
FAMILIES = {
    "VGG16": (A.VGG16, 32), "VGG19": (A.VGG19, 32),
    "ResNet50": (A.ResNet50, 32), "ResNet101": (A.ResNet101, 32),
    "ResNet152": (A.ResNet152, 32), "ResNet50V2": (A.ResNet50V2, 32),
    "ResNet101V2": (A.ResNet101V2, 32), "ResNet152V2": (A.ResNet152V2, 32),
    "DenseNet121": (A.DenseNet121, 32), "DenseNet169": (A.DenseNet169, 32),
    "DenseNet201": (A.DenseNet201, 32),
    "MobileNet": (A.MobileNet, 32), "MobileNetV2": (A.MobileNetV2, 32),
    "MobileNetV3Small": (A.MobileNetV3Small, 32), "MobileNetV3Large": (A.MobileNetV3Large, 32),
    "EfficientNetB0": (A.EfficientNetB0, 32), "EfficientNetV2B0": (A.EfficientNetV2B0, 32),
    # Any other name in keras.applications runs at 32x32: EfficientNetB7, EfficientNetV2S, …
    "Xception": (A.Xception, 71), "InceptionV3": (A.InceptionV3, 75),
    "NASNetMobile": (A.NASNetMobile, 32), "ConvNeXtTiny": (A.ConvNeXtTiny, 32),
}


def randomise_batchnorm(model, rng):
    """Random BatchNorm moving statistics; and random LayerNormalization and LayerScale
    factors (ConvNeXt's start at 1e-6, which would make its blocks all but vanish)."""
    for layer in model.layers:
        if type(layer).__name__ in ("LayerScale", "LayerNormalization"):
            layer.set_weights([(rng.uniform(0.5, 1.5, w.shape) if i == 0 else
                                rng.normal(0, 0.1, w.shape)).astype(np.float32)
                               for i, w in enumerate(layer.get_weights())])
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            ws = layer.get_weights()
            *affine, mean, var = ws
            new = [rng.uniform(0.5, 1.5, w.shape) if i == 0 and len(affine) == 2 else
                   rng.normal(0, 0.1, w.shape) for i, w in enumerate(affine)]
            new += [rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)]
            layer.set_weights([w.astype(np.float32) for w in new])


def main(binary, out, names):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for name in names or FAMILIES:
        build, size = FAMILIES.get(name, (getattr(A, name), 32))
        keras.utils.set_random_seed(1)
        kwargs = {"weights": None, "classes": 10, "input_shape": (size, size, 3)}
        if name.startswith(("MobileNetV3", "EfficientNetV2", "ConvNeXt")):
            kwargs["include_preprocessing"] = True
        try:
            m = build(**kwargs)
        except Exception as e:  # noqa: BLE001 - Keras' own refusal is the result
            rows.append((name, 0, f"Keras cannot build it: {e}"))
            print(f"| {name} | - | {rows[-1][2]} |", flush=True)
            continue
        randomise_batchnorm(m, rng)
        path = os.path.join(out, f"{name}.keras")
        m.save(path)
        images = []
        for i in range(8):
            p = os.path.join(out, f"{name}-{i}.png")
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(p)
            images.append(p)
        x = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255.0 for p in images])
        want = m.predict(x, verbose=0)
        run = subprocess.run([binary, "predict", "--model", path, "--json", "--top", "10", *images],
                             capture_output=True, text=True)
        if run.returncode != 0:
            rows.append((name, len(m.layers), "not loaded: " + run.stderr.strip().splitlines()[-1]))
        else:
            got = np.zeros_like(want)
            for r, e in enumerate(json.loads(run.stdout)):
                for t in e["top"]:
                    got[r, t["index"]] = t["probability"]
            diff = float(np.abs(got - want).max())
            agree = float((got.argmax(1) == want.argmax(1)).mean())
            rows.append((name, len(m.layers), f"max |Δp| {diff:.1e}, top-1 agrees {agree:.0%}"))
        print(f"| {rows[-1][0]} | {rows[-1][1]} | {rows[-1][2]} |", flush=True)
        os.remove(path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
