"""Shared pieces of the PyTorch victim zoo and its reference defenses (run with /usr/bin/python3, Debian's
python3-torch): Fashion-MNIST from Debian's dataset-fashion-mnist, the fixed splits, BackdoorBench-style
architectures with BackdoorBench's state_dict names, the attacks, the augmentation and the evaluation.

Everything here is written from BackdoorBench's recipe as described in the project's SPEC (section 3 and 4):
pixels in [0,1] before normalization, triggers applied before augmentation and clipped, random crop with 4 px
padding, Fashion-MNIST normalization 0.2860/0.3530 outside the model (as BackdoorBench's transforms do).
"""
import gzip
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FASHION = '/usr/share/datasets/fashion-mnist'
MEAN, STD = 0.2860, 0.3530
TARGET = 0
NUM_CLASSES = 10


def read_idx(name):
    with gzip.open(os.path.join(FASHION, name), 'rb') as f:
        buf = f.read()
    ndim = buf[3]
    dims = [int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim)]
    return np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_splits(train_size, pool_size, seed=0):
    """Victim training split and a disjoint held-out auxiliary pool from the training file; the test file whole.
    Images are uint8 N x 28 x 28 x 1 (NHWC, as the engine reads .npy)."""
    x = read_idx('train-images-idx3-ubyte.gz')[..., None]
    y = read_idx('train-labels-idx1-ubyte.gz').astype(np.int64)
    perm = np.random.RandomState(seed).permutation(len(x))
    tr, pool = perm[:train_size], perm[train_size:train_size + pool_size]
    xt = read_idx('t10k-images-idx3-ubyte.gz')[..., None]
    yt = read_idx('t10k-labels-idx1-ubyte.gz').astype(np.int64)
    return (x[tr], y[tr]), (x[pool], y[pool]), (xt, yt)


def balanced_sample(y, n, seed):
    """Class-balanced sample of n indices (n / classes per class), seeded."""
    rs = np.random.RandomState(seed)
    per = n // NUM_CLASSES
    out = []
    for c in range(NUM_CLASSES):
        idx = np.nonzero(y == c)[0]
        out.extend(rs.choice(idx, per, replace=False).tolist())
    return np.array(sorted(out))


# ---------------------------------------------------------------- attacks (uint8 NHWC in, uint8 NHWC out)

def badnets(x, size=3):
    """White square of `size` at the bottom-right corner (BackdoorBench's 3x3 patch)."""
    out = x.copy()
    out[:, -size:, -size:, :] = 255
    return out


def blended_trigger(shape, seed=1234):
    """A seeded uniform-noise trigger image (uint8 H x W x C); saved with the victim so the engine can use it."""
    return np.random.RandomState(seed).randint(0, 256, size=shape).astype(np.uint8)


