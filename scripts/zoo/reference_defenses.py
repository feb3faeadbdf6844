#!/usr/bin/python3
"""PyTorch reference of the purification defenses: BackdoorBench's recipes run by PyTorch on the victim zoo's
own auxiliary images, so that the engine's defenses can be compared with PyTorch on the same victim, the same
500 images and the same recipe.

    /usr/bin/python3 scripts/zoo/reference_defenses.py --victim preact-badnets [--victim ...] \
        --defense ft fp nad sau ibau --seeds 0 1 2 [--epochs N] [--out zoo/reference.json]

Each run loads ZOO/NAME/ (train_victims.py's output; --zoo, default zoo/), purifies a fresh copy of the victim with one defense
using only the victim and aux_x/aux_y.npy, then evaluates the model after its last epoch as
zoo_common.evaluate does (ACC on the clean test set, ASR and RA on the triggered non-target test images; the
triggered set is run once for both). No decision
reads the test set: Fine-Pruning's stopping point, which BackdoorBench picks on the test set, is picked on a
seeded class-stratified 10% validation split of the auxiliary set, and ANP's threshold on a 20% one.

Rows `{victim, defense, seed, params, acc, asr, ra, seconds, cpuSeconds, details, victimMetrics}` are merged into
the output JSON array (what scripts/zoo/compare.ts reads) by (victim, defense, seed); the file is replaced
atomically. `params` holds the effective hyperparameters and names the BackdoorBench files they come from;
`seconds` is the defense alone (evaluation excluded), wall clock, and `cpuSeconds` its process CPU time (steadier
than the wall clock on a shared machine). One thread by default (--threads).

Recipes, read from BackdoorBench (SCLBD/BackdoorBench, defense/<name>.py and config/defense/<name>/config.yaml;
written here from that reading, not copied):
  common  data = the auxiliary set; batch 256 (every config), shuffled, last partial batch kept (DataLoader's
          default drop_last=False); RandomCrop(28, padding=4) (zoo_common.random_crop) where BackdoorBench uses
          its train transform (no horizontal flip: it flips CIFAR-10 only); SGD/Adam as its
          argparser_opt_scheduler builds them (Adam with amsgrad=True); LR schedules stepped once per epoch.
  ft      SGD lr 0.01, momentum 0.9, wd 5e-4, CosineAnnealingLR, 100 epochs (here 10 by default), BN in train mode.
  fp      mean of the linear head's input (pooled last-stage feature) over one augmented pass of the aux data, in
          eval mode; mask the least active channels, ceil(1% of them) more per step, while the relative change of
          the (aux-validation) accuracy stays under acc_ratio 0.1; then fine-tune as ft with the mask kept.
  nad     teacher = the victim fine-tuned te_epochs=10 as ft (its cosine has BackdoorBench's T_max=100; the fast
          recipe: 20 epochs on a cosine over them, as ft's fast profile, --nad-teacher-epochs to change); student
          = the victim trained te_epochs=10 (the fast recipe: 20, on a cosine) with CE + 500*AT(layer3) +
          1000*AT(layer4) + 1000*AT(pooled), AT = MSE between attention maps sum_c |f|^p (p=2) divided by their
          spatial L2 norm (+1e-6); SGD lr 0.01 held constant (nad.py's adjust_learning_rate gives 0.01 for every
          epoch < 20), momentum 0.9, wd 5e-4;
          teacher in eval mode; the student's BN running statistics move as nad.py's separate forward per tap
          moves them (--nad-single-bn-update: one update per step).
  sau     Adam lr 1e-4 (amsgrad, wd 0, constant: the scheduler is never stepped), 100 rounds (here 10 by default:
          100 take ~30 min of one core on the width-16 victim), models in eval mode
          (BN frozen; train_mode False), no augmentation (sau.py loads the aux data with the test transform);
          per batch a shared adversarial perturbation in pixel space (PGD L_inf 0.2, init +0.2, 5 signed steps
          of 0.2, beta_1 0.01 * L_adv + beta_2 1 * L_share, stop when every image is shared), then one step on
          lmd_1 * CE(clean) + lmd_2 (0) * CE(adv) + lmd_3 (1) * L_sar.
  ibau    Adam lr 1e-4 (amsgrad, wd 0), 5 rounds, K 5, model in eval mode; per round a universal perturbation
          (normalized space, SGD lr 10, one augmented pass, maximizing CE toward the model's own labels, +0.001
          ||delta||^2), then per batch of a fixed augmented copy of the aux set one Adam step on the implicit
          hypergradient of CE(batch with delta added to 1% of its images) through the inner problem (GD step 0.1
          on batch 0, K fixed-point iterations). --recipe fast: ibau.ts's profile (batch 64, delta on 10% of a
          batch, the L2 ball of 10, two passes over the batches a round).
  anp     every BatchNorm2d gets a mask m (init 1) and noises n_w, n_b: gamma * (m + n_w), beta * (1 + n_b) when
          perturbed. Per iteration, a batch of 256 drawn with replacement from the aux-train split (random crop),
          BN in train mode: noises from U(-eps, eps), eps 0.4, one step of eps * sign(grad CE) (not projected
          back to [-eps, eps]); then one SGD step (lr 0.01, momentum 0.9) of the masks on
          alpha * CE(masked) + (1 - alpha) * CE(masked, perturbed), alpha 0.2, masks clipped to [0, 1]; 2000
          iterations (--anp-fast: 500, batch 64, lr 0.2, the engine's fast profile; --anp-eps: another eps;
          --anp-eps-keep F: eps calibrated as the engine's epsKeep, the largest up to eps whose perturbation keeps
          F of the aux accuracy; --anp-sampling epochs: batches by epochs of a permutation, as the engine draws).
          Then gamma = 0 on the victim for the channels whose mask is <= t, t in 0, 0.05, ..., 0.9:
          BackdoorBench keeps the lowest test ASR within 10% relative test ACC; here, as the engine's anp.ts, the
          largest t whose accuracy on a seeded stratified 20% aux validation split is >= 0.95 x the unpruned one
          (none: nothing pruned).
  ftsam   (defense/ft-sam.py, utils/defense_utils/sam/) adaptive SAM: per step the gradient g at w, e = rho *
          w^2 g / (|| |w| g || + 1e-12) over all parameters, the gradient at w + e, w restored, one SGD step (lr
          0.01, momentum 0.9, wd 5e-4); label smoothing 0.1 (smooth_crossentropy: s / (K - 1) off the label), rho
          2, batch 256, random crop; CosineAnnealingLR(T_max=100) stepped after every batch; BN statistics moved
          by the unperturbed pass only. --recipe fast: ftsam.ts's profile (batch 64, 20 epochs, rho 1, cosine per
          epoch over the run's epochs; the rest BackdoorBench's); --ftsam-mechanics backdoorbench puts the
          per-batch cosine on any recipe, former-engine what ftsam.ts did before (per-epoch cosine, BN statistics
          from the perturbed pass, smoothing s / K).
  npd     (defense/npd.py, model_name convbn) a polarizer, a 1x1 convolution without bias initialized to the identity
          and a BatchNorm2d, in front of layer4.1.conv1 (a forward pre-hook); the backbone frozen in eval mode.
          Warm-up: 5 epochs of plain SGD (lr 1e-4) on the clean CE, the polarizer in train mode; then 50 epochs
          of SGD (lr 0.01, momentum 0.9, wd 5e-4, constant), the polarizer in eval mode, batch 128, no
          augmentation. Per batch a targeted L2 attack toward the most probable wrong class (the true logit set
          to -10): from zero, 2 signed steps of 0.1 on the mean per-image CE (clamped at 80), the perturbation
          projected on the L2 ball of 3.0 and added to the pixels with the sum clipped to [0, 1], stopping once
          more than 60% of the batch is classified as the target; then one step on CE(x, y) + 0.4 CE(x_adv,
          f(x)) + 0.4 NLL(log(1.0001 - p(x_adv)), most likely wrong class) + 0.4 NLL(..., the target).
          --recipe fast: npd.ts's profile (batch 64, 2 warm-up epochs, 20 epochs, the perturbation clipped too).
  fst     (AISafety-HKUST/stable_backdoor_purification fine_tune/ft.py --ft_mode fst, not in BackdoorBench) the
          head re-initialized U(-1/sqrt(in), 1/sqrt(in)), CE + alpha (0.2) * <W, W0>_F, W rescaled to ||W0||_F
          after every step; SGD lr 0.01, momentum 0.9, no weight decay, cosine per epoch, 10 epochs, batch 128.
          --recipe fast: fst.ts's profile (batch 64, 40 epochs, weight decay 5e-4).
"""
import argparse
import contextlib
import copy
import fcntl
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_common as Z  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
BB = 'SCLBD/BackdoorBench'

