#!/usr/bin/python3
"""PyTorch's fine-tuning epoch on the committed zoo victim with its random draws, for the replay parity test
(test/unit/ft-step-parity.test.ts): the preact8-badnets state_dict, all 500 auxiliary images, one epoch of
BackdoorBench's FT update as the `fast` profile runs it (SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 64
with the last partial batch of 52 kept, BatchNorm in training mode, RandomCrop(28, padding=4)), in float64. The
shuffle and every image's crop offsets are written next to the state_dict, in the order drawn, so that the
engine's `ft` can be fed the same draws (test/helpers/replay_rng.ts): the test then checks what the fixture of
three fixed steps cannot, the batching, the crops and their padding, the partial batch.

    /usr/bin/python3 scripts/zoo/make_ft_stream_fixture.py

Writes test/fixtures/zoo/preact8-badnets/ft-epoch-stream.pt and ft-epoch-stream.json, and prints how far
PyTorch's own float32 run of the same draws is from the float64 one (the test's tolerances rest on it).
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

import zoo_common as Z

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, '..', '..', 'test', 'fixtures', 'zoo', 'preact8-badnets')
BATCH, LR, SEED = 64, 0.01, 0


def draws_for(n):
    """The epoch's shuffle and each batch's crop offsets, drawn as reference_defenses.py draws them."""
    gen = torch.Generator().manual_seed(SEED)
    perm = torch.randperm(n, generator=gen)
    draws = [{'permutation': perm.tolist()}]
    for i in range(0, n, BATCH):
        idx = perm[i:i + BATCH]
        ii = torch.randint(0, 9, (len(idx),), generator=gen)
        jj = torch.randint(0, 9, (len(idx),), generator=gen)
        draws.append({'crops': [[int(a), int(b)] for a, b in zip(ii, jj)]})
    return draws


def crop(x, crops, dtype):
    """Z.random_crop with the offsets given: zero padding of the [0, 1] image, i.e. the normalized 0."""
    h, w = x.shape[2], x.shape[3]
    xp = F.pad(x, (4, 4, 4, 4), value=(0.0 - Z.MEAN) / Z.STD)
    return torch.stack([xp[k, :, i:i + h, j:j + w] for k, (i, j) in enumerate(crops)]).to(dtype)


def epoch(dtype, draws):
    torch.set_num_threads(1)
    model = Z.PreActResNet18(w=8)
    model.load_state_dict(torch.load(os.path.join(DIR, 'victim.pt'), map_location='cpu'))
    model = model.to(dtype)
    x = Z.to_tensor(np.load(os.path.join(DIR, 'aux_x.npy'))).to(dtype)
    y = torch.from_numpy(np.load(os.path.join(DIR, 'aux_y.npy'))).long()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    model.train()
    perm = torch.tensor(draws[0]['permutation'])
    for b, d in enumerate(draws[1:]):
        idx = perm[b * BATCH:(b + 1) * BATCH]
        loss = F.cross_entropy(model(crop(x[idx], d['crops'], dtype)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f'{dtype} batch {b + 1}: {len(idx)} images, loss {loss.item():.6f}')
    return model.state_dict()


def main():
    n = len(np.load(os.path.join(DIR, 'aux_y.npy')))
    draws = draws_for(n)
    victim = torch.load(os.path.join(DIR, 'victim.pt'), map_location='cpu')
    exact = epoch(torch.float64, draws)
    single = epoch(torch.float32, draws)
    errs = []
    for k, v in exact.items():
        if not v.is_floating_point() or 'running' in k:
            continue
        errs.append(float((single[k].double() - v).norm() / (v - victim[k].double()).norm()))
    errs.sort()
    print(f"PyTorch float32 against float64, the same draws: update error median {100 * errs[len(errs) // 2]:.2f}%, "
          f'worst {100 * errs[-1]:.2f}%')
    out = os.path.join(DIR, 'ft-epoch-stream.pt')
    # Stored as float32: the cast moves a weight by 1e-7 of itself, far below these updates.
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in exact.items()}, out)
    with open(os.path.join(DIR, 'ft-epoch-stream.json'), 'w') as f:
        json.dump({'seed': SEED, 'batchSize': BATCH, 'lr': LR, 'cropPadding': 4, 'draws': draws}, f)
    print(f'wrote {out} and ft-epoch-stream.json')


if __name__ == '__main__':
    main()
