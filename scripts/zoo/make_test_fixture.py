#!/usr/bin/python3
"""Copy the zoo's small victim into test/fixtures/zoo/ for the test suite: the state_dict and auxiliary images as
they are, the first 1,000 clean test images and the triggered copies of those among them whose label is not the
target (made by PyTorch's attack code in train_victims.py), and the victim's metrics on that subset as PyTorch
computes them.

    /usr/bin/python3 scripts/zoo/train_victims.py --only preact8-badnets
    /usr/bin/python3 scripts/zoo/make_test_fixture.py [preact8-badnets | cnn-badnets]

A victim given to the engine as ONNX (cnn-badnets) is copied as victim.onnx, and PyTorch's metrics come from its
state_dict (victim_state.pt), which the export folded.
"""
import os
import shutil
import sys

import numpy as np
import torch

import zoo_common as Z

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = sys.argv[1] if len(sys.argv) > 1 else 'preact8-badnets'
SRC = os.path.join(HERE, '..', '..', 'zoo', NAME)
DST = os.path.join(HERE, '..', '..', 'test', 'fixtures', 'zoo', NAME)
N = 1000

os.makedirs(DST, exist_ok=True)
# A victim given to the engine as ONNX (cnn-badnets) is copied as that file; PyTorch measures its state_dict.
STATE = 'victim_state.pt' if os.path.exists(os.path.join(SRC, 'victim.onnx')) else 'victim.pt'
GIVEN = 'victim.onnx' if STATE == 'victim_state.pt' else 'victim.pt'
for f in [GIVEN, 'aux_x.npy', 'aux_y.npy', 'victim.json']:
    shutil.copyfile(os.path.join(SRC, f), os.path.join(DST, f))
tx, ty = np.load(os.path.join(SRC, 'test_x.npy'))[:N], np.load(os.path.join(SRC, 'test_y.npy'))[:N]
keep = ty != Z.TARGET
# The triggered test set of train_victims.py holds the non-target test images in order: its first keep.sum()
# entries are the triggered copies of this subset.
bx, by = np.load(os.path.join(SRC, 'bd_x.npy'))[:keep.sum()], np.load(os.path.join(SRC, 'bd_y.npy'))[:keep.sum()]
assert (by == ty[keep]).all()
np.save(os.path.join(DST, 'test_x.npy'), tx)
np.save(os.path.join(DST, 'test_y.npy'), ty)
np.save(os.path.join(DST, 'bd_x.npy'), bx)
np.save(os.path.join(DST, 'bd_y.npy'), by)
info = __import__('json').load(open(os.path.join(SRC, 'victim.json')))
model = Z.make_arch(info['arch'], info['width'])
model.load_state_dict(torch.load(os.path.join(SRC, STATE)))
m = Z.evaluate(model, tx, ty, bx, by)
Z.save_json(os.path.join(DST, 'subset-metrics.json'), {'n': int(N), 'triggered': int(keep.sum()), **m})
print(NAME, m)
