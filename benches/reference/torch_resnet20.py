"""ResNet-20 v1 (option B shortcuts) in PyTorch, timed like crates/bench times
`experiments/resnet20.toml`; the network is in cifar_resnet.py."""

import cifar_resnet

if __name__ == "__main__":
    cifar_resnet.bench("pytorch-resnet20", shortcuts=True)
