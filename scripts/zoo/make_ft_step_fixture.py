#!/usr/bin/python3
"""PyTorch's fine-tuning steps on the committed zoo victim, for the training-step parity test
(test/unit/ft-step-parity.test.ts): the preact8-badnets state_dict, the first 64 auxiliary images as one batch
(no augmentation), 3 epochs of BackdoorBench's FT update (SGD lr 0.01, momentum 0.9, weight decay 5e-4 on every
parameter, BatchNorm in training mode, CosineAnnealingLR(T_max=3) stepped per epoch), in float64, then the
state_dict as PyTorch leaves it (weights and running statistics). Float64 because these updates are sensitive to
rounding: PyTorch's own float32 run differs from its float64 run by up to 3.4% of an update (median 0.75%), and
its one-thread float32 run from its two-thread one by as much.

    /usr/bin/python3 scripts/zoo/make_ft_step_fixture.py

Writes test/fixtures/zoo/preact8-badnets/ft3-steps.pt.
"""
import math
import os

import torch
import torch.nn.functional as F

import zoo_common as Z

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, '..', '..', 'test', 'fixtures', 'zoo', 'preact8-badnets')
N, EPOCHS, LR = 64, 3, 0.01


def main():
    torch.set_num_threads(1)
    model, x, y = Z.fixture_victim_float64(DIR, N)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    model.train()
    for e in range(EPOCHS):
        for g in opt.param_groups:
            g['lr'] = LR * 0.5 * (1 + math.cos(math.pi * e / EPOCHS))
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        print(f'epoch {e + 1}: loss {loss.item():.6f}')
    Z.save_state_float32(model, os.path.join(DIR, 'ft3-steps.pt'))


if __name__ == '__main__':
    main()
