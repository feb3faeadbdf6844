#!/usr/bin/python3
"""PyTorch's training step on the zoo's PreAct-ResNet18, the peer of `scripts/profile-ort-step.ts ... plain`:
SGD (lr 0.01, momentum 0.9, weight decay 5e-4) on cross-entropy, BatchNorm in training mode, random 1x28x28
inputs, a few warm-up steps, then the mean wall time of `runs` steps.

    /usr/bin/python3 scripts/zoo/torch_step.py [--width 16] [--batch 128] [--runs 10] [--threads 2]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_common as Z  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--width', type=int, default=16)
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--runs', type=int, default=10)
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Z.PreActResNet18(w=a.width)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(a.batch, 1, 28, 28)
    y = torch.randint(0, 10, (a.batch,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(a.runs):
        step()
    ms = (time.perf_counter() - t0) / a.runs * 1000
    print(f'PyTorch {torch.__version__} PreActResNet18 w{a.width}, batch {a.batch}, {a.threads} thread{"" if a.threads == 1 else "s"}: {ms:.0f} ms per step')


if __name__ == '__main__':
    main()
