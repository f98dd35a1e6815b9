"""The plain 20-layer network (ResNet-20 without shortcuts) in PyTorch, timed like
crates/bench times `experiments/plain20.toml`; the network is in cifar_resnet.py."""

import cifar_resnet

if __name__ == "__main__":
    cifar_resnet.bench("pytorch-plain20", shortcuts=False)
