#!/usr/bin/python3
"""PyTorch's FT-SAM steps on the committed zoo victim, for the FT-SAM step parity test
(test/unit/ftsam-step-parity.test.ts): the preact8-badnets state_dict, the first 64 auxiliary images as one batch
(no augmentation), 3 steps of BackdoorBench's FT-SAM (defense/ft-sam.py, utils/defense_utils/sam/: the gradient
g at w of smooth_crossentropy (1 - s on the label, s / (K - 1) elsewhere; s 0.1), the adaptive perturbation
e = rho * w^2 g / (|| |w| g || + 1e-12) over all parameters together (rho 2), the gradient at w + e, w restored,
one SGD step (lr 0.01, momentum 0.9, weight decay 5e-4) with that gradient; BatchNorm in training mode for both
passes, its running statistics moved by the first pass only; CosineAnnealingLR stepped after every batch, here
with T_max 4 so that three steps show it), in float64, then the state_dict as PyTorch leaves it.

    /usr/bin/python3 scripts/zoo/make_ftsam_step_fixture.py

Writes test/fixtures/zoo/preact8-badnets/ftsam3-steps.pt.
"""
import math
import os

import torch
import torch.nn.functional as F

import zoo_common as Z

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, '..', '..', 'test', 'fixtures', 'zoo', 'preact8-badnets')
N, STEPS, LR, RHO, SMOOTHING, T_MAX = 64, 3, 0.01, 2.0, 0.1, 4


def smooth_crossentropy(logits, y, s):
    # The SAM authors' loss as BackdoorBench calls it: KL divergence to the smoothed target, averaged.
    k = logits.shape[1]
    target = torch.full_like(logits, s / (k - 1))
    target.scatter_(1, y.unsqueeze(1), 1.0 - s)
    return F.kl_div(F.log_softmax(logits, 1), target, reduction='none').sum(-1).mean()


def bn_momentum(model, value):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = value


def main():
    torch.set_num_threads(1)
    model, x, y = Z.fixture_victim_float64(DIR, N)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=5e-4)
    model.train()
    for step in range(STEPS):
        for g in opt.param_groups:
            g['lr'] = LR * 0.5 * (1 + math.cos(math.pi * step / T_MAX))
        # 1. the gradient at w; this pass moves the running statistics
        bn_momentum(model, 0.1)
        g1 = torch.autograd.grad(smooth_crossentropy(model(x), y, SMOOTHING), params)
        # 2. the adaptive perturbation
        with torch.no_grad():
            norm = torch.norm(torch.stack([(p.abs() * g).norm(2) for p, g in zip(params, g1)]), 2)
            eps = [RHO * p.pow(2) * g / (norm + 1e-12) for p, g in zip(params, g1)]
            for p, e in zip(params, eps):
                p.add_(e)
        # 3. the gradient at w + e (momentum 0: the statistics stay), w restored, the SGD step
        bn_momentum(model, 0.0)
        opt.zero_grad()
        loss = smooth_crossentropy(model(x), y, SMOOTHING)
        loss.backward()
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        opt.step()
        bn_momentum(model, 0.1)
        print(f'step {step + 1}: lr {opt.param_groups[0]["lr"]:.6f} loss {loss.item():.6f}')
    Z.save_state_float32(model, os.path.join(DIR, 'ftsam3-steps.pt'))


if __name__ == '__main__':
    main()
