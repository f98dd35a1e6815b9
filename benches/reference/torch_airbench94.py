"""airbench94's network and training step in PyTorch (CPU, float32, or bf16 under CPU autocast
with --autocast bfloat16), timed like crates/bench times `experiments/airbench94.toml`: the
same layers, initialisation shapes, loss (label smoothing 0.2, summed over the batch) and SGD
with Nesterov momentum and two parameter groups, at batch 1024. Written from the recipe in
issue 11 (KellerJordan/cifar10-airbench, legacy/airbench94.py, describes it); the whitening
layer keeps PyTorch's default initialisation here, which changes no timing. Augmentation and
lookahead are outside the step on both sides."""

import common

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def main():
    a = common.args()
    import torch
    from torch import nn

    torch.manual_seed(a.seed)
    dev = torch.device(a.device)

    def conv(c_in, c_out, k=3, padding="same", bias=False):
        layer = nn.Conv2d(c_in, c_out, k, padding=padding, bias=bias)
        with torch.no_grad():
            nn.init.dirac_(layer.weight[: min(c_in, c_out)])
        return layer

    def norm(c):
        # Keras' momentum 0.6 is PyTorch's 0.4; no scale (gamma stays 1, untrained).
        bn = nn.BatchNorm2d(c, eps=1e-12, momentum=0.4)
        bn.weight.requires_grad = False
        return bn

    def group(c_in, c_out):
        return [conv(c_in, c_out), nn.MaxPool2d(2), norm(c_out), nn.GELU(),
                conv(c_out, c_out), norm(c_out), nn.GELU()]

    class Normalize(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

        def forward(self, x):
            return (x - self.mean) / self.std

    class Scale(nn.Module):
        def forward(self, x):
            return x / 9.0

    whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    whiten.weight.requires_grad = False
    model = nn.Sequential(
        Normalize(), whiten, nn.GELU(),
        *group(24, 64), *group(64, 256), *group(256, 256),
        nn.MaxPool2d(3), nn.Flatten(), nn.Linear(256, 10, bias=False), Scale(),
    )
    momentum = 0.85
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr = 11.5 / kilostep
    model.to(dev)
    wd = 0.0153 * 1024 / kilostep
    names = dict(model.named_parameters())
    biases = [p for k, p in names.items() if p.requires_grad and isinstance(
        model[int(k.split(".")[0])], nn.BatchNorm2d)]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not b for b in biases)]
    opt = torch.optim.SGD(
        [dict(params=biases, lr=64 * lr, weight_decay=wd / (64 * lr)),
         dict(params=others, lr=lr, weight_decay=wd / lr)],
        momentum=momentum, nesterov=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum")
    train, test = common.data(a)
    # The mean loss per image, as ours reports; the model's output as it is.
    train_step, predict = common.torch_steps(
        model, opt, loss_fn, dev, softmax=False, loss_per_image=True, autocast=a.autocast)
    version = common.describe(torch, a.device)
    name = "pytorch-airbench94" + common.autocast_suffix(a)
    common.run(a, name, version, train_step, predict, train, test)


if __name__ == "__main__":
    main()
