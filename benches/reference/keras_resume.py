"""Does Keras 3 take up training from a `.keras` file we wrote? Loads it compiled, checks that
every Adam momentum and velocity Keras now holds equals the one our `.h5` of the same run
stores (read with h5py, independently of the `.keras` writer), then trains one epoch on the
first `--images` training images and scores the test batch. Prints one JSON line.

    python keras_resume.py --keras results/baseline/latest/model.keras \
        --h5 results/baseline/latest/model.h5 --data data/bin/cifar-10-batches-bin
"""

import argparse
import json

import common


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--keras", required=True)
    p.add_argument("--h5", required=True)
    p.add_argument("--data", required=True, help="the cifar-10-batches-bin folder")
    p.add_argument("--images", type=int, default=10000)
    a = p.parse_args()
    import h5py
    import keras
    import numpy as np

    model = keras.models.load_model(a.keras)
    opt = model.optimizer
    start = int(opt.iterations.numpy())
    worst = 0.0
    with h5py.File(a.h5, "r") as f:
        adam = f["optimizer_weights/Adam"]
        for i, var in enumerate(model.trainable_variables):
            layer, name = var.path.split("/")[-2:]
            ours_m = adam[f"{layer}/{name}/m:0"][()]
            ours_v = adam[f"{layer}/{name}/v:0"][()]
            m = np.asarray(opt._momentums[i].numpy())
            v = np.asarray(opt._velocities[i].numpy())
            worst = max(worst, float(np.abs(m - ours_m).max()), float(np.abs(v - ours_v).max()))
    x, y = common.load(a.data, ["data_batch_1.bin"])
    x = np.transpose(x, (0, 2, 3, 1))[: a.images]
    y = keras.utils.to_categorical(y[: a.images], 10)
    before = model.evaluate(x, y, batch_size=1000, verbose=0)
    history = model.fit(x, y, batch_size=128, epochs=1, shuffle=False, verbose=0)
    xt, yt = common.load(a.data, ["test_batch.bin"])
    test = model.evaluate(np.transpose(xt, (0, 2, 3, 1)), keras.utils.to_categorical(yt, 10),
                          batch_size=1000, verbose=0)
    print(json.dumps({
        "keras": keras.__version__, "backend": keras.backend.backend(),
        "iterations_loaded": start, "iterations_after": int(opt.iterations.numpy()),
        "learning_rate": float(opt.learning_rate.numpy()),
        "max_slot_difference": worst,
        "train_slice_before": before, "train_loss_one_epoch": history.history["loss"][0],
        "test_after": test,
    }))


if __name__ == "__main__":
    main()
