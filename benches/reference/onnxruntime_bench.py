"""Inference of an exported model (`simplecnn export`, the tutorial's SimpleCNN) in ONNX
Runtime on the CPU, timed like crates/bench times ours: the same test images, batches of 1000,
wall time per batch and the process' CPU time. ONNX Runtime does not train: no training fields.
The images are turned to the model's NHWC input before the clock starts."""

import json
import time

import common


def main():
    p_args = common.args_parser()
    p_args.add_argument("--model", required=True, help="the .onnx file")
    a = p_args.parse_args()
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x_test, _ = common.load(a.data, ["test_batch.bin"])
    x_test = np.ascontiguousarray(x_test.transpose(0, 2, 3, 1))
    session.run(None, {name: x_test[: a.inference_batch]})  # warm-up
    batch_ms, predicted = [], 0
    cpu_start = common.cpu_seconds()
    while predicted < a.inference_images:
        n = min(a.inference_batch, a.inference_images - predicted)
        idx = (np.arange(n) + predicted) % len(x_test)
        x = x_test[idx]
        start = time.perf_counter()
        session.run(None, {name: x})
        batch_ms.append((time.perf_counter() - start) * 1e3 * a.inference_batch / n)
        predicted += n
    threads = session.get_session_options().intra_op_num_threads
    print(json.dumps({
        "framework": "onnxruntime",
        "version": f"onnxruntime {ort.__version__} (cpu, intra-op threads {threads or 'default'})",
        "raw": {
            "batch_size": a.batch_size,
            "step_ms": [],
            "train_cpu_seconds": 0.0,
            "mean_train_loss": 0.0,
            "inference_batch": a.inference_batch,
            "batch_ms": batch_ms,
            "inference_images": predicted,
            "inference_cpu_seconds": common.cpu_seconds() - cpu_start,
            "peak_rss_mib": common.peak_rss_mib(),
        },
    }))


if __name__ == "__main__":
    main()