# BackdoorBench's values (config/defense/<name>/config.yaml; cifar10.yaml is identical for these five).
RECIPES = {
    'ft': {
        'source': f'{BB} defense/ft.py, config/defense/ft/config.yaml',
        'epochs': 10, 'paperEpochs': 100, 'batchSize': 256, 'optimizer': 'sgd', 'lr': 0.01, 'momentum': 0.9,
        'weightDecay': 5e-4, 'schedule': 'cosine', 'augment': 'random-crop-4',
    },
    'fp': {
        'source': f'{BB} defense/fp.py, config/defense/fp/config.yaml',
        'epochs': 10, 'paperEpochs': 100, 'batchSize': 256, 'optimizer': 'sgd', 'lr': 0.01, 'momentum': 0.9,
        'weightDecay': 5e-4, 'schedule': 'cosine', 'augment': 'random-crop-4',
        'accRatio': 0.1, 'oncePruneRatio': 0.01, 'valFraction': 0.1,
        'selectOn': 'aux validation split (BackdoorBench: the clean test set)', 'trainOn': 'aux train split',
    },
    'nad': {
        'source': f'{BB} defense/nad.py, config/defense/nad/config.yaml',
        'epochs': 10, 'paperEpochs': 10, 'batchSize': 256, 'optimizer': 'sgd', 'lr': 0.01, 'momentum': 0.9,
        'weightDecay': 5e-4, 'teacherSchedule': 'cosine', 'teacherCosTMax': 100, 'studentSchedule': 'constant',
        'beta1': 500, 'beta2': 1000, 'beta3': 1000, 'p': 2.0, 'augment': 'random-crop-4',
        'bnUpdatesAsBackdoorBench': True,
    },
    'sau': {
        'source': f'{BB} defense/sau.py, config/defense/sau/config.yaml',
        # 100 rounds (2 batches each here) take ~30 min of one core on the width-16 victim; 10 take ~3.
        'epochs': 10, 'paperEpochs': 100, 'batchSize': 256, 'optimizer': 'adam', 'lr': 1e-4,
        'adamBetas': [0.9, 0.999], 'amsgrad': True, 'weightDecay': 0.0, 'schedule': 'constant', 'augment': 'none',
        'bn': 'frozen (eval mode)', 'normType': 'L_inf', 'triggerNorm': 0.2, 'advLr': 0.2, 'advSteps': 5,
        'pgdInit': 'max', 'beta1': 0.01, 'beta2': 1.0, 'lmd1': 1.0, 'lmd2': 0.0, 'lmd3': 1.0, 'outerSteps': 1,
    },
    'ibau': {
        'source': f'{BB} defense/i-bau.py, config/defense/i-bau/config.yaml',
        'epochs': 5, 'paperEpochs': 5, 'batchSize': 256, 'optimizer': 'adam', 'lr': 1e-4,
        'adamBetas': [0.9, 0.999], 'amsgrad': True, 'weightDecay': 0.0, 'schedule': 'constant',
        'augment': 'random-crop-4', 'bn': 'frozen (eval mode)', 'K': 5, 'innerLr': 0.1, 'pertLr': 10.0,
        'pertReg': 0.001, 'portion': 0.01,
    },
    'anp': {
        'source': f'{BB} defense/anp.py, config/defense/anp/config.yaml, utils/defense_utils/anp/anp_model/anp_batchnorm.py',
        # nb_iter batches of batch_size drawn with replacement (RandomSampler(replacement=True)), augmented.
        'iterations': 2000, 'paperIterations': 2000, 'batchSize': 256, 'lr': 0.01, 'momentum': 0.9, 'eps': 0.4,
        'anpSteps': 1, 'alpha': 0.2, 'augment': 'random-crop-4', 'sampling': 'with replacement',
        'bn': 'train mode (batch statistics) while the masks learn', 'noiseClip': None,
        'maxThreshold': 0.9, 'thresholdStep': 0.05, 'accRatio': 0.95, 'valFraction': 0.2,
        # the diagnosis curves (details.thresholdCurve, countCurve) use the first 2000 clean and 2000 triggered
        # test images; the row's acc/asr/ra use them all.
        'curveTestImages': 2000,
        'selectOn': 'aux validation split: the largest threshold keeping val acc >= accRatio x unpruned '
                    '(BackdoorBench: the lowest test ASR within 10% relative test ACC)',
        'trainOn': 'aux train split',
    },
    'ftsam': {
        'source': f'{BB} defense/ft-sam.py, config/defense/ft-sam/config.yaml, utils/defense_utils/sam/sam.py, util.py',
        'epochs': 10, 'paperEpochs': 100, 'batchSize': 256, 'optimizer': 'sgd', 'lr': 0.01, 'momentum': 0.9,
        'weightDecay': 5e-4, 'augment': 'random-crop-4', 'rho': 2.0, 'adaptive': True, 'perturbEps': 1e-12,
        'labelSmoothing': 0.1,
        # smooth_crossentropy: 1 - s on the label, s / (K - 1) on the others (the engine: (1 - s) + s / K, s / K).
        'smoothingStyle': 'backdoorbench',
        # CosineAnnealingLR(T_max=100) stepped after every batch (ft-sam.py's _train_sam), not every epoch.
        'schedule': 'cosine-per-batch', 'cosTMaxSteps': 100,
        # SAM.step: the first (unperturbed) pass moves the BN running statistics, the perturbed one does not.
        'bnUpdate': 'first-pass',
    },
    'npd': {
        'source': f'{BB} defense/npd.py, config/defense/npd/config.yaml',
        'epochs': 50, 'paperEpochs': 50, 'warmupEpochs': 5, 'warmupLr': 1e-4, 'batchSize': 128, 'lr': 0.01,
        'momentum': 0.9, 'weightDecay': 5e-4, 'schedule': 'constant', 'augment': 'none',
        'polarizer': 'convbn (1x1 conv without bias, identity init, + BatchNorm2d)', 'targetLayer': 'layer4.1.conv1',
        'normType': 'L2', 'triggerNorm': 3.0, 'advLr': 0.1, 'innerSteps': 2, 'stopRate': 0.6, 'lossCap': 80,
        'attackClip': 'image', 'lmd1': 1.0, 'lmd2': 0.4, 'lmd3': 0.4, 'lmd4': 0.4,
    },
    'fst': {
        'source': 'AISafety-HKUST/stable_backdoor_purification fine_tune/ft.py (--ft_mode fst), README',
        'epochs': 10, 'paperEpochs': 10, 'batchSize': 128, 'optimizer': 'sgd', 'lr': 0.01, 'momentum': 0.9,
        # ft.py builds optim.SGD(lr, momentum=0.9) with no weight decay (the engine's fst.ts: 5e-4).
        'weightDecay': 0.0, 'schedule': 'cosine', 'augment': 'random-crop-4', 'alpha': 0.2,
        'headInit': 'U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, from the run seed',
        'headRenorm': 'after every step, W *= ||W0||_F / ||W||_F',
    },
}


# ---------------------------------------------------------------- data and helpers

class Victim:
    def __init__(self, zoo, name):
        d = os.path.join(zoo, name)
        with open(os.path.join(d, 'victim.json')) as f:
            self.meta = json.load(f)
        self.name = name
        self.arch = self.meta['arch']
        self.width = self.meta['width']
        state_path = os.path.join(d, 'victim.pt')
        if not os.path.exists(state_path):
            state_path = os.path.join(d, 'victim_state.pt')
        self.state = torch.load(state_path, map_location='cpu')
        self.aux_x = np.load(os.path.join(d, 'aux_x.npy'))
        self.aux_y = np.load(os.path.join(d, 'aux_y.npy')).astype(np.int64)
        self.test_x = np.load(os.path.join(d, 'test_x.npy'))
        self.test_y = np.load(os.path.join(d, 'test_y.npy')).astype(np.int64)
        self.bd_x = np.load(os.path.join(d, 'bd_x.npy'))
        self.bd_y = np.load(os.path.join(d, 'bd_y.npy')).astype(np.int64)

    def model(self):
        m = Z.make_arch(self.arch, self.width)
        m.load_state_dict(self.state)
        return m.to(Z.DTYPE)


# The random draws of the run in progress, in the order they were made, when --record-stream asks for them:
# each epoch's permutation and each augmented image's crop offsets (row, column into the padded image), for
# scripts/zoo/replay-stream.ts to feed to the engine's defense so that both sides see the same batches and crops.
STREAM = None


def batches(n, size, gen):
    """One shuffled epoch of index batches, the last one partial (DataLoader(shuffle=True, drop_last=False))."""
    perm = torch.randperm(n, generator=gen)
    if STREAM is not None:
        STREAM.append({'permutation': perm.tolist()})
    return [perm[i:i + size] for i in range(0, n, size)]


def random_crop(x, gen):
    """zoo_common.random_crop, its offsets recorded where --record-stream asks for them."""
    out, ii, jj = Z.random_crop(x, gen, offsets=True)
    if STREAM is not None:
        STREAM.append({'crops': [[int(i), int(j)] for i, j in zip(ii, jj)]})
    return out


def sgd(model, r):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=r['lr'], momentum=r['momentum'],
                           weight_decay=r['weightDecay'])


def adam(model, r):
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=r['lr'], betas=tuple(r['adamBetas']),
                            weight_decay=r['weightDecay'], amsgrad=r['amsgrad'])


def set_lr(opt, lr):
    for g in opt.param_groups:
        g['lr'] = lr


