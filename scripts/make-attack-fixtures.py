"""
Fixtures for the user-supplied attacks (test/unit/attacks-user.test.ts): a small PreAct-ResNet18 BadNets victim
trained here in PyTorch on Fashion-MNIST (Debian's dataset-fashion-mnist), poisoned test sets in the layouts users
have (uint8 N,H,W,C with true labels; float N,C,H,W in [0,1] without), trigger files (a patch image, a
BackdoorBench mask image, a Blended trigger image, WaNet grids), the triggered images each trigger gives when
built the way BackdoorBench builds it (its utils/bd_img_transform and attack/wanet.py steps, with PIL and torch
standing in for torchvision), a BackdoorBench attack record in its earlier layout, a hostile record, and the ACC /
ASR / RA PyTorch measures on all of them (expected.json).

Run with Debian's python3-torch: /usr/bin/python3 scripts/make-attack-fixtures.py
"""
import gzip
import importlib.util
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, '..', 'test', 'fixtures', 'attacks')
DATA = '/usr/share/datasets/fashion-mnist'
TARGET = 0
N = 64  # images per poisoned set / trigger form
MEAN, STD = 0.5, 0.5  # BackdoorBench's MNIST normalization (clean_data "mnist")

spec = importlib.util.spec_from_file_location('mf', os.path.join(HERE, 'make-fixtures.py'))
mf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mf)


def idx(name):
    with gzip.open(os.path.join(DATA, name)) as f:
        b = f.read()
    if b[2] == 8 and b[3] == 3:
        n, h, w = np.frombuffer(b[4:16], '>u4')
        return np.frombuffer(b[16:], np.uint8).reshape(n, h, w)
    return np.frombuffer(b[8:], np.uint8).astype(np.int64)


def to_input(u8_nhw):
    x = torch.from_numpy(u8_nhw.astype(np.float32) / 255.0)[:, None]
    return (x - MEAN) / STD


# ---- triggers, as BackdoorBench applies them to 8-bit images ---------------------------------------------

PATCH = np.array([[255, 0, 255, 0], [0, 255, 0, 255], [255, 0, 255, 0], [0, 255, 0, 255]], np.uint8)
PATCH_X, PATCH_Y = 20, 20


def paste_patch(imgs):
    out = imgs.copy()
    out[:, PATCH_Y:PATCH_Y + 4, PATCH_X:PATCH_X + 4] = PATCH
    return out


def mask_trigger(imgs, mask_img):
    """AddMaskPatchTrigger on the mask resized by PIL (BackdoorBench's badnet transform)."""
    t = np.array(mask_img.resize((28, 28), Image.BILINEAR))
    return np.clip(imgs * (t == 0) + t * (t > 0), 0, 255).astype(np.uint8)


def blended_trigger(imgs, trig_img, alpha):
    """blendedImageAttack on the trigger as ToPILImage -> Resize -> ToTensor -> * 255 gives it."""
    t = torch.from_numpy(np.array(trig_img.resize((28, 28), Image.BILINEAR))).float().div(255).numpy() * 255
    return np.stack([np.clip((1 - alpha) * im + alpha * t, 0, 255).astype(np.uint8) for im in imgs])


def sig_trigger(imgs, delta=40, f=6):
    """sigTriggerAttack."""
    out = []
    for im in imgs:
        img = np.float32(im)
        pattern = np.zeros_like(img)
        m = pattern.shape[1]
        for i in range(int(img.shape[0])):
            for j in range(int(img.shape[1])):
                pattern[i, j] = delta * np.sin(2 * np.pi * j * f / m)
        out.append(np.uint8(np.clip(np.uint32(img) + pattern, 0, 255)))
    return np.stack(out)


def wanet_grids(k=4, h=28):
    ins = torch.rand(1, 2, k, k) * 2 - 1
    ins = ins / torch.mean(torch.abs(ins))
    noise_grid = F.upsample(ins, size=h, mode='bicubic', align_corners=True).permute(0, 2, 3, 1)
    array1d = torch.linspace(-1, 1, steps=h)
    x, y = torch.meshgrid(array1d, array1d)
    identity_grid = torch.stack((y, x), 2)[None, ...]
    return identity_grid, noise_grid


def wanet_trigger(imgs, identity_grid, noise_grid, s=0.5, h=28):
    """attack/wanet.py's test-set poisoning: normalized inputs, grid_sample, the denormalizer, ToPILImage."""
    grid = torch.clamp((identity_grid + s * noise_grid / h) * 1, -1, 1)
    x = torch.from_numpy(imgs)[:, None].float().div(255)
    x = (x - torch.tensor([MEAN])[:, None, None]) / torch.tensor([STD])[:, None, None]
    bd = F.grid_sample(x, grid.repeat(len(imgs), 1, 1, 1), align_corners=True)
    bd = (bd - torch.tensor([0.0])[:, None, None]) / torch.tensor([1 / STD])[:, None, None]
    bd = (bd - torch.tensor([-MEAN])[:, None, None]) / torch.tensor([1.0])[:, None, None]
    return bd.mul(255).byte()[:, 0].numpy()


