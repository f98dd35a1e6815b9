"""The tutorial's SimpleCNN in PyTorch (CPU or CUDA): training steps and inference, timed."""

import common


def main():
    a = common.args()
    import torch
    from torch import nn

    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(0.25), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(128, 10),
    )
    model.to(dev)
    # Keras' Adam defaults.
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    train, test = common.data(a)
    train_step, predict = common.torch_steps(model, opt, loss_fn, dev, autocast=a.autocast)
    version = common.describe(torch, a.device)
    common.run(a, "pytorch" + common.autocast_suffix(a), version, train_step, predict, train, test)


if __name__ == "__main__":
    main()