def blended(x, trigger, alpha=0.2):
    out = (1 - alpha) * x.astype(np.float32) + alpha * trigger.astype(np.float32)[None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def sig(x, delta=40.0, f=6):
    w = x.shape[2]
    pattern = delta * np.sin(2 * np.pi * np.arange(w) * f / w).astype(np.float32)
    out = x.astype(np.float32) + pattern[None, None, :, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def apply_attack(kind, x, trigger=None):
    if kind == 'badnets':
        return badnets(x)
    if kind == 'blended':
        return blended(x, trigger)
    if kind == 'sig':
        return sig(x)
    raise ValueError(kind)


# ---------------------------------------------------------------- architectures (BackdoorBench names)

class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, 'shortcut') else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """BackdoorBench's PreActResNet18 (models/preact_resnet.py layout) at width w and c input channels."""

    def __init__(self, num_classes=10, in_channels=1, w=16):
        super().__init__()
        self.in_planes = w
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.layer1 = self._make_layer(w, 1)
        self.layer2 = self._make_layer(2 * w, 2)
        self.layer3 = self._make_layer(4 * w, 2)
        self.layer4 = self._make_layer(8 * w, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(8 * w, num_classes)

    def _make_layer(self, planes, stride):
        layers = []
        for s in [stride, 1]:
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def features(self, x):
        """Stage outputs (NAD's taps: layer3, layer4) and the pooled feature."""
        out = self.conv1(x)
        out = self.layer1(out)
        out = self.layer2(out)
        l3 = self.layer3(out)
        l4 = self.layer4(l3)
        pooled = torch.flatten(self.avgpool(l4), 1)
        return l3, l4, pooled

    def forward(self, x):
        return self.linear(self.features(x)[2])


class PlainCNN(nn.Module):
    """A plain Conv-BN-ReLU stack (the second architecture of the zoo, given to the engine as ONNX)."""

    def __init__(self, num_classes=10, in_channels=1, w=32):
        super().__init__()
        c, layers = in_channels, []
        for v in [w, w, 'M', 2 * w, 2 * w, 'M', 4 * w]:
            if v == 'M':
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features_ = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.linear(torch.flatten(self.pool(self.features_(x)), 1))


def make_arch(name, w):
    if name == 'preactresnet18':
        return PreActResNet18(w=w)
    if name == 'plaincnn':
        return PlainCNN(w=w)
    raise ValueError(name)


# ---------------------------------------------------------------- tensors, augmentation, evaluation

# The float type of the reference's tensors and models: float32, or float64 where reference_defenses.py is asked
# for --float64 (a control for how far float32 rounding alone moves a row).
DTYPE = torch.float32


def to_tensor(x_uint8):
    """uint8 NHWC -> normalized float NCHW."""
    t = torch.from_numpy(x_uint8).to(DTYPE).div_(255.0).permute(0, 3, 1, 2).contiguous()
    return (t - MEAN) / STD


def random_crop(x, gen, padding=4, offsets=False):
    """torchvision RandomCrop(size, padding) per image, on a normalized NCHW batch (zero padding is applied to
    the [0,1] image in torchvision, i.e. before normalization: pad with the normalized value of 0). With
    `offsets`, also each image's row and column offsets into the padded image."""
    n, c, h, w = x.shape
    pad_value = (0.0 - MEAN) / STD
    xp = F.pad(x, (padding, padding, padding, padding), value=pad_value)
    ii = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    jj = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for k in range(n):
        out[k] = xp[k, :, ii[k]:ii[k] + h, jj[k]:jj[k] + w]
    return (out, ii.tolist(), jj.tolist()) if offsets else out


@torch.no_grad()
def predict(model, x_uint8, batch=128):
    """Argmax labels in eval mode. Batches of 128: at 1,000 images a batch the activations are large enough that
    the allocator maps and unmaps them at every layer, and evaluation took 9 times as long (10,000 images of the
    width-16 PreAct-ResNet18, 2 threads: 24.6 s at batch 1000, 2.7 s at 128)."""
    model.eval()
    out = np.empty(len(x_uint8), dtype=np.int64)
    for i in range(0, len(x_uint8), batch):
        out[i:i + batch] = model(to_tensor(x_uint8[i:i + batch])).argmax(1).numpy()
    return out


def accuracy(model, x_uint8, y, batch=128):
    return float((predict(model, x_uint8, batch) == y).sum()) / max(1, len(x_uint8))


def evaluate(model, test_x, test_y, bd_x, bd_y_true):
    """ACC on the clean test set; ASR and RA on the triggered images whose true label is not the target (one
    pass over them gives both)."""
    bd = predict(model, bd_x)
    return {
        'acc': accuracy(model, test_x, test_y),
        'asr': float((bd == TARGET).sum()) / max(1, len(bd_x)),
        'ra': float((bd == bd_y_true).sum()) / max(1, len(bd_x)),
    }


def cosine_lr(base, epoch, epochs):
    """CosineAnnealingLR(T_max=epochs) stepped once per epoch: the rate used during `epoch` (0-based)."""
    return base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def save_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def now():
    return time.perf_counter()


def fixture_victim_float64(fixture_dir, n):
    """A committed width-8 PreAct fixture victim (victim.pt) in float64 with its first n auxiliary images and
    labels, as the step-parity fixtures start (make_ft_step_fixture.py, make_ftsam_step_fixture.py)."""
    model = PreActResNet18(w=8)
    model.load_state_dict(torch.load(os.path.join(fixture_dir, 'victim.pt'), map_location='cpu'))
    x = to_tensor(np.load(os.path.join(fixture_dir, 'aux_x.npy'))[:n]).double()
    y = torch.from_numpy(np.load(os.path.join(fixture_dir, 'aux_y.npy'))[:n]).long()
    return model.double(), x, y


def save_state_float32(model, path):
    """The model's state_dict as float32 (the cast moves a weight by 1e-7 of itself, 1e-5 of a fixture's updates)."""
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    print(f'wrote {path}')
