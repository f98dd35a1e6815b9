"""Inference of an exported model (`simplecnn export`, the tutorial's SimpleCNN) in ONNX
Runtime on the CPU, timed like crates/bench times ours: the same test images, batches of 1000,
wall time per batch and the process' CPU time. ONNX Runtime does not train: no training fields.
The images are turned to the model's NHWC input before the clock starts."""


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
    inference = common.time_inference(a, lambda x: session.run(None, {name: x}), x_test)
    threads = session.get_session_options().intra_op_num_threads
    version = f"onnxruntime {ort.__version__} (cpu, intra-op threads {threads or 'default'})"
    common.report(a, "onnxruntime", version, [], 0.0, 0.0, inference)


if __name__ == "__main__":
    main()