def predict(model, u8):
    with torch.no_grad():
        return model(to_input(u8)).argmax(1).numpy()


def asr_ra(pred, y, with_labels=True):
    if not with_labels:
        return {'asr': float(np.mean(pred == TARGET))}
    keep = y != TARGET
    return {'asr': float(np.mean(pred[keep] == TARGET)), 'ra': float(np.mean(pred[keep] == y[keep]))}


class Evil:
    def __reduce__(self):
        return (os.system, ('echo this should never run',))


def main():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    xtr, ytr = idx('train-images-idx3-ubyte.gz')[:2000].copy(), idx('train-labels-idx1-ubyte.gz')[:2000].copy()
    xte, yte = idx('t10k-images-idx3-ubyte.gz'), idx('t10k-labels-idx1-ubyte.gz')

    # The victim: 10% of the training images pasted with the patch and relabelled to the target.
    poison = np.random.choice(len(xtr), 200, replace=False)
    xtr[poison] = paste_patch(xtr[poison])
    ytr[poison] = TARGET
    model = mf.PreActResNet18(4, 1, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(3):
        model.train()
        perm = np.random.permutation(len(xtr))
        for b in range(0, len(perm), 64):
            i = perm[b:b + 64]
            loss = F.cross_entropy(model(to_input(xtr[i])), torch.from_numpy(ytr[i]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    sd = model.state_dict()
    torch.save(sd, os.path.join(OUT, 'victim.pt'))

    clean_x, clean_y = xte[:200], yte[:200]
    np.save(os.path.join(OUT, 'clean-x.npy'), clean_x[..., None])
    np.save(os.path.join(OUT, 'clean-y.npy'), clean_y)
    px, py = xte[200:200 + N], yte[200:200 + N]
    np.save(os.path.join(OUT, 'plain-x.npy'), px[..., None])
    np.save(os.path.join(OUT, 'plain-y.npy'), py)
    expected = {'acc': float(np.mean(predict(model, clean_x) == clean_y)), 'n': N}

    # Poisoned sets as users have them.
    bd = paste_patch(px)
    np.save(os.path.join(OUT, 'poisoned-u8-nhwc.npy'), bd[..., None])
    np.save(os.path.join(OUT, 'poisoned-labels.npy'), py)
    np.save(os.path.join(OUT, 'poisoned-f32-nchw.npy'), (bd[:, None].astype(np.float32) / 255))
    pred = predict(model, bd)
    expected['poisoned_labels'] = asr_ra(pred, py)
    expected['poisoned_no_labels'] = asr_ra(pred, py, with_labels=False)

    # Trigger files and what BackdoorBench makes of them.
    Image.fromarray(PATCH).save(os.path.join(OUT, 'patch.png'))
    mask = np.zeros((56, 56), np.uint8)
    mask[44:52, 6:14] = 255
    Image.fromarray(mask).save(os.path.join(OUT, 'mask.png'))
    trig = Image.fromarray(np.random.randint(0, 256, (40, 40), dtype=np.uint8))
    trig.save(os.path.join(OUT, 'blend.png'))
    identity_grid, noise_grid = wanet_grids()
    torch.save({'identity_grid': identity_grid, 'noise_grid': noise_grid}, os.path.join(OUT, 'wanet-grids.pt'))
    forms = {
        'badnets_patch': paste_patch(px),
        'badnets_mask': mask_trigger(px, Image.fromarray(mask)),
        'blended': blended_trigger(px, Image.open(os.path.join(OUT, 'blend.png')), 0.2),
        'sig': sig_trigger(px),
        'wanet': wanet_trigger(px, identity_grid, noise_grid),
    }
    for name, imgs in forms.items():
        np.save(os.path.join(OUT, f'expected-{name}.npy'), imgs)
        expected[name] = asr_ra(predict(model, imgs), py)

    # A BackdoorBench record, earlier layout: bd_test of the non-target images, labels = the target.
    keep = py != TARGET
    record = {
        'model_name': 'preactresnet18',
        'num_classes': 10,
        'model': sd,
        'data_path': './data/mnist',
        'img_size': [28, 28, 1],
        'clean_data': 'mnist',
        'bd_train': {
            'x': torch.tensor(xtr[poison[:8]][:, None]).float(),
            'y': torch.tensor(ytr[poison[:8]]).long(),
            'original_index': np.sort(poison)[:8],
        },
        'bd_test': {'x': torch.tensor(bd[keep][:, None]).float(), 'y': torch.full((int(keep.sum()),), TARGET).long()},
    }
    torch.save(record, os.path.join(OUT, 'attack_result.pt'))
    expected['record'] = {'asr': float(np.mean(predict(model, bd[keep]) == TARGET)), 'images': int(keep.sum())}
    record['bd_test'] = {'x': record['bd_test']['x'][:2], 'y': record['bd_test']['y'][:2], 'extra': Evil()}
    torch.save(record, os.path.join(OUT, 'mal-record.pt'))

    with open(os.path.join(OUT, 'expected.json'), 'w') as f:
        json.dump(expected, f, indent=2)
    print(json.dumps(expected, indent=2))


if __name__ == '__main__':
    main()
