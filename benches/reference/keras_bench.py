"""The tutorial's SimpleCNN in Keras 3 (TensorFlow CPU): training steps and inference, timed."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402


def main():
    a = common.args()
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(a.seed)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Dropout(0.25),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dropout(0.25),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.25),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy")
    (x_train, y_train), (x_test, y_test) = common.data(a)
    # Keras is channels-last.
    x_train = np.ascontiguousarray(x_train.transpose(0, 2, 3, 1))
    x_test = np.ascontiguousarray(x_test.transpose(0, 2, 3, 1))

    def train_step(x, y):
        return float(model.train_on_batch(x, y))

    def predict(x):
        return model.predict_on_batch(x)

    version = f"keras {keras.__version__}, tensorflow {tf.__version__}"
    common.run(a, "keras", version, train_step, predict, (x_train, y_train), (x_test, y_test))


if __name__ == "__main__":
    main()
