#!/usr/bin/python3
"""How much ANP's neuron perturbation damages each zoo victim's clean task, per noise bound eps: the
perturbation of reference_defenses.run_anp (noise U(-eps, eps) on every BatchNorm channel's gamma and beta,
then one signed ascent step of eps on the cross-entropy), with the masks at 1 and BatchNorm on batch statistics
as ANP trains, on 8 batches of 64 auxiliary images, the same batches and noise draws for every eps (the
reference's anp_perturbed_accuracy, which its --anp-eps-keep calibration probes with, as the engine's epsKeep
does); prints the perturbed accuracy per eps beside the unperturbed one on the same batches.

    /usr/bin/python3 scripts/zoo/anp_damage.py preact-badnets preact8-badnets cnn-badnets
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_defenses as R  # noqa: E402

EPS = (0.1, 0.2, 0.3, 0.4)
BATCHES, BATCH, SEED = 8, 64, 0


def main():
    torch.set_num_threads(2)
    for name in sys.argv[1:]:
        v = R.Victim(os.path.join(R.ROOT, 'zoo'), name)
        x, y = R.Z.to_tensor(v.aux_x), torch.from_numpy(v.aux_y)
        model = v.model()
        nm = R.NeuronMasks(model)
        model.train()  # batch statistics, as the perturbed passes
        acc = {eps: R.anp_perturbed_accuracy(model, nm, x, y, eps, BATCH, BATCHES, SEED) for eps in (0.0, *EPS)}
        rows = [f'eps {eps}: perturbed acc {acc[eps]:.3f}' for eps in EPS]
        print(f'{name}: unperturbed acc {acc[0.0]:.3f}; ' + '; '.join(rows), flush=True)


if __name__ == '__main__':
    main()