def finite(loss, what):
    if not torch.isfinite(loss):
        raise FloatingPointError(f'{what}: loss is not finite')


def train_ce(model, x, y, r, epochs, tmax, gen, after_step=None, log=None):
    """BackdoorBench's PureCleanModelTrainer loop: CE, BN in train mode, augmented shuffled batches, the
    CosineAnnealingLR(T_max=tmax) rate stepped per epoch (tmax=None: constant rate)."""
    opt = sgd(model, r)
    for e in range(epochs):
        set_lr(opt, r['lr'] if tmax is None else Z.cosine_lr(r['lr'], e, tmax))
        model.train()
        tot = 0.0
        for idx in batches(len(x), r['batchSize'], gen):
            xb = random_crop(x[idx], gen)
            loss = F.cross_entropy(model(xb), y[idx])
            finite(loss, 'fine-tuning')
            opt.zero_grad()
            loss.backward()
            opt.step()
            if after_step:
                after_step()
            tot += loss.item() * len(idx)
        if log:
            log(f'    epoch {e + 1}/{epochs} lr {opt.param_groups[0]["lr"]:.5f} loss {tot / len(x):.4f}')


def stratified_split(y, frac, seed):
    """Seeded class-stratified split: (train indices, validation indices), round(frac * class size) per class."""
    rs = np.random.RandomState(seed)
    tr, va = [], []
    for c in np.unique(y):
        idx = np.nonzero(y == c)[0]
        rs.shuffle(idx)
        k = int(round(len(idx) * frac))
        va.extend(idx[:k].tolist())
        tr.extend(idx[k:].tolist())
    return np.array(sorted(tr)), np.array(sorted(va))


predict = Z.predict


def evaluate(model, v):
    """zoo_common.evaluate's ACC/ASR/RA (same tensors, same definitions), with the triggered set run once."""
    pred_bd = predict(model, v.bd_x)
    return {'acc': float((predict(model, v.test_x) == v.test_y).mean()),
            'asr': float((pred_bd == Z.TARGET).mean()), 'ra': float((pred_bd == v.bd_y).mean())}


@torch.no_grad()
def acc_tensor(model, x, y):
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


# ---------------------------------------------------------------- defenses

def run_ft(model, v, r, a, gen, log):
    x, y = Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
    train_ce(model, x, y, r, r['epochs'], r['cosTMax'], gen, log=log)
    return model, {}


def run_fp(model, v, r, a, gen, log):
    # Two things in BackdoorBench's fp.py are read as slips, not recipe: it masks seq_sort[0:num_pruned - 1] (one
    # channel fewer than counted), and its `last_net` is the same object as the network being pruned, so the model
    # it fine-tunes carries the first mask that failed the accuracy test. Here the last mask that passed is kept.
    tr, va = stratified_split(v.aux_y, r['valFraction'], a.seed)
    x_all, y_all = Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
    xt, yt = x_all[tr], y_all[tr]
    xv, yv = x_all[va], y_all[va]
    head = model.linear
    # Mean activation of the head's input over one augmented pass of the (aux-train) data, eval mode.
    feats = {}
    hook = head.register_forward_hook(lambda m, inp, out: feats.__setitem__('x', inp[0].detach()))
    model.eval()
    act = torch.zeros(head.in_features)
    with torch.no_grad():
        for idx in batches(len(xt), r['batchSize'], gen):
            model(random_crop(xt[idx], gen))
            act += feats['x'].sum(0) / len(xt)
    hook.remove()
    order = torch.argsort(act)
    channels = len(order)
    step = math.ceil(channels * r['oncePruneRatio'])
    w0 = head.weight.detach().clone()
    base, kept, trace = None, 0, []
    for k in range(0, channels, step):
        with torch.no_grad():
            mask = torch.ones_like(w0)
            mask[:, order[:k]] = 0
            head.weight.copy_(w0 * mask)
        acc = acc_tensor(model, xv, yv)
        trace.append([k, round(acc, 4)])
        if k == 0:
            base = acc
        if abs(acc - base) / max(base, 1e-12) < r['accRatio']:
            kept = k
        else:
            break
    with torch.no_grad():
        head.weight.copy_(w0)
    mask = torch.ones_like(w0)
    mask[:, order[:kept]] = 0
    log(f'    pruned {kept}/{channels} channels (aux-val acc {base:.3f} -> {dict(trace).get(kept, base):.3f})')
    prune.custom_from_mask(head, name='weight', mask=mask)
    train_ce(model, xt, yt, r, r['epochs'], r['cosTMax'], gen, log=log)
    prune.remove(head, 'weight')
    return model, {'prunedChannels': kept, 'channels': channels, 'stepChannels': step, 'auxValAccBefore': base,
                   'auxValTrace': trace, 'trainImages': len(tr), 'valImages': len(va)}


def attention_map(f, p, eps=1e-6):
    am = f.abs().pow(p).sum(1, keepdim=True)
    return am / (torch.norm(am, dim=(2, 3), keepdim=True) + eps)


def at_loss(fs, ft, p):
    return F.mse_loss(attention_map(fs, p), attention_map(ft, p))


def taps(model, x):
    """NAD's taps. PreActResNet18: layer3, layer4 and the pooled feature (BackdoorBench's children()[:-3],
    [:-2], [:-1]), plus the logits. Other architectures: BackdoorBench's generic rule, the pooled feature only."""
    if isinstance(model, Z.PreActResNet18):
        l3, l4, pooled = model.features(x)
        return model.linear(pooled), [l3, l4, pooled[:, :, None, None]]
    pooled = torch.flatten(model.pool(model.features_(x)), 1)
    return model.linear(pooled), [pooled[:, :, None, None]]


def bn_updates_per_step(model):
    """How many train-mode forward passes BackdoorBench's NAD student step runs through each BatchNorm layer: it
    computes the logits and each tap with a separate forward of the (truncated) network, children()[:-1], [:-2],
    [:-3] for PreActResNet18 (layers up to layer3: 4 passes, layer4: 3), children()[:-1] otherwise (2 passes)."""
    counts = {}
    if isinstance(model, Z.PreActResNet18):
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                counts[m] = 3 if name.startswith('layer4') else 4
    else:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                counts[m] = 2
    return counts


def run_nad(model, v, r, a, gen, log):
    x, y = Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
    teacher = copy.deepcopy(model)
    log('    teacher:')
    train_ce(teacher, x, y, r, r['teacherEpochs'], r['teacherCosTMax'], gen, log=log)
    teacher.eval()
    betas = [r['beta1'], r['beta2'], r['beta3']] if isinstance(model, Z.PreActResNet18) else [r['beta3']]
    # One forward per step with the BN momentum that k same-batch updates amount to, 1 - (1 - 0.1)^k: the same
    # running statistics and the same gradients as BackdoorBench's k separate forwards.
    counts = bn_updates_per_step(model)
    if r['bnUpdatesAsBackdoorBench']:
        for m, k in counts.items():
            m.momentum = 1 - (1 - m.momentum) ** k
    opt = sgd(model, r)
    log('    student:')
    for e in range(r['epochs']):
        if r['studentSchedule'] == 'cosine':  # the engine's fast profile: per-epoch cosine over the student's epochs
            set_lr(opt, r['lr'] * 0.5 * (1 + math.cos(math.pi * e / r['epochs'])))
        else:
            set_lr(opt, r['lr'])  # adjust_learning_rate: 0.01 for every epoch < 20
        model.train()
        tot = 0.0
        for idx in batches(len(x), r['batchSize'], gen):
            xb = random_crop(x[idx], gen)
            out, fs = taps(model, xb)
            with torch.no_grad():
                _, ft = taps(teacher, xb)
            loss = F.cross_entropy(out, y[idx])
            for b, s, t in zip(betas, fs, ft):
                loss = loss + b * at_loss(s, t, r['p'])
            finite(loss, 'NAD')
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        log(f'    epoch {e + 1}/{r["epochs"]} loss {tot / len(x):.4f}')
    for m in counts:
        m.momentum = 0.1
    return model, {'taps': 'layer3,layer4,pooled' if len(betas) == 3 else 'pooled',
                   'bnUpdatesPerStep': sorted(set(counts.values()))}


def perturbed(x, pert):
    """BackdoorBench's get_perturbed_image: add a pixel-space perturbation to a normalized batch."""
    return ((x * Z.STD + Z.MEAN) + pert - Z.MEAN) / Z.STD


