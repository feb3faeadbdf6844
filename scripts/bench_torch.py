"""PyTorch peer of `backdoor-audit bench`: the same models and steps (batch 128, 3x32x32, 10 classes) on the
CPU with 2 threads. Prints one JSON line: {model: {trainImagesPerSecond, inferImagesPerSecond}}.
Run with Debian's /usr/bin/python3 (python3-torch)."""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def small_cnn_32():
    layers, c = [], 3
    for v in [32, 32, "M", 64, 64, "M", 128]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


class PreActBlock(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(i)
        self.conv1 = nn.Conv2d(i, o, 3, s, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False)) if s != 1 or i != o else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


def preact_resnet18(w=64):
    blocks, i = [nn.Conv2d(3, w, 3, 1, 1, bias=False)], w
    for m, s in [(1, 1), (2, 2), (4, 2), (8, 2)]:
        blocks += [PreActBlock(i, w * m, s), PreActBlock(w * m, w * m, 1)]
        i = w * m
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(i, 10))


def bench(model, repeats):
    x = torch.rand(128, 3, 32, 32)
    y = torch.arange(128) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model(x)

    out = {}
    for key, f, train in [("trainImagesPerSecond", step, True), ("inferImagesPerSecond", infer, False)]:
        model.train(train)
        f()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        out[key] = 128 / sorted(times)[len(times) // 2]
    return out


print(json.dumps({"small-cnn-32": bench(small_cnn_32(), REPEATS), "preact-resnet18-32": bench(preact_resnet18(), 3)}))
