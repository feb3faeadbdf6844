#!/usr/bin/python3
"""PyTorch's ANP iteration on the committed zoo victim, for the ANP step parity test
(test/unit/anp-step-parity.test.ts): the preact8-badnets state_dict, the first 64 auxiliary images as one batch
(no augmentation), BatchNorm in training mode, per BatchNorm channel a mask drawn in [0.5, 1] and noises on gamma
and beta drawn in [-eps, eps] (eps 0.4, BackdoorBench's), then what one iteration of BackdoorBench's ANP
(defense/anp.py, utils/defense_utils/anp/) computes from there: the signs of the cross-entropy's gradient with
respect to the noises (its ascent step), the natural loss (masks alone) and the robust loss (masks and the noises
after that step), and the masks' gradient of 0.2 * natural + 0.8 * robust. In float64, and the same in float32
to say how far PyTorch's own float32 lands from it (signs that differ; the gradient's relative error with the
float64 signs taken, so that a sign flipped at a gradient of about 0 does not hide the rounding).

    /usr/bin/python3 scripts/zoo/make_anp_step_fixture.py

Writes test/fixtures/zoo/preact8-badnets/anp-step.json.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import zoo_common as Z

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference_defenses as R  # noqa: E402

DIR = os.path.join(HERE, '..', '..', 'test', 'fixtures', 'zoo', 'preact8-badnets')
N, EPS, ALPHA = 64, 0.4, 0.2


def iteration(model, x, y, masks, noise, step_signs=None):
    """One ANP iteration's quantities from the given masks and starting noises; the ascent step takes
    `step_signs` where given (its own signs are returned either way)."""
    nm = R.NeuronMasks(model)
    model.train()
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for t, v in zip(nm.masks, masks):
            t.copy_(torch.from_numpy(v).to(dtype))
        for t, v in zip(nm.noises(), noise):
            t.copy_(torch.from_numpy(v).to(dtype))
    nm.masks = [t.to(dtype).detach().requires_grad_(True) for t in nm.masks]
    nm.noise = [t.to(dtype).detach().requires_grad_(True) for t in nm.noise]
    nm.noise_bias = [t.to(dtype).detach().requires_grad_(True) for t in nm.noise_bias]
    nm.perturbed = True
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), nm.noises())
    signs = [g.sign() for g in grads]
    with torch.no_grad():
        for t, s in zip(nm.noises(), step_signs or signs):
            t.add_(EPS * s.to(t.dtype))
    nm.perturbed = True
    robust = F.cross_entropy(model(x), y)
    nm.perturbed = False
    natural = F.cross_entropy(model(x), y)
    mask_grads = torch.autograd.grad(ALPHA * natural + (1 - ALPHA) * robust, nm.masks)
    return signs, natural.item(), robust.item(), mask_grads


def main():
    torch.set_num_threads(1)
    model64, x64, y = Z.fixture_victim_float64(DIR, N)
    layers = [n for n, m in model64.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    sizes = [m.num_features for m in model64.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    rng = np.random.default_rng(0)
    masks = [rng.uniform(0.5, 1.0, c) for c in sizes]
    noise = [rng.uniform(-EPS, EPS, c) for c in sizes + sizes]  # gamma's noises, then beta's
    signs, natural, robust, mask_grads = iteration(model64, x64, y, masks, noise)
    model32, x32 = Z.fixture_victim_float64(DIR, N)[0].float(), x64.float()
    # float32 on float64's signs: the gradient's rounding alone, not a flipped sign's different noise.
    signs32, natural32, robust32, mask_grads32 = iteration(model32, x32, y, masks, noise, signs)
    flipped = sum(int((a != b.double()).sum()) for a, b in zip(signs, signs32))
    g64 = torch.cat([g.flatten() for g in mask_grads])
    g32 = torch.cat([g.double().flatten() for g in mask_grads32])
    rel = float((g32 - g64).norm() / g64.norm())
    out = {
        'eps': EPS, 'alpha': ALPHA, 'images': N, 'layers': layers,
        'masks': [m.tolist() for m in masks], 'noise': [n.tolist() for n in noise],
        'ascentSigns': [s.tolist() for s in signs], 'natural': natural, 'robust': robust,
        'maskGrads': [g.tolist() for g in mask_grads],
        'float32': {'signsFlipped': flipped, 'maskGradRelErr': rel, 'natural': natural32, 'robust': robust32},
    }
    path = os.path.join(DIR, 'anp-step.json')
    with open(path, 'w') as f:
        json.dump(out, f)
    print(f'natural {natural:.6f} robust {robust:.6f}; float32: {flipped} signs flipped, mask gradient off by {rel:.2e}; wrote {path}')


if __name__ == '__main__':
    main()
