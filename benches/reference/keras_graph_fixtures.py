"""Writes the functional-model files store's tests read (crates/store/tests/data/graphs/):

    target/reference-venv/keras/bin/python benches/reference/keras_graph_fixtures.py crates/store/tests/data/graphs

One small graph with every joining layer and the graph-era layers the workbench has — a
residual join (Add), a squeeze-and-excite gate (Multiply of a 1x1 image against the
features; in Keras 3's copy with operation nodes, `x + 3.0`, `1.5 - x`, `x / 2`), Concatenate, ZeroPadding2D, ReLU(max_value=6) and the newer activations — with
BatchNormalization's moving statistics set to random values so inference-mode normalisation
is exercised. Saved twice:
- by Keras 3 (`keras`): `keras3.keras` and `keras3.h5` (its legacy writer: Keras 3's node
  serialisation inside an .h5);
- by Keras 2 (`tf_keras`, PyPI's tf-keras): `keras2.h5` (Keras 2's `inbound_nodes` lists).
A second graph (`more3.keras`, `more3.h5`, `more2.h5`) has the layers MobileNet, Xception and
EfficientNet add: Normalization, DepthwiseConv2D, SeparableConv2D, Reshape, pooling with
padding="same", Dropout with noise_shape.
A third (`nested3.keras`, Keras 3 only) nests a Sequential in the model and has ConvNeXt's
LayerScale and StochasticDepth.
`expected.json` holds the input batches and each model's predictions.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def build(k, activations):
    """The same graph with Keras module `k` (keras or tf_keras)."""
    L = k.layers
    inp = k.Input((8, 8, 3))
    stem = L.Conv2D(6, 3, padding="same", name="stem")(inp)
    x = L.BatchNormalization(name="bn1")(stem)
    x = L.ReLU(max_value=6.0, name="relu6")(x)
    x = L.Conv2D(6, 3, padding="same", use_bias=False, name="conv_b")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Add(name="join")([stem, x])
    x = L.Activation("relu", name="post")(x)
    # Squeeze and excite: a (1, 1, C) gate times the features.
    se = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x) if activations else None
    if se is None:
        se = L.AveragePooling2D(8, name="squeeze")(x)
    se = L.Conv2D(6, 1, activation="swish" if activations else "relu", name="se_reduce")(se)
    se = L.Conv2D(6, 1, activation="sigmoid", name="se_expand")(se)
    if activations:
        # Keras 3's operation nodes: arithmetic on a tensor and a number (MobileNetV3's
        # `ReLU(6.0)(x + 3.0) * (1.0 / 6.0)`), and the number first.
        se = L.ReLU(6.0, name="hs_relu")(se + 3.0) * (1.0 / 6.0)
        se = (1.5 - se) / 2.0
    x = L.Multiply(name="excite")([x, se])
    p = L.ZeroPadding2D(((1, 0), (0, 1)), name="pad")(x)
    p = L.Conv2D(4, 2, strides=2, activation="tanh", name="down")(p)
    q = L.MaxPooling2D(2, name="pool")(x)
    q = L.Conv2D(3, 1, activation="hard_silu" if activations else "relu", name="side")(q)
    x = L.Concatenate(name="cat")([p, q])
    x = L.ReLU(negative_slope=0.1, threshold=0.05, name="leaky")(x)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(5, activation="softmax", name="probs")(x)
    m = k.Model(inp, out, name="graph")
    rng = np.random.default_rng(11)
    for layer in m.layers:
        if "bn" in layer.name:
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                    rng.normal(0, 0.2, beta.shape).astype(np.float32),
                    rng.normal(0, 0.5, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 2.0, var.shape).astype(np.float32),
                ]
            )
    return m


def build_more(k):
    """The layers MobileNet, Xception, EfficientNet and ConvNeXt add: Normalization (fixed in
    the config, and with weights), DepthwiseConv2D (multiplier 2, stride 2), SeparableConv2D,
    Reshape both ways, pooling with padding="same", Dropout per example, grouped Conv2D,
    LayerNormalization, Dense on an image, he_normal kernels."""
    L = k.layers
    inp = k.Input((9, 9, 3))
    x = L.Normalization(mean=[0.4, 0.5, 0.6], variance=[0.05, 0.06, 0.07], name="fixed_norm")(inp)
    x = L.Normalization(name="stats_norm")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="dw")(x)
    x = L.BatchNormalization(name="bn_dw")(x)
    x = L.ReLU(6.0, name="relu_dw")(x)
    y = L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2, name="sep",
                          activation="relu")(x)
    y = L.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(y)
    z = L.AveragePooling2D(3, strides=2, padding="same", name="avgpool")(x)
    z = L.Conv2D(5, 1, kernel_initializer="he_normal", name="proj")(z)
    x = L.Add(name="join")([y, z])
    x = L.Dropout(0.3, noise_shape=(None, 1, 1, 1), name="drop_path")(x)
    # ConvNeXt's: a grouped convolution, LayerNormalization, Dense on every pixel.
    x = L.Conv2D(10, 3, padding="same", groups=5, name="grouped")(x)
    x = L.LayerNormalization(epsilon=1e-6, name="ln")(x)
    x = L.Dense(5, activation="gelu", name="pointwise")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Reshape((1, 1, 5), name="to_image")(x)
    x = L.Conv2D(4, 1, name="head")(x)
    x = L.Reshape((4,), name="to_vector")(x)
    out = L.Activation("softmax", name="probs")(x)
    m = k.Model(inp, out, name="more")
    rng = np.random.default_rng(12)
    norm = m.get_layer("stats_norm")
    norm.set_weights([rng.normal(0, 0.5, (3,)).astype(np.float32),
                      rng.uniform(0.5, 2.0, (3,)).astype(np.float32),
                      np.array(100, dtype=np.int64)])
    # Keras 3 computes the statistics it normalises with when the layer is built; weights set
    # afterwards take effect at finalize_state (as loading a file does).
    if hasattr(norm, "finalize_state"):
        norm.finalize_state()
    ln = m.get_layer("ln")
    ln.set_weights([rng.uniform(0.5, 1.5, (10,)).astype(np.float32),
                    rng.normal(0, 0.2, (10,)).astype(np.float32)])
    bn = m.get_layer("bn_dw")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                    rng.normal(0, 0.2, beta.shape).astype(np.float32),
                    rng.normal(0, 0.5, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 2.0, var.shape).astype(np.float32)])
    return m


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(3)
    x = rng.random((4, 8, 8, 3), dtype=np.float32)
    expected = {"input_nhwc": x.tolist()}

    import keras

    keras.utils.set_random_seed(7)
    m3 = build(keras, activations=True)
    m3.save(os.path.join(out, "keras3.keras"))
    m3.save(os.path.join(out, "keras3.h5"))
    expected["keras3"] = {
        "version": keras.__version__,
        "predictions": m3.predict(x, verbose=0).tolist(),
    }
    # ConvNeXt's pieces: a Sequential nested in the model, and its LayerScale.
    from keras.src.applications.convnext import LayerScale, StochasticDepth

    keras.utils.set_random_seed(9)
    inp = keras.Input((8, 8, 3))
    stem = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 2, strides=2, name="stem_conv"),
         keras.layers.LayerNormalization(epsilon=1e-6, name="stem_ln")],
        name="stem",
    )
    y = stem(inp)
    branch = StochasticDepth(0.2, name="drop_path")(LayerScale(0.5, 6, name="scale")(y))
    y = keras.layers.Add(name="res")([y, branch])
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    nested = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(y))
    nested.save(os.path.join(out, "nested3.keras"))
    expected["nested3"] = {"predictions": nested.predict(x, verbose=0).tolist()}

    more_x = rng.random((4, 9, 9, 3), dtype=np.float32)
    expected["more_input_nhwc"] = more_x.tolist()
    keras.utils.set_random_seed(8)
    more3 = build_more(keras)
    more3.save(os.path.join(out, "more3.keras"))
    more3.save(os.path.join(out, "more3.h5"))
    expected["more3"] = {"predictions": more3.predict(more_x, verbose=0).tolist()}

    import tf_keras

    tf_keras.utils.set_random_seed(7)
    # Keras 2.x has no keepdims pooling before 2.6 nor hard_silu: the same graph with an
    # AveragePooling2D squeeze and ReLUs there.
    m2 = build(tf_keras, activations=False)
    m2.save(os.path.join(out, "keras2.h5"))
    expected["keras2"] = {
        "version": tf_keras.__version__,
        "predictions": m2.predict(x, verbose=0).tolist(),
    }
    tf_keras.utils.set_random_seed(8)
    more2 = build_more(tf_keras)
    more2.save(os.path.join(out, "more2.h5"))
    expected["more2"] = {"predictions": more2.predict(more_x, verbose=0).tolist()}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
