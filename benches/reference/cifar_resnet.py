"""He et al.'s CIFAR networks ("Deep Residual Learning", section 4.2) in PyTorch, written as the
paper describes them (not imported from a zoo), as experiments/resnet20.toml and plain20.toml
build them in Keras' terms: a 3x3 convolution with 16 filters, then three stages of n basic
blocks (16, 32, 64 filters; the first block of stages 2 and 3 halves the image with stride 2),
global average pooling and a 10-way Dense; depth 6n + 2. A basic block is conv-BN-ReLU-conv-BN,
plus the shortcut (the identity, or option B's 1x1 stride-2 projection where the shape
changes), then ReLU; the plain network has no shortcuts. Keras' conventions where the two
frameworks differ: he_uniform kernels, zero biases, BatchNorm momentum 0.99 (PyTorch's 0.01)
and epsilon 1e-3.

The recipe of those experiment files: SGD with Nesterov momentum 0.9 and weight decay 5e-4,
label smoothing 0.1, batch 128 (the harness times its steps)."""

import torch
from torch import nn


def he_uniform(layer):
    nn.init.kaiming_uniform_(layer.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return layer


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, shortcut):
        super().__init__()
        self.body = nn.Sequential(
            he_uniform(nn.Conv2d(c_in, c_out, 3, stride, padding=1)), bn(c_out), nn.ReLU(),
            he_uniform(nn.Conv2d(c_out, c_out, 3, 1, padding=1)), bn(c_out))
        self.shortcut = None
        if shortcut:
            self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                             else he_uniform(nn.Conv2d(c_in, c_out, 1, stride)))

    def forward(self, x):
        y = self.body(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return torch.relu(y)


def cifar_net(depth=20, shortcuts=True, classes=10):
    n = (depth - 2) // 6
    layers = [he_uniform(nn.Conv2d(3, 16, 3, padding=1)), bn(16), nn.ReLU()]
    c_in = 16
    for stage, c in enumerate([16, 32, 64]):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(Block(c_in, c, stride, shortcuts))
            c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), he_uniform(nn.Linear(64, classes))]
    return nn.Sequential(*layers)


def bench(framework, shortcuts):
    """The harness's timing of one training step and inference (common.run)."""
    import common

    a = common.args()
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    model = cifar_net(20, shortcuts).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    train, test = common.data(a)
    train_step, predict = common.torch_steps(model, opt, loss_fn, dev, autocast=a.autocast)
    name = framework + common.autocast_suffix(a)
    common.run(a, name, common.describe(torch, a.device), train_step, predict, train, test)
