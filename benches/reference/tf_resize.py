"""Prints what tf.image.resize (bilinear, antialias=False: Keras' image_dataset_from_directory
default) makes of a 3x4 one-channel image with values 0, 10, ..., 110, resized to 2x3 and 5x7.
The numbers are the reference of `resize_matches_tensorflow` in crates/cifar/src/resize.rs.

    target/reference-venv/keras/bin/python benches/reference/tf_resize.py
"""
import numpy as np
import tensorflow as tf

image = (np.arange(12, dtype=np.float32) * 10).reshape(3, 4, 1)
print("tensorflow", tf.__version__)
for size in [(2, 3), (5, 7)]:
    out = tf.image.resize(image, size, method="bilinear", antialias=False).numpy()
    print(size, np.array2string(out[:, :, 0].ravel(), separator=", ", precision=8))
