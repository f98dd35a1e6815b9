"""Prints a .keras file as Python's zipfile and h5py see it, one line per item, sorted:

    entry <name> <compress_type>
    config <layer class> <layer name>
    dataset <path in model.weights.h5> <shape> <dtype>
    attr <group path> name=<value>

so that a file we write can be compared line by line with one Keras wrote.
"""

import io
import json
import sys
import zipfile

import h5py

lines = []
with zipfile.ZipFile(sys.argv[1]) as zf:
    for info in zf.infolist():
        lines.append(f"entry {info.filename} {info.compress_type}")
    config = json.loads(zf.read("config.json"))
    assert config["module"] == "keras" and config["class_name"] == "Sequential", config
    for layer in config["config"]["layers"]:
        assert layer["module"] == "keras.layers", layer
        lines.append(f"config {layer['class_name']} {layer['config']['name']}")
    weights = h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r")

    def visit(path, obj):
        if isinstance(obj, h5py.Dataset):
            lines.append(f"dataset {path} {obj.shape} {obj.dtype}")
        elif "name" in obj.attrs:
            lines.append(f"attr {path} name={obj.attrs['name']}")

    weights.visititems(visit)
print("\n".join(lines))
