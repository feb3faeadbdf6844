#!/usr/bin/python3
"""How much ANP's neuron perturbation damages each zoo victim's clean task, per noise bound eps: the
perturbation of reference_defenses.run_anp (noise U(-eps, eps) on every BatchNorm channel's gamma and beta,
then one signed ascent step of eps on the cross-entropy), with the masks at 1 and BatchNorm on batch statistics
as ANP trains, on 8 batches of 64 auxiliary images; prints the perturbed accuracy and loss per eps beside the
unperturbed accuracy on the whole auxiliary set. The data for choosing eps per model (README: ANP beside
PyTorch on the zoo).

    /usr/bin/python3 scripts/zoo/anp_damage.py preact-badnets preact8-badnets cnn-badnets
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_defenses as R  # noqa: E402

EPS = (0.1, 0.2, 0.3, 0.4)
BATCHES, BATCH = 8, 64


def damage(v, eps, x, y):
    """Mean accuracy and loss of the perturbed victim over BATCHES batches drawn with a fixed seed."""
    model = v.model()
    nm = R.NeuronMasks(model)
    model.train()
    gen = torch.Generator().manual_seed(0)
    accs, losses = [], []
    for _ in range(BATCHES):
        idx = torch.randint(0, len(x), (BATCH,), generator=gen)
        xb, yb = x[idx], y[idx]
        nm.reset_noise(eps, gen)
        nm.perturbed = True
        grads = torch.autograd.grad(-F.cross_entropy(model(xb), yb), nm.noises())
        with torch.no_grad():
            for t, g in zip(nm.noises(), grads):
                t.sub_(eps * g.sign())
            logits = model(xb)
        accs.append((logits.argmax(1) == yb).float().mean().item())
        losses.append(F.cross_entropy(logits, yb).item())
    return sum(accs) / len(accs), sum(losses) / len(losses)


def main():
    torch.set_num_threads(2)
    for name in sys.argv[1:]:
        v = R.Victim(os.path.join(R.ROOT, 'zoo'), name)
        x, y = R.Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
        model = v.model()
        model.train()  # batch statistics, as the perturbed passes
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        rows = [f'eps {eps}: perturbed acc {a:.3f} loss {l:.2f}' for eps in EPS for a, l in [damage(v, eps, x, y)]]
        print(f'{name}: unperturbed acc {clean:.3f}; ' + '; '.join(rows), flush=True)


if __name__ == '__main__':
    main()