def shared_pgd(model, ref, x, y, r):
    eps = r['triggerNorm']
    pert = torch.clamp(torch.zeros_like(x) + eps, -eps, eps)  # init 'max', projected
    n = x.shape[0]
    with torch.no_grad():
        ori = model(x).argmax(1)
        ori_ref = ref(x).argmax(1)
    for _ in range(r['advSteps']):
        pert.requires_grad_(True)
        px = perturbed(x, pert)
        lo, lo_ref = model(px), ref(px)
        pl, pl_ref = lo.argmax(1), lo_ref.argmax(1)
        succ, succ_ref = pl != ori, pl_ref != ori_ref
        shared = succ & succ_ref & (pl == pl_ref)
        loss_adv = torch.zeros(())
        if (~succ).any():
            loss_adv = loss_adv + F.cross_entropy(lo, y, reduction='none')[~succ].sum()
        if (~succ_ref).any():
            loss_adv = loss_adv + F.cross_entropy(lo_ref, y, reduction='none')[~succ_ref].sum()
        loss_adv = -loss_adv / 2 / n
        pm = F.softmax(lo, 1).clamp(min=1e-8)
        pr = F.softmax(lo_ref, 1).clamp(min=1e-8)
        mix = 0.5 * (pm + pr)
        js = 0.5 * (pm * pm.log() + pr * pr.log()) - 0.5 * (pm * mix.log() + pr * mix.log())
        loss_share = js[~shared].sum(1).sum() / n
        loss = r['beta1'] * loss_adv + r['beta2'] * loss_share
        g, = torch.autograd.grad(loss, pert)
        with torch.no_grad():
            pert = torch.clamp(pert - r['advLr'] * g.sign(), -eps, eps)
        if not (~shared).any():
            break
    return pert.detach()


def run_sau(model, v, r, a, gen, log):
    x, y = Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    model.eval()
    opt = adam(model, r)
    k = Z.NUM_CLASSES
    shared_frac = []
    for rnd in range(r['epochs']):
        tot, sh = 0.0, 0
        for idx in batches(len(x), r['batchSize'], gen):
            xb, yb = x[idx], y[idx]
            if r['augment'] != 'none':
                xb = random_crop(xb, gen)
            pert = shared_pgd(model, ref, xb, yb, r)
            for _ in range(r['outerSteps']):
                px = perturbed(xb, pert)
                logits, plogits = torch.split(model(torch.cat([xb, px])), xb.shape[0])
                with torch.no_grad():
                    ori_ref = ref(xb).argmax(1)
                    pl_ref = ref(px).argmax(1)
                pl = plogits.argmax(1)
                succ = pl != yb
                succ_ref = (pl_ref != yb) & (pl_ref != ori_ref)
                sh += int((succ & succ_ref & (pl == pl_ref)).sum())
                loss_cl = F.cross_entropy(logits, yb)
                loss_at = F.cross_entropy(plogits, yb)
                if succ_ref.any():
                    one = F.one_hot(pl_ref, k).float()
                    prob = F.softmax(plogits, 1)
                    neg = (prob * (1 - one)).sum(1)[succ_ref]
                    pos = (prob * one).sum(1)[succ_ref]
                    loss_sh = (-torch.log(1e-6 + neg.clamp(max=0.999)).sum()
                               - torch.log(1 + 1e-6 - pos.clamp(min=0.001)).sum()) / 2 / xb.shape[0]
                else:
                    loss_sh = torch.zeros(())
                loss = r['lmd1'] * loss_cl + r['lmd2'] * loss_at + r['lmd3'] * loss_sh
                finite(loss, 'SAU')
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot += loss.item() * len(idx)
        shared_frac.append(sh / len(x))
        if (rnd + 1) % max(1, r['epochs'] // 10) == 0 or rnd == r['epochs'] - 1:
            log(f'    round {rnd + 1}/{r["epochs"]} loss {tot / len(x):.4f} shared {sh / len(x):.3f}')
    return model, {'sharedFractionFirst': round(shared_frac[0], 4), 'sharedFractionLast': round(shared_frac[-1], 4)}


def ibau_hypergrad(model, params, pert, inner_batch, outer_batch, r, gen):
    """BackdoorBench's fixed_point() with the perturbation as the inner variable and the model's parameters as
    the outer ones: sets p.grad to the implicit hypergradient of the outer loss."""
    w = pert.detach().clone().requires_grad_(True)
    xo, yo = outer_batch
    n = xo.shape[0]
    patch = torch.zeros_like(xo)
    chosen = torch.randperm(n, generator=gen)[:int(n * r['portion'])]
    patch[chosen] = w
    outer = F.cross_entropy(model(xo + patch), yo)
    g_w = torch.autograd.grad(outer, [w], retain_graph=True, allow_unused=True)[0]
    g_w = torch.zeros_like(w) if g_w is None else g_w
    g_theta = torch.autograd.grad(outer, params, allow_unused=True)
    xi, yi = inner_batch
    inner = torch.mean(-F.cross_entropy(model(xi + w), yi, reduction='none')) + r['pertReg'] * torch.norm(w) ** 2
    gi, = torch.autograd.grad(inner, [w], create_graph=True)
    w_mapped = w - r['innerLr'] * gi
    vs = torch.zeros_like(w)
    for _ in range(r['K']):
        prev = vs
        vs = torch.autograd.grad(w_mapped, [w], grad_outputs=vs, retain_graph=True)[0] + g_w
        if float(torch.norm(vs - prev)) < 1e-10:
            break
    grads = torch.autograd.grad(w_mapped, params, grad_outputs=vs, allow_unused=True)
    for p, g, go in zip(params, grads, g_theta):
        total = (torch.zeros_like(p) if g is None else g) + (torch.zeros_like(p) if go is None else go)
        p.grad = total if p.grad is None else p.grad + total


def run_ibau(model, v, r, a, gen, log):
    x, y = Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
    model.eval()
    opt = adam(model, r)
    params = [p for p in model.parameters() if p.requires_grad]
    # images_list/labels_list: one augmented shuffled pass, fixed for the whole run.
    fixed = [(random_crop(x[idx], gen), y[idx]) for idx in batches(len(x), r['batchSize'], gen)]
    c, h, w = x.shape[1:]
    for rnd in range(r['epochs']):
        pert = torch.zeros(1, c, h, w, requires_grad=True)
        popt = torch.optim.SGD([pert], lr=r['pertLr'])
        for idx in batches(len(x), r['batchSize'], gen):
            xb = random_crop(x[idx], gen)
            with torch.no_grad():
                ori = model(xb).argmax(1)
            loss = -F.cross_entropy(model(xb + pert), ori) + r['pertReg'] * torch.norm(pert) ** 2
            popt.zero_grad()
            loss.backward()
            popt.step()
            if r.get('pertMaxNorm'):  # the engine's L2 ball (i-BAU's own code; BackdoorBench comments it out)
                with torch.no_grad():
                    pert.mul_(min(1.0, r['pertMaxNorm'] / (float(pert.norm()) + 1e-12)))
        tot = 0.0
        # epochsPerRound: passes over the fixed batches a round (BackdoorBench: 1; the engine's fast profile: 2).
        for b in [b for _ in range(r.get('epochsPerRound', 1)) for b in range(len(fixed))]:
            opt.zero_grad()
            ibau_hypergrad(model, params, pert.detach()[0], fixed[0], fixed[b], r, gen)
            for p in params:
                if not torch.isfinite(p.grad).all():
                    raise FloatingPointError('i-BAU: hypergradient is not finite')
            opt.step()
        with torch.no_grad():
            tot = F.cross_entropy(model(x), y).item()
        log(f'    round {rnd + 1}/{r["epochs"]} |delta|_2 {float(pert.norm()):.3f} aux CE {tot:.4f}')
    return model, {}


class NeuronMasks:
    """ANP's NoisyBatchNorm2d attached to every BatchNorm2d of a model (its forward is replaced): per channel a
    mask m (init 1) and noises n_w, n_b (init 0); when perturbed the layer uses gamma * (m + n_w) and
    beta * (1 + n_b), otherwise gamma * m and beta. The model's own parameters are frozen (ANP steps only the
    masks and the noises; BackdoorBench's optimizers hold only those, so this changes nothing but speed)."""

    def __init__(self, model):
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        if not self.layers:
            raise ValueError('ANP needs BatchNorm layers')
        for p in model.parameters():
            p.requires_grad_(False)
        self.masks = [torch.ones(m.num_features, requires_grad=True) for _, m in self.layers]
        self.noise = [torch.zeros(m.num_features, requires_grad=True) for _, m in self.layers]
        self.noise_bias = [torch.zeros(m.num_features, requires_grad=True) for _, m in self.layers]
        self.perturbed = False
        for i, (_, m) in enumerate(self.layers):
            m.forward = self._forward(i, m)

    def _forward(self, i, m):
        def forward(x):
            if self.perturbed:
                w, b = m.weight * (self.masks[i] + self.noise[i]), m.bias * (1.0 + self.noise_bias[i])
            else:
                w, b = m.weight * self.masks[i], m.bias
            if m.training:
                m.num_batches_tracked.add_(1)
            return F.batch_norm(x, m.running_mean, m.running_var, w, b, m.training, m.momentum, m.eps)
        return forward

    def noises(self):
        return self.noise + self.noise_bias

    def reset_noise(self, eps, gen):
        with torch.no_grad():
            for t in self.noises():
                t.copy_(torch.rand(t.shape, generator=gen) * 2 * eps - eps)


def prune_bn(model, masks, threshold):
    """Zero gamma of every BatchNorm channel whose mask is <= threshold (BackdoorBench's pruning(): the weight
    only, on the original model); returns the number of channels pruned."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    pruned = 0
    with torch.no_grad():
        for bn, mk in zip(bns, masks):
            off = mk <= threshold
            bn.weight[off] = 0.0
            pruned += int(off.sum())
    return pruned


def prune_lowest(model, masks, k):
    """Zero gamma of the k channels with the lowest masks over all layers (BackdoorBench's pruning_by number)."""
    flat = torch.cat(masks)
    order = torch.argsort(flat, stable=True)[:k]
    sel = torch.zeros_like(flat, dtype=torch.bool)
    sel[order] = True
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        start = 0
        for bn in bns:
            n = bn.num_features
            bn.weight[sel[start:start + n]] = 0.0
            start += n


def evaluate_head(model, v, n):
    """evaluate() on the first n clean and the first n triggered test images (the diagnosis curves of ANP: 19000
    images per pruned model cost ~10 s of one core)."""
    pred_bd = predict(model, v.bd_x[:n])
    return {'acc': float((predict(model, v.test_x[:n]) == v.test_y[:n]).mean()),
            'asr': float((pred_bd == Z.TARGET).mean()), 'ra': float((pred_bd == v.bd_y[:n]).mean())}


def anp_perturbed_accuracy(work, nm, xt, yt, eps, batch_size, batches, seed):
    """The network's accuracy under ANP's perturbation at noise bound eps with the masks at 1 (the first half of
    an iteration, no mask step): per batch of the aux train split, noise U(-eps, eps), one signed ascent step of
    eps on the cross-entropy, the perturbed network's predictions with batch statistics. The generator is seeded
    anew for every call, so every eps sees the same batches and noise draws (the engine's perturbedAccuracy)."""
    gen = torch.Generator().manual_seed(seed)
    right = seen = 0
    for _ in range(batches):
        idx = torch.randperm(len(xt), generator=gen)[:batch_size]
        xb, yb = xt[idx], yt[idx]
        nm.reset_noise(eps, gen)
        nm.perturbed = True
        grads = torch.autograd.grad(-F.cross_entropy(work(xb), yb), nm.noises())
        with torch.no_grad():
            for t, g in zip(nm.noises(), grads):
                t.sub_(eps * g.sign())
            right += int((work(xb).argmax(1) == yb).sum())
        seen += len(yb)
    nm.perturbed = False
    return right / seen


def calibrate_anp_eps(work, nm, xt, yt, max_eps, keep, batch_size, gen, batches=8, steps=5):
    """The engine's calibrateEps: the largest eps up to max_eps (bisection, `steps` halvings of [0, max_eps])
    under which the perturbation keeps at least `keep` of the aux accuracy (eps 0's, same batches)."""
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen))
    at = lambda eps: anp_perturbed_accuracy(work, nm, xt, yt, eps, batch_size, batches, seed)  # noqa: E731
    clean = at(0.0)
    probes = []

    def keeps(eps):
        acc = at(eps)
        probes.append({'eps': round(eps, 4), 'auxAcc': round(acc, 4)})
        return acc >= keep * clean

    if keeps(max_eps):
        return max_eps, clean, probes
    lo, hi = 0.0, max_eps
    for _ in range(steps):
        mid = (lo + hi) / 2
        if keeps(mid):
            lo = mid
        else:
            hi = mid
    return round(lo or hi, 3), clean, probes


