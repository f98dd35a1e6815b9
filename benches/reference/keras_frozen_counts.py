"""Keras' parameter counts for frozen models, the reference of `frozen_counts_match_keras` in
crates/model/tests/summary.rs:

    target/reference-venv/keras/bin/python benches/reference/keras_frozen_counts.py
"""
import keras
from keras import layers

print("keras", keras.__version__)


def counts(model):
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    frozen = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return trainable + frozen, trainable, frozen


vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
vgg.trainable = False
print("vgg16 include_top=False 32x32, trainable=False:", counts(vgg))

# The tutorial's SimpleCNN with its two convolutions frozen.
cnn = keras.Sequential([
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
for layer in cnn.layers:
    if isinstance(layer, layers.Conv2D):
        layer.trainable = False
print("simple_cnn, convolutions trainable=False:", counts(cnn))
