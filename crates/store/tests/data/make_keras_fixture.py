"""Made keras3-simplecnn.h5 and keras3-simplecnn-io.h5 (run once, with Keras 3.15.1 +
tensorflow-cpu 2.21.0; CI does not need Keras): the tutorial's SimpleCNN trained one epoch on
2 000 CIFAR-10 images, saved with model.save(...h5, include_optimizer=False), and Keras' predictions for 20 test images.

    python make_keras_fixture.py cifar-10-batches-bin/test_batch.bin OUTDIR
"""
import sys

import h5py
import keras
import numpy as np
from keras import layers

binf, out = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(1)
m = keras.Sequential([keras.Input((32, 32, 3)),
    layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(), layers.Dropout(0.25),
    layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(), layers.Flatten(), layers.Dropout(0.25),
    layers.Dense(128, activation="relu"), layers.Dropout(0.25), layers.Dense(10, activation="softmax")])
m.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
raw = np.fromfile(binf, dtype=np.uint8).reshape(-1, 3073)
y = raw[:, 0].astype(int)
x = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
m.fit(x[:2000], keras.utils.to_categorical(y[:2000], 10), epochs=1, batch_size=128, verbose=0)
m.save(out + "/keras3-simplecnn.h5", include_optimizer=False)
with h5py.File(out + "/keras3-simplecnn-io.h5", "w") as f:
    f["x"] = x[-20:]
    f["y"] = m.predict(x[-20:], verbose=0)
