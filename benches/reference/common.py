"""What the reference harnesses share with ours (crates/bench): the data, the schedule, the
raw numbers. Each script prints one JSON line with the fields of `RawMeasurement`; the Rust side
derives images/s, CPU-seconds per epoch, etc. from them with a single formula."""

import argparse
import json
import os
import resource
import time

import numpy as np

RECORD = 1 + 3 * 32 * 32


def args():
    return args_parser().parse_args()


def args_parser():
    """The options every harness takes; a script may add its own before parsing."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="the cifar-10-batches-bin folder")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--inference-images", type=int, default=5000)
    p.add_argument("--inference-batch", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="PyTorch's device (cpu, cuda)")
    p.add_argument("--autocast", choices=["bfloat16"], default=None,
                   help="PyTorch: run forward and loss under torch.autocast with this dtype "
                        "(passed when the experiment's policy is mixed_bfloat16)")
    return p


def load(folder, names):
    """(images NCHW float32 in [0, 1], labels) from CIFAR-10 binary batch files."""
    raw = []
    for name in names:
        path = os.path.join(folder, name)
        data = np.fromfile(path, dtype=np.uint8)
        if data.size == 0 or data.size % RECORD:
            raise SystemExit(f"{path}: not a CIFAR-10 batch ({data.size} bytes)")
        raw.append(data.reshape(-1, RECORD))
    raw = np.concatenate(raw)
    labels = raw[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise SystemExit(f"{folder}: label {labels.max()} out of range")
    images = raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return images, labels


def data(a):
    train = load(a.data, [f"data_batch_{i}.bin" for i in range(1, 6)])
    test = load(a.data, ["test_batch.bin"])
    return train, test


def describe(torch, device):
    """The version line: on CUDA also the GPU, cuDNN and whether TF32 may round (PyTorch's
    defaults: on for cuDNN's convolutions, off for matrix products)."""
    if device.startswith("cuda"):
        return (
            f"torch {torch.__version__} (cuda: {torch.cuda.get_device_name()}, cuDNN "
            f"{torch.backends.cudnn.version()}, TF32 convolutions {torch.backends.cudnn.allow_tf32}, "
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32})"
        )
    return f"torch {torch.__version__} ({device}, {torch.get_num_threads()} threads)"


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run(a, framework, version, train_step, predict, train, test):
    """Times `train_step(x, y_onehot) -> loss` and `predict(x)` like crates/bench does."""
    x_train, y_train = train
    x_test, _ = test
    order = np.random.RandomState(a.seed).permutation(len(x_train))
    one_hot = np.eye(10, dtype=np.float32)
    step_ms, losses = [], []
    cpu_start = cpu_seconds()
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            cpu_start = cpu_seconds()
        idx = order[(np.arange(a.batch_size) + step * a.batch_size) % len(order)]
        x, y = x_train[idx], one_hot[y_train[idx]]
        start = time.perf_counter()
        loss = train_step(x, y)
        if step >= a.warmup:
            step_ms.append((time.perf_counter() - start) * 1e3)
            losses.append(loss)
    train_cpu = cpu_seconds() - cpu_start

    report(a, framework, version, step_ms, train_cpu, float(np.mean(losses)),
           time_inference(a, predict, x_test))


def time_inference(a, predict, x_test):
    """`predict(x)` over `a.inference_images` test images in batches, timed as crates/bench
    times ours: (wall ms per batch scaled to a full batch, images, CPU-seconds)."""
    batch_ms, predicted = [], 0
    cpu_start = cpu_seconds()
    while predicted < a.inference_images:
        n = min(a.inference_batch, a.inference_images - predicted)
        idx = (np.arange(n) + predicted) % len(x_test)
        x = x_test[idx]
        start = time.perf_counter()
        predict(x)
        batch_ms.append((time.perf_counter() - start) * 1e3 * a.inference_batch / n)
        predicted += n
    return batch_ms, predicted, cpu_seconds() - cpu_start


def report(a, framework, version, step_ms, train_cpu, mean_loss, inference):
    """Prints the `RawMeasurement` JSON line the Rust side reads."""
    batch_ms, predicted, inference_cpu = inference
    print(json.dumps({
        "framework": framework,
        "version": version,
        "raw": {
            "batch_size": a.batch_size,
            "step_ms": step_ms,
            "train_cpu_seconds": train_cpu,
            "mean_train_loss": mean_loss,
            "inference_batch": a.inference_batch,
            "batch_ms": batch_ms,
            "inference_images": predicted,
            "inference_cpu_seconds": inference_cpu,
            "peak_rss_mib": peak_rss_mib(),
        },
    }))


def autocast_suffix(a):
    """The framework name's suffix for a run under autocast."""
    return f"-autocast-{a.autocast}" if a.autocast else ""


def torch_steps(model, opt, loss_fn, dev, softmax=True, loss_per_image=False, autocast=None):
    """PyTorch's `train_step(x, y_onehot) -> loss` and `predict(x)` for `run`: the loss as the
    loss function gives it (or divided by the batch, for a summed loss), the prediction as
    probabilities (or as the model's output). With `autocast` ("bfloat16"), forward and loss run
    under `torch.autocast(device, dtype)` (PyTorch's mixed precision; weights stay float32)."""
    import contextlib

    import torch

    def mixed():
        if autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=getattr(torch, autocast))

    def train_step(x, y):
        model.train()
        opt.zero_grad(set_to_none=True)
        with mixed():
            loss = loss_fn(model(torch.from_numpy(x).to(dev)), torch.from_numpy(y).to(dev))
        loss.backward()
        opt.step()
        return loss.item() / len(x) if loss_per_image else loss.item()

    def predict(x):
        model.eval()
        with torch.no_grad(), mixed():
            out = model(torch.from_numpy(x).to(dev)).float()
            return (torch.softmax(out, dim=1) if softmax else out).cpu().numpy()

    return train_step, predict
