"""Writes the Keras 3 files store's tests read (crates/store/tests/data/keras3/):

    target/reference-venv/keras/bin/python benches/reference/keras3_fixtures.py crates/store/tests/data/keras3
    target/reference-venv/keras/bin/python benches/reference/keras3_fixtures.py --mixed crates/store/tests/data/keras3

A small Sequential with every layer kind the workbench has, compiled with Adam and trained
for 3 steps on seeded random data (so the optimizer has state), saved as Keras 3 writes it:
`model.keras` (zip), `model.weights.h5` (save_weights), `legacy.h5` (the legacy HDF5
writer, optimizer included), and `expected.json`: the input batch, Keras' predictions on
it, the optimizer's iteration count and learning rate.

With `--mixed`: a small residual graph built under `keras.config.set_dtype_policy(
"mixed_bfloat16")`, trained 3 steps and saved as `mixed_bfloat16.keras`, with
`mixed_bfloat16.json`: an input batch, Keras' logits under the policy (bf16 activations) and
Keras' logits of the same weights in float32.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np


def model():
    keras.utils.set_random_seed(7)
    m = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(2.0, offset=-1.0),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.BatchNormalization(scale=False, momentum=0.6, epsilon=1e-5),
            keras.layers.Activation("gelu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(6, 3, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.AveragePooling2D(1),
            keras.layers.Dropout(0.25),
            keras.layers.Flatten(),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    m.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return m


def main(out):
    os.makedirs(out, exist_ok=True)
    m = model()
    rng = np.random.default_rng(3)
    x = rng.random((16, 8, 8, 3), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 3, 16), 3)
    m.fit(x, y, batch_size=6, epochs=1, verbose=0, shuffle=False)
    m.save(os.path.join(out, "model.keras"))
    m.save_weights(os.path.join(out, "model.weights.h5"))
    m.save(os.path.join(out, "legacy.h5"))
    probe = x[:4]
    expected = {
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "input_nhwc": probe.tolist(),
        "predictions": m.predict(probe, verbose=0).tolist(),
        "iterations": int(m.optimizer.iterations.numpy()),
        "learning_rate": float(m.optimizer.learning_rate.numpy()),
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


def mixed(out):
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(11)

    def build():
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inp)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.Conv2D(32, 3, padding="same")(x)
        x = keras.layers.BatchNormalization()(x)
        short = keras.layers.Conv2D(32, 1)(inp)
        x = keras.layers.Activation("relu")(keras.layers.Add()([x, short]))
        x = keras.layers.Flatten()(x)
        return keras.Model(inp, keras.layers.Dense(3)(x))

    keras.config.set_dtype_policy("mixed_bfloat16")
    m = build()
    m.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01),
              loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(5)
    x = rng.random((16, 8, 8, 3), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 3, 16), 3)
    m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    path = os.path.join(out, "mixed_bfloat16.keras")
    m.save(path)
    probe = x[:4]
    mixed_logits = np.asarray(m(probe, training=False), dtype=np.float32)
    keras.config.set_dtype_policy("float32")
    f32 = build()
    f32.set_weights(m.get_weights())
    expected = {
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "input_nhwc": probe.tolist(),
        "logits_mixed_bfloat16": mixed_logits.tolist(),
        "logits_float32": np.asarray(f32(probe, training=False)).tolist(),
    }
    with open(os.path.join(out, "mixed_bfloat16.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    if sys.argv[1] == "--mixed":
        mixed(sys.argv[2])
    else:
        main(sys.argv[1])
