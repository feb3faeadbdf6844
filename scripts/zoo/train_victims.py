#!/usr/bin/python3
"""Train the victim zoo: backdoored classifiers made by PyTorch the way BackdoorBench trains them, as the
development data of the defenses (a defense is judged on models we did not train ourselves).

    /usr/bin/python3 scripts/zoo/train_victims.py [--out zoo] [--only NAME] [--epochs E]

Recipe (BackdoorBench's attack recipe): pratio 0.1, target 0, all-to-one; SGD lr 0.01, momentum 0.9, weight
decay 5e-4, cosine schedule, batch 128, random crop with 4 px padding; Fashion-MNIST (Debian's
dataset-fashion-mnist), normalization 0.2860/0.3530 outside the model. A smaller training split than the full
60,000 and fewer epochs keep each victim to minutes on 2 cores.

Per victim NAME the folder OUT/NAME/ holds, as they come out of PyTorch:
  victim.pt         the state_dict (torch.save), or victim.onnx for the ONNX-only architecture
  aux_x.npy/aux_y.npy      500 class-balanced auxiliary images from a held-out split (uint8 N,28,28,1 / int64)
  test_x.npy/test_y.npy    the 10,000 clean test images
  bd_x.npy/bd_y.npy        the triggered test images whose true label is not the target, and their true labels
  trigger.npy       the Blended trigger image (Blended victims)
  victim.json       recipe, split sizes, seconds, and the victim's ACC/ASR/RA
The auxiliary sample and test sets are shared files across victims of the same attack; they are small enough
to keep per victim.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

import zoo_common as Z

VICTIMS = {
    # name: (arch, width, attack, epochs)
    'preact-badnets': ('preactresnet18', 16, 'badnets', 6),
    # The small victim committed for the test suite (fast enough for `npm test`).
    'preact8-badnets': ('preactresnet18', 8, 'badnets', 6),
    'preact8-blended': ('preactresnet18', 8, 'blended', 6),
    'preact8-sig': ('preactresnet18', 8, 'sig', 6),
    'cnn-badnets': ('plaincnn', 16, 'badnets', 6),
}
TRAIN_SIZE, POOL_SIZE, AUX_SIZE = 15000, 5000, 500


def poison(kind, x, y, pratio, rs, trigger):
    """Poisoned training set: round(pratio*N) indices; dirty label from all classes, clean-label SIG from the
    target class only (labels kept)."""
    n = len(x)
    k = int(round(pratio * n))
    if kind == 'sig':
        cand = np.nonzero(y == Z.TARGET)[0]
        idx = rs.choice(cand, min(k, len(cand)), replace=False)
    else:
        idx = rs.choice(n, k, replace=False)
    x, y = x.copy(), y.copy()
    x[idx] = Z.apply_attack(kind, x[idx], trigger)
    if kind != 'sig':
        y[idx] = Z.TARGET
    return x, y, idx


def train(model, x, y, epochs, seed, lr=0.01, batch=128):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    xt, yt = Z.to_tensor(x), torch.from_numpy(y)
    for e in range(epochs):
        for g in opt.param_groups:
            g['lr'] = Z.cosine_lr(lr, e, epochs)
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        tot = 0.0
        for b in range(0, len(xt), batch):
            idx = perm[b:b + batch]
            xb = Z.random_crop(xt[idx], gen)
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        print(f'  epoch {e + 1}/{epochs} loss {tot / len(xt):.4f}', flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'zoo'))
    ap.add_argument('--only', action='append')
    ap.add_argument('--epochs', type=int)
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    (x, y), (px, py), (tx, ty) = Z.fashion_splits(TRAIN_SIZE, POOL_SIZE, seed=0)
    aux_idx = Z.balanced_sample(py, AUX_SIZE, seed=1)
    for name, (arch, w, kind, epochs) in VICTIMS.items():
        if a.only and name not in a.only:
            continue
        epochs = a.epochs or epochs
        out = os.path.join(a.out, name)
        os.makedirs(out, exist_ok=True)
        print(f'{name}: {arch} w{w}, {kind}, {epochs} epochs', flush=True)
        torch.manual_seed(0)
        rs = np.random.RandomState(2)
        trigger = Z.blended_trigger(x.shape[1:], seed=1234) if kind == 'blended' else None
        xp, yp, pidx = poison(kind, x, y, 0.1, rs, trigger)
        model = Z.make_arch(arch, w)
        t0 = Z.now()
        train(model, xp, yp, epochs, seed=0)
        seconds = Z.now() - t0
        keep = ty != Z.TARGET
        bd_x = Z.apply_attack(kind, tx[keep], trigger)
        bd_y = ty[keep]
        m = Z.evaluate(model, tx, ty, bd_x, bd_y)
        print(f'  ACC {m["acc"]:.4f} ASR {m["asr"]:.4f} RA {m["ra"]:.4f} ({seconds:.0f} s)', flush=True)
        model.eval()
        if arch == 'preactresnet18':
            torch.save(model.state_dict(), os.path.join(out, 'victim.pt'))
        else:
            torch.onnx.export(model, torch.zeros(1, 1, 28, 28), os.path.join(out, 'victim.onnx'), opset_version=13,
                              input_names=['input'], output_names=['logits'], dynamic_axes={'input': {0: 'n'}, 'logits': {0: 'n'}})
            torch.save(model.state_dict(), os.path.join(out, 'victim_state.pt'))
        np.save(os.path.join(out, 'aux_x.npy'), px[aux_idx])
        np.save(os.path.join(out, 'aux_y.npy'), py[aux_idx])
        np.save(os.path.join(out, 'test_x.npy'), tx)
        np.save(os.path.join(out, 'test_y.npy'), ty)
        np.save(os.path.join(out, 'bd_x.npy'), bd_x)
        np.save(os.path.join(out, 'bd_y.npy'), bd_y)
        if trigger is not None:
            np.save(os.path.join(out, 'trigger.npy'), trigger)
        Z.save_json(os.path.join(out, 'victim.json'), {
            'name': name, 'arch': arch, 'width': w, 'attack': kind, 'target': Z.TARGET, 'pratio': 0.1,
            'poisoned': int(len(pidx)), 'trainSize': TRAIN_SIZE, 'auxSize': AUX_SIZE, 'epochs': epochs,
            'recipe': 'SGD lr 0.01 momentum 0.9 wd 5e-4 cosine batch 128 random-crop pad 4',
            'normalize': {'mean': [Z.MEAN], 'std': [Z.STD]}, 'inputShape': [28, 28, 1], 'numClasses': 10,
            'seconds': round(seconds, 1), 'metrics': m,
        })


if __name__ == '__main__':
    main()
