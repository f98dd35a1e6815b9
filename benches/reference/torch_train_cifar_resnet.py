"""The depth chapter's PyTorch reference run: ResNet-20 (or plain-20, `--plain`) trained with
experiments/resnet20.toml's recipe on the same binary CIFAR-10 (data/bin), tested with the same
test-time augmentation, for the accuracy comparison of issue 22. The network is
cifar_resnet.py's; everything else mirrors the workbench:

- all 50 000 training images, reshuffled each epoch; batches of 128, the last one smaller;
- each image flipped with probability 1/2 and shifted by up to 2 pixels in each direction, the
  border filled by reflection (crates/cifar/src/augment.rs);
- SGD, Nesterov momentum 0.9, weight decay 5e-4 (PyTorch's rule), rate 0.1 times a
  piecewise-linear factor over the run's steps, 0.1 -> 1 at 15 % -> 0 (a point's step is
  floor(fraction * total), as crates/train/src/schedule.rs has it); cross-entropy with label
  smoothing 0.1, the batch mean;
- the test: the mean of the logits of the image and its mirror (weight 1/2), and of the
  mirrored pair shifted one pixel down-right and one pixel up-left (1/4 each), as
  crates/train/src/evaluate.rs's `tta_logits`.

It keeps `<out>/last.pt` after every epoch and `--resume` continues from it (a run is about an
hour and a half on the 2-core VM); `<out>/epochs.csv` has a row per epoch and `<out>/test.json`
the result. Usage:

  python torch_train_cifar_resnet.py --data data/bin/cifar-10-batches-bin --seed 0 --out DIR
"""

import argparse
import csv
import json
import os
import resource
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import cifar_resnet
import common


def args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--plain", action="store_true", help="plain-20: no shortcuts")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--subset", type=int, default=0, help="the first N training images (tests)")
    return p.parse_args()


def factor(step, total, points=((0.0, 0.1), (0.15, 1.0), (1.0, 0.0))):
    xs = [np.floor(f * total) for f, _ in points]
    return float(np.interp(step, xs, [y for _, y in points]))


def augment(x, rng):
    """Flips then reflect-padded shifts of a batch (N, 3, 32, 32), per image."""
    n = x.shape[0]
    flip = rng.random(n) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(3)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    out = torch.empty_like(x)
    shifts = rng.integers(-2, 3, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
        out[i] = padded[i, :, 2 + dy:34 + dy, 2 + dx:34 + dx]
    return out


def tta_logits(model, x):
    def mirror(z):
        return 0.5 * (model(z) + model(z.flip(3)))

    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    down_right = padded[:, :, 0:32, 0:32]
    up_left = padded[:, :, 2:34, 2:34]
    return 0.5 * mirror(x) + 0.25 * (mirror(down_right) + mirror(up_left))


def evaluate(model, x, y, tta):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), 500):
            xb, yb = torch.from_numpy(x[i:i + 500]), torch.from_numpy(y[i:i + 500])
            logits = tta_logits(model, xb) if tta else model(xb)
            loss += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    return loss / len(x), correct / len(x)


def main():
    a = args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    (x_train, y_train), (x_test, y_test) = common.data(a)
    if a.subset:
        x_train, y_train = x_train[:a.subset], y_train[:a.subset]
    model = cifar_resnet.cifar_net(20, shortcuts=not a.plain)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    steps_per_epoch = -(-len(x_train) // a.batch_size)
    total = steps_per_epoch * a.epochs
    first, rows = 0, []
    ckpt = os.path.join(a.out, "last.pt")
    if a.resume and os.path.exists(ckpt):
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        first, rows = state["epoch"], state["rows"]
        torch.set_rng_state(state["torch_rng"])
    started = time.time()
    for epoch in range(first, a.epochs):
        t0 = time.time()
        rng = np.random.default_rng([a.seed, epoch])
        order = rng.permutation(len(x_train))
        model.train()
        loss_sum, correct = 0.0, 0
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            for g in opt.param_groups:
                g["lr"] = 0.1 * factor(step, total)
            idx = order[b * a.batch_size:(b + 1) * a.batch_size]
            x = augment(torch.from_numpy(x_train[idx]), rng)
            y = torch.from_numpy(y_train[idx])
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        rows.append({"epoch": epoch + 1, "seconds": time.time() - t0,
                     "loss": loss_sum / len(x_train), "acc": correct / len(x_train),
                     "learning_rate": opt.param_groups[0]["lr"]})
        print(json.dumps(rows[-1]), flush=True)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1,
                    "rows": rows, "torch_rng": torch.get_rng_state()}, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)
    with open(os.path.join(a.out, "epochs.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    loss, acc = evaluate(model, x_test, y_test, tta=True)
    plain_loss, plain_acc = evaluate(model, x_test, y_test, tta=False)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {"network": "plain20" if a.plain else "resnet20", "seed": a.seed,
              "loss": loss, "accuracy": acc, "without_tta": [plain_loss, plain_acc],
              "epochs": a.epochs, "wall_seconds_this_sitting": time.time() - started,
              "cpu_seconds_this_sitting": usage.ru_utime + usage.ru_stime,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    with open(os.path.join(a.out, "test.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