def run_anp(model, v, r, a, gen, log):
    tr, va = stratified_split(v.aux_y, r['valFraction'], a.seed)
    x_all, y_all = Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
    xt, yt, xv, yv = x_all[tr], y_all[tr], x_all[va], y_all[va]
    work = copy.deepcopy(model)
    nm = NeuronMasks(work)
    work.train()
    calibration = None
    if r.get('epsKeep', 0) > 0:
        eps, clean, probes = calibrate_anp_eps(work, nm, xt, yt, r['eps'], r['epsKeep'], r['batchSize'], gen)
        # BatchNorm's running statistics as they were: the probes ran in train mode.
        work.load_state_dict(model.state_dict())
        r = {**r, 'eps': eps}
        calibration = {'eps': eps, 'epsProbes': probes, 'epsProbeCleanAcc': round(clean, 4)}
        log(f'    eps calibrated to {eps} (aux acc {clean:.3f}; probes {probes})')
    mask_opt = torch.optim.SGD(nm.masks, lr=r['lr'], momentum=r['momentum'])
    noise_lr = r['eps'] / r['anpSteps']
    work.train()
    trace, tot, cnt = [], 0.0, 0
    order, pos = None, len(xt)
    for it in range(r['iterations']):
        if r['sampling'] == 'epochs':  # --anp-sampling epochs: the engine's way, a new permutation once one is used up
            if pos + r['batchSize'] > len(xt):
                order, pos = torch.randperm(len(xt), generator=gen), 0
            idx = order[pos:pos + r['batchSize']]
            pos += r['batchSize']
        else:
            idx = torch.randint(0, len(xt), (r['batchSize'],), generator=gen)  # RandomSampler(replacement=True)
        xb, yb = random_crop(xt[idx], gen), yt[idx]
        # 1. the adversarial neuron perturbation: random start in [-eps, eps], anpSteps signed steps of eps/steps
        #    ascending CE (BackdoorBench does not project the noise back to [-eps, eps]; --anp-clip-noise does).
        if r['eps'] > 0:
            nm.reset_noise(r['eps'], gen)
            for _ in range(r['anpSteps']):
                nm.perturbed = True
                loss_noise = -F.cross_entropy(work(xb), yb)
                grads = torch.autograd.grad(loss_noise, nm.noises())
                with torch.no_grad():
                    for t, g in zip(nm.noises(), grads):
                        t.sub_(noise_lr * g.sign())
                        if r['noiseClip'] is not None:
                            t.clamp_(-r['noiseClip'], r['noiseClip'])
        # 2. the masks: alpha * CE(masked) + (1 - alpha) * CE(masked and perturbed), SGD, then clip to [0, 1].
        if r['eps'] > 0:
            nm.perturbed = True
            loss_rob = F.cross_entropy(work(xb), yb)
        else:
            loss_rob = torch.zeros(())
        nm.perturbed = False
        loss_nat = F.cross_entropy(work(xb), yb)
        loss = r['alpha'] * loss_nat + (1 - r['alpha']) * loss_rob
        finite(loss, 'ANP')
        mask_opt.zero_grad()
        loss.backward()
        mask_opt.step()
        with torch.no_grad():
            for mk in nm.masks:
                mk.clamp_(0.0, 1.0)
        tot += loss.item()
        cnt += 1
        if (it + 1) % max(1, r['iterations'] // 10) == 0 or it == r['iterations'] - 1:
            below = sum(int((mk < 0.2).sum()) for mk in nm.masks)
            trace.append([it + 1, round(tot / cnt, 4), below])
            log(f'    iteration {it + 1}/{r["iterations"]} loss {tot / cnt:.4f} masks < 0.2: {below}')
            tot, cnt = 0.0, 0
    masks = [mk.detach().clone() for mk in nm.masks]
    names = [n for n, _ in nm.layers]

    # The threshold: the largest in 0..maxThreshold keeping aux-val accuracy >= accRatio x the unpruned one
    # (the engine's anp.ts rule); None (prune nothing) when even 0 costs too much. The test-set columns of the
    # curve are for diagnosis only and take no part in the choice.
    base_val = acc_tensor(model, xv, yv)
    n_steps = int(round(r['maxThreshold'] / r['thresholdStep']))
    curve, by_count = [], {}
    for k in range(n_steps + 1):
        thr = round(k * r['thresholdStep'], 3)
        m = copy.deepcopy(model)
        pruned = prune_bn(m, masks, thr)
        if pruned not in by_count:  # pruning is cumulative: the same count is the same model
            by_count[pruned] = {'valAcc': acc_tensor(m, xv, yv), **evaluate_head(m, v, r['curveTestImages'])}
        e = by_count[pruned]
        curve.append({'threshold': thr, 'pruned': pruned, 'valAcc': round(e['valAcc'], 4), 'acc': round(e['acc'], 4),
                      'asr': round(e['asr'], 4), 'ra': round(e['ra'], 4)})
    chosen = next((c for c in reversed(curve) if c['valAcc'] >= r['accRatio'] * base_val), None)
    # What BackdoorBench's evaluate_by_threshold would keep (it reads the test set): the lowest test ASR among
    # the thresholds within 10% relative test ACC of the unpruned model, the unpruned model if none beats it.
    m0 = evaluate_head(model, v, r['curveTestImages'])
    bb, best = None, m0['asr']
    for c in curve:
        if abs(c['acc'] - m0['acc']) / m0['acc'] < 0.1 and c['asr'] < best:
            bb, best = c, c['asr']
    # Pruning the k lowest masks (BackdoorBench's pruning_by number), diagnosis only.
    count_curve = []
    for k in (5, 10, 20, 40, 80):
        m = copy.deepcopy(model)
        prune_lowest(m, masks, k)
        e = evaluate_head(m, v, r['curveTestImages'])
        count_curve.append({'pruned': k, 'acc': round(e['acc'], 4), 'asr': round(e['asr'], 4)})
    flat = torch.cat(masks)
    stats = {
        'channels': int(flat.numel()), 'zero': int((flat <= 0).sum()), 'below0.2': int((flat < 0.2).sum()),
        'below0.5': int((flat < 0.5).sum()), 'below0.9': int((flat < 0.9).sum()), 'atOne': int((flat >= 1).sum()),
        'min': round(float(flat.min()), 4), 'mean': round(float(flat.mean()), 4),
        'median': round(float(flat.median()), 4),
        'perLayer': {n: {'channels': int(mk.numel()), 'below0.2': int((mk < 0.2).sum()),
                         'below0.5': int((mk < 0.5).sum()), 'min': round(float(mk.min()), 3)}
                     for n, mk in zip(names, masks)},
    }
    if chosen is not None:
        prune_bn(model, masks, chosen['threshold'])
    log(f'    threshold {chosen and chosen["threshold"]} pruned {chosen and chosen["pruned"]} '
        f'(aux-val {base_val:.3f} -> {chosen and chosen["valAcc"]}); masks < 0.2: {stats["below0.2"]}, '
        f'< 0.5: {stats["below0.5"]} of {stats["channels"]}')
    return model, {
        'threshold': chosen and chosen['threshold'], 'prunedChannels': chosen['pruned'] if chosen else 0,
        'auxValAcc': chosen['valAcc'] if chosen else round(base_val, 4), 'auxValAccBefore': round(base_val, 4),
        'selectedOn': 'aux validation split', 'trainImages': len(tr), 'valImages': len(va), 'eps': r['eps'],
        **(calibration or {}),
        'maskStats': stats, 'thresholdCurve': curve, 'countCurve': count_curve,
        'backdoorBenchTestChoice': bb, 'lossTrace': trace,
        'masks': {n: [round(float(x), 3) for x in mk] for n, mk in zip(names, masks)},
    }


def smooth_ce(logits, y, s, style):
    """Label-smoothed cross-entropy. 'former-engine' (what nn/train.ts did before): target (1 - s) one-hot + s / K;
    'backdoorbench' (smooth_crossentropy): 1 - s on the label, s / (K - 1) elsewhere, as KL divergence, which
    differs from this cross-entropy by the target's entropy, a constant (same gradient)."""
    k = logits.shape[1]
    onehot = F.one_hot(y, k).float()
    if style == 'former-engine':
        t = onehot * (1 - s) + s / k
    else:
        t = onehot * (1 - s) + (1 - onehot) * (s / (k - 1))
    return -(t * F.log_softmax(logits, 1)).sum(1).mean()


def set_bn_momentum(model, momenta):
    """Set every BatchNorm's momentum; `momenta` None: 0 (running statistics frozen), returns the old ones."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    old = [m.momentum for m in bns]
    for m, mo in zip(bns, momenta if momenta is not None else [0.0] * len(bns)):
        m.momentum = mo
    return old


def run_ftsam(model, v, r, a, gen, log):
    """FT-SAM: per step the gradient g at w, the adaptive (ASAM) perturbation e = rho * w^2 g / (|| |w| g || +
    1e-12) over all parameters together, the gradient at w + e, w restored, and one SGD step (momentum, weight
    decay on w) with that gradient. BN in train mode for both passes; only one of them moves the running
    statistics (r['bnUpdate']: 'first-pass' as BackdoorBench's SAM.step, 'perturbed-pass' as the engine)."""
    x, y = Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = sgd(model, r)
    rho, s, style = r['rho'], r['labelSmoothing'], r['smoothingStyle']
    step, trace = 0, []
    for e in range(r['epochs']):
        if r['schedule'] == 'cosine':
            set_lr(opt, Z.cosine_lr(r['lr'], e, r['epochs']))
        model.train()
        tot = 0.0
        for idx in batches(len(x), r['batchSize'], gen):
            if r['schedule'] == 'cosine-per-batch':
                # CosineAnnealingLR(T_max) stepped per batch; past T_max it climbs back (its closed form).
                set_lr(opt, Z.cosine_lr(r['lr'], step, r['cosTMaxSteps']))
            xb, yb = random_crop(x[idx], gen), y[idx]
            # 1. the gradient at w
            saved = set_bn_momentum(model, None) if r['bnUpdate'] == 'perturbed-pass' else None
            loss1 = smooth_ce(model(xb), yb, s, style)
            g1 = torch.autograd.grad(loss1, params)
            if saved is not None:
                set_bn_momentum(model, saved)
            # 2. the perturbation, adaptive
            with torch.no_grad():
                norm = torch.norm(torch.stack([(p.abs() * g).norm(2) for p, g in zip(params, g1)]), 2)
                scale = rho / (norm + r['perturbEps'])
                eps = [g * scale * p.pow(2) if r['adaptive'] else g * scale for p, g in zip(params, g1)]
                for p, ew in zip(params, eps):
                    p.add_(ew)
            # 3. the gradient at w + e, then w restored and the SGD step
            saved = set_bn_momentum(model, None) if r['bnUpdate'] == 'first-pass' else None
            loss2 = smooth_ce(model(xb), yb, s, style)
            finite(loss2, 'FT-SAM')
            opt.zero_grad()
            loss2.backward()
            if saved is not None:
                set_bn_momentum(model, saved)
            with torch.no_grad():
                for p, ew in zip(params, eps):
                    p.sub_(ew)
            opt.step()
            step += 1
            tot += loss1.item() * len(idx)
        trace.append(round(tot / len(x), 4))
        log(f'    epoch {e + 1}/{r["epochs"]} lr {opt.param_groups[0]["lr"]:.5f} loss {tot / len(x):.4f}')
    return model, {'rho': rho, 'adaptive': r['adaptive'], 'steps': step, 'lossTrace': trace}


def run_fst(model, v, r, a, gen, log):
    """FST: re-initialize the linear head, then train every parameter on CE + alpha * <W, W0>_F (W0 the victim's
    head weight), rescaling W to ||W0||_F after every step; cosine per epoch, BN in train mode."""
    x, y = Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
    head = model.linear
    w0 = head.weight.detach().clone()
    n0 = torch.norm(w0)
    with torch.no_grad():
        bound = 1 / math.sqrt(head.in_features)
        head.weight.uniform_(-bound, bound, generator=gen)
        if head.bias is not None:
            head.bias.uniform_(-bound, bound, generator=gen)
    opt = sgd(model, r)
    trace = []
    for e in range(r['epochs']):
        set_lr(opt, Z.cosine_lr(r['lr'], e, r['epochs']))
        model.train()
        tot = 0.0
        for idx in batches(len(x), r['batchSize'], gen):
            xb, yb = random_crop(x[idx], gen), y[idx]
            loss = F.cross_entropy(model(xb), yb) + r['alpha'] * torch.sum(head.weight * w0)
            finite(loss, 'FST')
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                head.weight.mul_(n0 / torch.norm(head.weight))
            tot += loss.item() * len(idx)
        trace.append(round(tot / len(x), 4))
        log(f'    epoch {e + 1}/{r["epochs"]} lr {opt.param_groups[0]["lr"]:.5f} loss {tot / len(x):.4f}')
    cos = float(torch.sum(head.weight * w0) / (torch.norm(head.weight) * n0))
    return model, {'alpha': r['alpha'], 'headCosineToVictim': round(cos, 4), 'lossTrace': trace}


def pixel_image(pixels, pert):
    """npd.py's get_perturbed_image: the batch's pixels (denormalized once by the caller) plus the perturbation,
    clipped to [0, 1], normalized again."""
    return (torch.clamp(pixels + pert, 0, 1) - Z.MEAN) / Z.STD


def npd_attack(model, x, target, r):
    """npd.py's targeted L2 attack: from a zero perturbation, signed steps against the gradient of the mean of
    each image's cross-entropy toward its target (clamped to [-80, 80]), the perturbation projected per image on
    the L2 ball of radius trigger_norm; after each step, stop once more than 60% of the batch is classified as
    the target. attackClip 'perturbation' (the engine's fast profile) also clips the perturbation to what the
    clipped image shows."""
    pert = torch.zeros_like(x)
    pixels = x * Z.STD + Z.MEAN
    for _ in range(r['innerSteps']):
        pert.requires_grad_(True)
        loss = F.cross_entropy(model(pixel_image(pixels, pert)), target, reduction='none').clamp(-r['lossCap'], r['lossCap']).mean()
        g, = torch.autograd.grad(loss, pert)
        with torch.no_grad():
            pert = pert - r['advLr'] * g.sign()
            norm = pert.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            pert = torch.where(norm > r['triggerNorm'], pert * r['triggerNorm'] / norm, pert)
            if r['attackClip'] == 'perturbation':
                pert = torch.clamp(pixels + pert, 0, 1) - pixels
            if (model(pixel_image(pixels, pert)).argmax(1) == target).float().mean() > r['stopRate']:
                break
    return pixel_image(pixels, pert.detach())


def run_npd(model, v, r, a, gen, log):
    # The polarizer in front of the last block's first convolution, through a forward pre-hook as npd.py inserts it;
    # the backbone frozen and in eval mode throughout.
    if v.arch != 'preactresnet18':
        raise ValueError('npd: BackdoorBench inserts its polarizer in a PreAct-ResNet18 only')
    x, y = Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    layer = dict(model.named_modules())[r['targetLayer']]
    c = layer.in_channels
    conv = nn.Conv2d(c, c, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(c).view(c, c, 1, 1))
    plug = nn.Sequential(conv, nn.BatchNorm2d(c))
    # The hook stays: the purified model is the backbone with the polarizer (eval mode) in front of the layer.
    layer.register_forward_pre_hook(lambda _m, inp: (plug(inp[0]),))
    # Warm-up: the polarizer in train mode (its BatchNorm normalizes with batch statistics and moves its running
    # ones), plain SGD at the warm-up rate on the clean cross-entropy. warmupStats 'exact' (npd.ts's way): the
    # BatchNorm's running statistics set to those of its input over the aux set first, and the warm-up in eval mode.
    warm = torch.optim.SGD(plug.parameters(), lr=r['warmupLr'])
    plug.train()
    if r.get('warmupStats') == 'exact':
        plug.eval()
        inputs = []
        grab = plug[1].register_forward_pre_hook(lambda _m, inp: inputs.append(inp[0].detach()))
        with torch.no_grad():
            for i in range(0, len(x), 128):
                model(x[i:i + 128])
        grab.remove()
        f = torch.cat(inputs)
        plug[1].running_mean.copy_(f.mean((0, 2, 3)))
        plug[1].running_var.copy_(f.var((0, 2, 3), unbiased=False))
    for _ in range(r['warmupEpochs']):
        for idx in batches(len(x), r['batchSize'], gen):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            finite(loss, 'NPD warm-up')
            warm.zero_grad()
            loss.backward()
            warm.step()
    plug.eval()
    opt = torch.optim.SGD(plug.parameters(), lr=r['lr'], momentum=r['momentum'], weight_decay=r['weightDecay'])
    for e in range(r['epochs']):
        tot = 0.0
        for idx in batches(len(x), r['batchSize'], gen):
            xb, yb = x[idx], y[idx]
            with torch.no_grad():
                lo = model(xb)
                own = lo.argmax(1)
                lo[torch.arange(len(yb)), yb] = -10
                target = lo.argmax(1)
            adv = npd_attack(model, xb, target, r)
            loss1 = F.cross_entropy(model(xb), yb)
            la = model(adv)
            loss2 = F.cross_entropy(la, own)
            prob = F.softmax(la, 1)
            top2 = torch.argsort(prob, 1)[:, -2:]
            wrong = torch.where(top2[:, -1] == yb, top2[:, -2], top2[:, -1])
            away = torch.log(1.0001 - prob + 1e-12)
            loss3 = F.nll_loss(away, wrong)
            loss4 = F.nll_loss(away, target)
            loss = r['lmd1'] * loss1 + r['lmd2'] * loss2 + r['lmd3'] * loss3 + r['lmd4'] * loss4
            finite(loss, 'NPD')
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        log(f'    epoch {e + 1}/{r["epochs"]} loss {tot / len(x):.4f}')
    return model, {'insertedBefore': r['targetLayer']}


DEFENSES = {'ft': run_ft, 'fp': run_fp, 'nad': run_nad, 'sau': run_sau, 'ibau': run_ibau, 'anp': run_anp,
            'ftsam': run_ftsam, 'fst': run_fst, 'npd': run_npd}

# `--recipe fast`: the departures our `fast` profile names for each defense (src/engine/defenses/<name>.ts,
# `defaults('fast')` and `departures('fast')`), applied to BackdoorBench's recipe above, so that the engine's
# default profile can be compared with PyTorch running the same hyperparameters on the same images.
FAST = {
    'ft': {'epochs': 20, 'batchSize': 64},
    'fp': {'epochs': 20, 'batchSize': 64},
    # nad.ts: batch 64 and 20 epochs for teacher and student, as ft's fast profile (the teacher's cosine over its
    # epochs), the student's rate on a cosine over its epochs.
    'nad': {'epochs': 20, 'batchSize': 64, 'teacherEpochs': 20, 'teacherCosTMax': 20, 'studentSchedule': 'cosine'},
    'sau': {'epochs': 20, 'batchSize': 64},
    # ibau.ts: batch 64, 2 unlearning passes a round (1), delta on 10% of a batch (1%), the L2 ball of 10.
    'ibau': {'batchSize': 64, 'portion': 0.1, 'pertMaxNorm': 10.0, 'epochsPerRound': 2},
    # ftsam.ts: batch 64, 20 epochs (as ft), rho 1 and the cosine per epoch over the run's epochs (its named
    # departures); BN statistics from the first pass and smoothing s / (K - 1), as BackdoorBench.
    'ftsam': {'epochs': 20, 'batchSize': 64, 'rho': 1.0, 'schedule': 'cosine', 'bnUpdate': 'first-pass',
              'smoothingStyle': 'backdoorbench'},
    # fst.ts: batch 64, 40 epochs (the authors: 10) and weight decay 5e-4 (the authors' ft.py: none), its named
    # departures.
    'fst': {'epochs': 40, 'batchSize': 64, 'weightDecay': 5e-4},
    # npd.ts: batch 64, 2 warm-up epochs (5), 30 epochs (50), the perturbation clipped with the image.
    'npd': {'epochs': 30, 'warmupEpochs': 2, 'batchSize': 64, 'attackClip': 'perturbation'},
}


# ---------------------------------------------------------------- runs and output

def effective(defense, a):
    r = dict(RECIPES[defense])
    if a.recipe == 'fast':
        r.update(FAST.get(defense, {}))  # anp: its own fast switch below
        r['recipe'] = 'fast (the engine\'s fast profile)'
    if defense == 'anp':
        if a.anp_fast or a.recipe == 'fast':  # --recipe fast is the engine's fast profile for ANP too
            # The engine's `fast` profile: the ANP authors' mask rate 0.2 (BackdoorBench: 0.01), batch 64, 500
            # iterations.
            r.update({'iterations': 500, 'batchSize': 64, 'lr': 0.2, 'profile': 'fast'})
        else:
            r['profile'] = 'paper'
        if a.anp_sampling is not None:
            r['sampling'] = 'epochs' if a.anp_sampling == 'epochs' else 'with replacement'
            r['profile'] += f'-{a.anp_sampling}'
        if a.anp_eps_keep is not None:  # eps calibrated as the engine's epsKeep does, r['eps'] its upper bound
            r['epsKeep'] = a.anp_eps_keep
            r['profile'] += f'-keep{a.anp_eps_keep:g}'
        if a.anp_eps is not None:
            r['eps'] = a.anp_eps
            r['profile'] += f'-eps{a.anp_eps:g}'
        if a.iterations is not None:
            r['iterations'] = a.iterations
        if a.batch_size is not None:
            r['batchSize'] = a.batch_size
        if a.anp_clip_noise:
            r['noiseClip'] = r['eps']  # the engine's anp.ts projects the noise back to [-eps, eps]
            r['profile'] += '-clip-noise'
        r['iterationsDeparture'] = r['iterations'] != r['paperIterations']
        return r
    if a.epochs is not None:
        r['epochs'] = a.epochs
    if a.batch_size is not None:
        r['batchSize'] = a.batch_size
    if defense in ('ft', 'fp'):
        # CosineAnnealingLR: BackdoorBench passes T_max=100 (its default epochs); with fewer epochs the cosine runs
        # over the run's own length unless --cos-tmax says otherwise.
        r['cosTMax'] = a.cos_tmax if a.cos_tmax is not None else r['epochs']
    if defense in ('ftsam', 'fst'):
        # Their rows carry the profile (paper or fast, and any variant below), merged side by side.
        r['profile'] = a.recipe
    if defense == 'ftsam' and a.ftsam_mechanics is not None:
        if a.ftsam_mechanics == 'backdoorbench':
            r.update({'schedule': 'cosine-per-batch', 'bnUpdate': 'first-pass', 'smoothingStyle': 'backdoorbench'})
        else:
            r.update({'schedule': 'cosine', 'bnUpdate': 'perturbed-pass', 'smoothingStyle': 'former-engine'})
        r['profile'] += f'-{a.ftsam_mechanics}-mechanics'
    if defense == 'npd' and a.npd_exact_stats:
        r['warmupStats'] = 'exact'
        r['profile'] = f'{r.get("profile", a.recipe)}-exact-stats'
    if defense == 'npd' and a.npd_attack_clip is not None:
        r['attackClip'] = a.npd_attack_clip
        r['profile'] = f'{r.get("profile", a.recipe)}-attack-clip-{a.npd_attack_clip}'
    if defense == 'ftsam' and a.rho is not None:
        r['rho'] = a.rho
        r['profile'] += f'-rho{a.rho:g}'
    if defense in ('ftsam', 'fst') and (a.epochs is not None or a.batch_size is not None):
        r['profile'] += f'-epochs{a.epochs or r["epochs"]}-batch{a.batch_size or r["batchSize"]}'
    if defense == 'nad':
        # The teacher's epochs: BackdoorBench's te_epochs (the student's 10) unless the recipe or
        # --nad-teacher-epochs says otherwise; a fast-recipe cosine runs over them.
        r.setdefault('teacherEpochs', r['epochs'])
        if a.nad_teacher_epochs is not None:
            r['teacherEpochs'] = a.nad_teacher_epochs
            if a.recipe == 'fast':
                r['teacherCosTMax'] = a.nad_teacher_epochs
            r['profile'] = f'{a.recipe}-teacher-epochs{a.nad_teacher_epochs}'
    if defense == 'nad' and a.nad_single_bn_update:
        r['bnUpdatesAsBackdoorBench'] = False
    if defense == 'sau' and a.sau_augment:
        r['augment'] = 'random-crop-4'
    r['epochsDeparture'] = r['epochs'] != r['paperEpochs']
    if a.float64:
        r['dtype'] = 'float64'
        r['profile'] = f'{r.get("profile", a.recipe)}-float64'
    return r


def run_one(v, defense, seed, a):
    global STREAM
    r = effective(defense, a)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    a.seed = seed
    log = (lambda s: print(s, flush=True)) if a.verbose else (lambda s: None)
    measured = None
    if a.evaluate_victim:
        # What a purification job reports first: the victim on the same clean and triggered test images, measured
        # here rather than read from victim.json, so that the process does the work `backdoor-audit run` does.
        t0 = Z.now()
        measured = evaluate(v.model(), v)
        measured = {**{k: round(x, 4) for k, x in measured.items()}, 'seconds': round(Z.now() - t0, 1)}
    model = v.model()
    STREAM = [] if a.record_stream else None
    t0, c0 = Z.now(), time.process_time()
    model, details = DEFENSES[defense](model, v, r, a, gen, log)
    seconds, cpu = Z.now() - t0, time.process_time() - c0
    stream_file = None
    if a.record_stream:
        os.makedirs(a.record_stream, exist_ok=True)
        stream_file = os.path.join(a.record_stream, f'{v.name}-{defense}-seed{seed}.json')
        Z.save_json(stream_file, {'victim': v.name, 'defense': defense, 'seed': seed, 'params': r, 'draws': STREAM})
        STREAM = None
    t0 = Z.now()
    m = evaluate(model, v)
    eval_seconds = Z.now() - t0
    length = f'iterations {r["iterations"]}' if 'iterations' in r else f'epochs {r["epochs"]}'
    if defense == 'anp':
        d = details
        length += (f'; threshold {d["threshold"]}, pruned {d["prunedChannels"]}, masks < 0.2 / 0.5: '
                   f'{d["maskStats"]["below0.2"]} / {d["maskStats"]["below0.5"]} of {d["maskStats"]["channels"]}')
    row = {'victim': v.name, 'defense': defense, 'seed': seed, 'params': r,
           **({'profile': r['profile']} if 'profile' in r else {}),
           'acc': round(m['acc'], 4), 'asr': round(m['asr'], 4), 'ra': round(m['ra'], 4),
           'seconds': round(seconds, 1), 'cpuSeconds': round(cpu, 1), 'details': details,
           'evalSeconds': round(eval_seconds, 1),
           'victimMetrics': {k: round(v.meta['metrics'][k], 4) for k in ('acc', 'asr', 'ra')},
           **({'victimMeasured': measured} if measured else {}),
           **({'stream': os.path.relpath(stream_file, ROOT)} if stream_file else {}),
           'threads': torch.get_num_threads(), 'torch': torch.__version__}
    print(f'{v.name} {defense} seed {seed}: ACC {m["acc"]:.4f} ASR {m["asr"]:.4f} RA {m["ra"]:.4f} '
          f'({seconds:.1f} s, cpu {cpu:.1f} s; {length}, batch {r["batchSize"]}, lr {r["lr"]})', flush=True)
    return row


@contextlib.contextmanager
def locked(path):
    with open(path + '.lock', 'w') as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def merge(path, rows):
    """Merge rows into the JSON array in `path` by (victim, defense, seed), replacing the file atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with locked(path):
        old = []
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            if isinstance(old, dict):  # an object holding its rows
                old = old.get('rows', [])
        # ANP's rows carry the profile (paper or fast), both kept side by side.
        key = lambda o: (o['victim'], o['defense'], o['seed'], o.get('profile', ''))  # noqa: E731
        new = {key(o) for o in rows}
        out = sorted([o for o in old if key(o) not in new] + rows, key=key)
        Z.save_json(path, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--victim', action='append', required=True, help='zoo victim name (repeatable)')
    ap.add_argument('--defense', nargs='+', action='extend', choices=sorted(DEFENSES), help='defenses (repeatable)')
    ap.add_argument('--seeds', nargs='+', type=int, default=[0])
    ap.add_argument('--epochs', type=int, help='override the epochs / rounds of every chosen defense')
    ap.add_argument('--batch-size', type=int, help='override the batch size (default: the config\'s 256)')
    ap.add_argument('--cos-tmax', type=int, help='ft/fp CosineAnnealingLR T_max (default: the epochs; '
                                                 'BackdoorBench hard-codes 100)')
    ap.add_argument('--nad-teacher-epochs', type=int, default=None,
                    help='NAD: the teacher\'s fine-tuning epochs (paper: te_epochs 10; the fast recipe: 20, as ft)')
    ap.add_argument('--nad-single-bn-update', action='store_true',
                    help='NAD: one BN running-statistics update per step (BackdoorBench: one per forward, 3-4)')
    ap.add_argument('--ftsam-mechanics', choices=['backdoorbench', 'former-engine'],
                    help="FT-SAM: BackdoorBench's (per-batch cosine T_max 100, BN statistics from the first pass, "
                         "smoothing s/(K-1)) or what ftsam.ts did before (per-epoch cosine, BN from the perturbed "
                         "pass, s/K), whatever the recipe; the rows carry it as profile")
    ap.add_argument('--rho', type=float, help='FT-SAM: override rho')
    ap.add_argument('--npd-exact-stats', action='store_true',
                    help="NPD: set the polarizer's BatchNorm statistics from the aux set and warm up in eval mode, as npd.ts")
    ap.add_argument('--npd-attack-clip', choices=['image', 'perturbation'],
                    help="NPD: override where the attack clips (BackdoorBench: image; the fast profile: perturbation)")
    ap.add_argument('--sau-augment', action='store_true', help='random crop in SAU (BackdoorBench uses none)')
    ap.add_argument('--recipe', choices=['paper', 'fast'], default='paper',
                    help="paper: BackdoorBench's values (fewer epochs, see the README); fast: with the departures "
                         "of the engine's fast profile")
    ap.add_argument('--anp-fast', action='store_true',
                    help="ANP: the engine's fast profile (500 iterations, batch 64, mask lr 0.2)")
    ap.add_argument('--iterations', type=int, help='ANP: override the mask iterations')
    ap.add_argument('--anp-eps', type=float, help='ANP: another neuron noise bound eps (0.4 in both recipes; with '
                    '--anp-eps-keep the bound of the calibration)')
    ap.add_argument('--anp-sampling', choices=['replacement', 'epochs'],
                    help='ANP: batches drawn with replacement (BackdoorBench) or by epochs of a permutation (the engine)')
    ap.add_argument('--anp-eps-keep', type=float, help='ANP: calibrate eps so that the perturbation keeps this fraction '
                    'of the aux accuracy (the engine\'s epsKeep; off in both recipes)')
    ap.add_argument('--anp-clip-noise', action='store_true',
                    help="ANP: project the neuron noise to [-eps, eps] after its step, as the engine's anp.ts does "
                         '(BackdoorBench does not)')
    ap.add_argument('--zoo', default=os.path.join(ROOT, 'zoo'))
    ap.add_argument('--out', default=os.path.join(ROOT, 'zoo', 'reference.json'))
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--evaluate-victim', action='store_true',
                    help='evaluate the victim on the test sets before the defense, as a purification job does '
                         '(row: victimMeasured), instead of only reading its metrics from victim.json')
    ap.add_argument('--record-stream', metavar='DIR',
                    help="write each run's shuffles and crop offsets, in the order drawn, to DIR/<victim>-<defense>-"
                         'seed<S>.json, for scripts/zoo/replay-stream.ts to run the engine on the same draws')
    ap.add_argument('--float64', action='store_true',
                    help='models and images in float64 (a control for how far float32 rounding alone moves a row; '
                         'rows carry dtype and are merged as profile <profile>-float64)')
    ap.add_argument('--skip-done', action='store_true', help='skip (victim, defense, seed) already in --out')
    ap.add_argument('--verbose', '-v', action='store_true', help='per-epoch lines')
    a = ap.parse_args()
    if not a.defense:
        ap.error('--defense is required')
    torch.set_num_threads(a.threads)
    if a.float64:
        Z.DTYPE = torch.float64
    done = set()
    if a.skip_done and os.path.exists(a.out):
        with open(a.out) as f:
            old = json.load(f)
        done = {(o['victim'], o['defense'], o['seed'], o.get('profile', ''))
                for o in (old.get('rows', []) if isinstance(old, dict) else old)}
    for name in a.victim:
        v = Victim(a.zoo, name)
        for d in a.defense:
            for s in a.seeds:
                if (name, d, s, effective(d, a).get('profile', '')) in done:
                    continue
                row = run_one(v, d, s, a)
                merge(a.out, [row])


if __name__ == '__main__':
    main()
