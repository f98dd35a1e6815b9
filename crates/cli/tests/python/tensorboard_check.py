"""Reads a run's TensorBoard logs with the real `tensorboard` package, for the CLI's tests.

  tensorboard_check.py read LOGS   every scalar, image and histogram tag per run folder, read by
                                   EventAccumulator (which checks each record's CRCs), as JSON
  tensorboard_check.py serve LOGS  the same scalars asked of a TensorBoard server started on the
                                   folder (its HTTP API), as JSON
"""

import json
import sys
import time
import urllib.request


def read(logs):
    from tensorboard.backend.event_processing import event_multiplexer as em
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS, IMAGES, SCALARS, TENSORS)
    from tensorboard.util import tensor_util

    guidance = {TENSORS: 0, SCALARS: 0, IMAGES: 0, HISTOGRAMS: 0}
    mux = em.EventMultiplexer(size_guidance=guidance)
    mux.AddRunsFromDirectory(logs)
    mux.Reload()
    out = {}
    for run in sorted(mux.Runs()):
        acc = mux.GetAccumulator(run)
        tags = acc.Tags()
        found = {"scalars": {}, "images": {}, "histograms": {}}
        for tag in tags["tensors"]:
            plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
            events = acc.Tensors(tag)
            if plugin == "scalars":
                found["scalars"][tag] = [
                    [e.step, float(tensor_util.make_ndarray(e.tensor_proto))] for e in events]
            elif plugin == "images":
                found["images"][tag] = [
                    [e.step, [len(v) for v in e.tensor_proto.string_val]] for e in events]
            elif plugin == "histograms":
                found["histograms"][tag] = [
                    [e.step, float(tensor_util.make_ndarray(e.tensor_proto)[:, 2].sum())]
                    for e in events]
        out[run] = found
    return out


def serve(logs):
    from tensorboard import program

    tb = program.TensorBoard()
    tb.configure(argv=[None, "--logdir", logs, "--host", "127.0.0.1", "--port", "0",
                       "--reload_interval", "1"])
    url = tb.launch().rstrip("/")

    def get(path):
        with urllib.request.urlopen(url + path, timeout=10) as r:
            return json.loads(r.read())

    deadline = time.time() + 60
    while True:
        tags = get("/data/plugin/scalars/tags")
        if tags and all(tags.values()):
            break
        if time.time() > deadline:
            raise SystemExit(f"TensorBoard at {url} listed no scalars in 60 s: {tags}")
        time.sleep(0.5)
    out = {}
    for run, run_tags in tags.items():
        out[run] = {}
        for tag in run_tags:
            q = urllib.parse.urlencode({"run": run, "tag": tag})
            rows = get(f"/data/plugin/scalars/scalars?{q}")
            out[run][tag] = [[step, value] for _, step, value in rows]
    return out


if __name__ == "__main__":
    import urllib.parse
    mode, logs = sys.argv[1], sys.argv[2]
    print(json.dumps({"read": read, "serve": serve}[mode](logs)))
