#!/usr/bin/env python3
"""Keras-layout .h5 files written and checked with h5py + numpy alone (no Keras needed).

    keras_h5.py write MODEL.h5 IO.h5 --naming keras2|keras3 --strings fixed|vlen [--bn]
        Writes a small Sequential CNN (with --bn, a BatchNormalization after the first conv) in Keras' legacy layout with seeded random weights, and
        IO.h5 with an input batch x (N, H, W, C) and numpy's forward pass y (N, classes).
    keras_h5.py check MODEL.h5 IO.h5
        Reads a file written by simplecnn-rs: checks the layout (attributes, names, shapes)
        and that numpy's forward pass of its weights on IO.h5's x matches IO.h5's y to 1e-5.
"""
import json
import sys

import h5py
import numpy as np

H, W, C, CLASSES = 8, 8, 3, 5


def relu(x):
    return np.maximum(x, 0)


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def conv_same(x, k, b, stride=1):
    """TensorFlow 'same' padding: extra row/column at the bottom/right."""
    n, h, w, c = x.shape
    kh, kw, _, f = k.shape
    oh, ow = -(-h // stride), -(-w // stride)
    ph = max((oh - 1) * stride + kh - h, 0)
    pw = max((ow - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((n, oh, ow, f), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            out += np.einsum("nhwc,cf->nhwf", patch, k[i, j])
    return out + b


def conv_valid(x, k, b):
    kh, kw = k.shape[:2]
    n, h, w, c = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    out = np.zeros((n, oh, ow, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,cf->nhwf", x[:, i:i + oh, j:j + ow, :], k[i, j])
    return out + b


def maxpool2(x):
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


BN_EPS = 0.001


def forward(x, ws, bn=None):
    """The network below: conv(4, same, relu) → [batchnorm] → maxpool → dropout →
    conv(6, valid, relu) → flatten → dropout → dense(7, relu) → dense(CLASSES, softmax)."""
    x = relu(conv_same(x, *ws[0]))
    if bn is not None:
        gamma, beta, mean, var = bn
        x = (x - mean) / np.sqrt(var + BN_EPS) * gamma + beta
    x = maxpool2(x)
    x = relu(conv_valid(x, *ws[1]))
    x = x.reshape(x.shape[0], -1)  # Keras flattens NHWC
    x = relu(x @ ws[2][0] + ws[2][1])
    return softmax(x @ ws[3][0] + ws[3][1])


def layer_defs(keras3, bn):
    names = (["conv2d", "max_pooling2d", "dropout", "conv2d_1", "flatten", "dropout_1", "dense", "dense_1"]
             if keras3 else
             ["conv2d_1", "max_pooling2d_1", "dropout_1", "conv2d_2", "flatten_1", "dropout_2", "dense_1", "dense_2"])
    dt = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}} if keras3 else "float32"
    cfgs = [
        ("Conv2D", {"filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same",
                    "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "relu", "use_bias": True}),
        ("MaxPooling2D", {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid", "data_format": "channels_last"}),
        ("Dropout", {"rate": 0.25}),
        ("Conv2D", {"filters": 6, "kernel_size": [2, 2], "strides": [1, 1], "padding": "valid",
                    "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "relu", "use_bias": True}),
        ("Flatten", {"data_format": "channels_last"}),
        ("Dropout", {"rate": 0.5}),
        ("Dense", {"units": 7, "activation": "relu", "use_bias": True}),
        ("Dense", {"units": CLASSES, "activation": "softmax", "use_bias": True}),
    ]
    if bn:
        names.insert(1, "batch_normalization" if keras3 else "batch_normalization_1")
        # Keras 2 stored the axis as [3], Keras 3 as -1.
        cfgs.insert(1, ("BatchNormalization", {"axis": -1 if keras3 else [3], "momentum": 0.99,
                                               "epsilon": BN_EPS, "center": True, "scale": True}))
    layers = []
    if keras3:
        layers.append({"module": "keras.layers", "class_name": "InputLayer",
                       "config": {"batch_shape": [None, H, W, C], "dtype": "float32", "name": "input_layer"}})
    for i, (name, (cls, cfg)) in enumerate(zip(names, cfgs)):
        cfg = dict(cfg, name=name, trainable=True, dtype=dt)
        if i == 0 and not keras3:
            cfg["batch_input_shape"] = [None, H, W, C]
        layers.append({"class_name": cls, "config": cfg})
    return names, layers


def strings(values, kind):
    if kind == "fixed":
        return np.array([v.encode() for v in values], dtype="S%d" % max(1, max((len(v) for v in values), default=1)))
    return np.array(values, dtype=h5py.string_dtype("utf-8"))


def write(model_path, io_path, naming, kind, bn):
    keras3 = naming == "keras3"
    rng = np.random.default_rng(12345)
    shapes = [((3, 3, C, 4), 4), ((2, 2, 4, 6), 6), ((3 * 3 * 6, 7), 7), ((7, CLASSES), CLASSES)]
    ws = [(rng.normal(0, 0.5, k).astype(np.float32), rng.normal(0, 0.1, b).astype(np.float32)) for k, b in shapes]
    names, layers = layer_defs(keras3, bn)
    weighted = [n for n in names if n.startswith(("conv2d", "dense"))]
    bn_params = None
    if bn:
        bn_params = [rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.1, 4), rng.normal(0, 0.3, 4), rng.uniform(0.2, 2.0, 4)]
        bn_params = [p.astype(np.float32) for p in bn_params]
    with h5py.File(model_path, "w") as f:
        f.attrs["keras_version"] = "3.15.1" if keras3 else "2.1.6"
        f.attrs["backend"] = "tensorflow"
        model_name = "sequential" if keras3 else "sequential_1"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"name": model_name, "layers": layers}})
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = strings(names, kind)
        for name in names:
            lg = g.create_group(name)
            if name.startswith("batch_normalization"):
                parts = ["gamma", "beta", "moving_mean", "moving_variance"]
                wn = ["%s/%s/%s" % (model_name, name, p) if keras3 else "%s/%s:0" % (name, p) for p in parts]
                lg.attrs["weight_names"] = strings(wn, kind)
                for n, p in zip(wn, bn_params):
                    lg[n] = p
            elif name in weighted:
                k, b = ws[weighted.index(name)]
                if keras3:
                    wn = ["%s/%s/kernel" % (model_name, name), "%s/%s/bias" % (model_name, name)]
                else:
                    wn = ["%s/kernel:0" % name, "%s/bias:0" % name]
                lg.attrs["weight_names"] = strings(wn, kind)
                lg[wn[0]] = k
                lg[wn[1]] = b
            else:
                lg.attrs["weight_names"] = np.array([], dtype=np.float64)  # as Keras writes it
        if keras3:
            g.create_group("top_level_model_weights")
    x = rng.uniform(0, 1, (4, H, W, C)).astype(np.float32)
    y = forward(x.astype(np.float64), [(k.astype(np.float64), b.astype(np.float64)) for k, b in ws],
                None if bn_params is None else [p.astype(np.float64) for p in bn_params])
    with h5py.File(io_path, "w") as f:
        f["x"] = x
        f["y"] = y.astype(np.float32)


def as_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def check(model_path, io_path):
    with h5py.File(model_path, "r") as f:
        for a in ("keras_version", "backend", "model_config", "training_config"):
            assert a in f.attrs, "missing root attribute " + a
        config = json.loads(as_str(f.attrs["model_config"]))
        assert config["class_name"] == "Sequential"
        classes = [l["class_name"] for l in config["config"]["layers"]]
        assert classes[0] == "InputLayer" and classes[1] == "Conv2D", classes
        training = json.loads(as_str(f.attrs["training_config"]))
        assert training["optimizer_config"]["class_name"] == "Adam"
        g = f["model_weights"]
        names = [as_str(n) for n in g.attrs["layer_names"]]
        assert names == [l["config"]["name"] for l in config["config"]["layers"][1:]], names
        ws = []
        for name in names:
            wn = [as_str(n) for n in g[name].attrs["weight_names"]]
            if wn:
                assert wn == ["%s/kernel:0" % name, "%s/bias:0" % name], wn
                ws.append((g[name][wn[0]][()].astype(np.float64), g[name][wn[1]][()].astype(np.float64)))
                assert g[name][wn[0]].dtype == np.float32
        expected = [(3, 3, C, 4), (2, 2, 4, 6), (3 * 3 * 6, 7), (7, CLASSES)]
        assert [k.shape for k, _ in ws] == expected, [k.shape for k, _ in ws]
        if "optimizer_weights" in f:
            o = f["optimizer_weights"]
            onames = [as_str(n) for n in o.attrs["weight_names"]]
            assert onames[0] == "Adam/iter:0"
            for n in onames:
                assert n in o, "missing " + n
    with h5py.File(io_path, "r") as f:
        x, y = f["x"][()].astype(np.float64), f["y"][()]
    got = forward(x, ws)
    err = np.abs(got - y).max()
    assert err < 1e-5, "numpy forward differs by %g" % err
    print("ok: layout and forward pass agree (max difference %.2g)" % err)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], sys.argv[5], sys.argv[7], "--bn" in sys.argv[8:])
    elif sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
