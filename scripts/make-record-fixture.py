"""
A BackdoorBench attack record in its current layout (test/fixtures/attacks/record-v2/), for
test/unit/attacks-user.test.ts: the PreAct-ResNet18 BadNets victim of scripts/make-attack-fixtures.py saved the way
SCLBD/BackdoorBench's utils/save_load_attack.py save_attack_result() saves it today, with `bd_test` (and `bd_train`)
as prepro_cls_DatasetBD_v2.retrieve_state() returns them (utils/bd_dataset_v2.py):

    {'bd_data_container': {'save_folder_path', 'data_dict', 'save_file_format'},
     'getitem_all', 'getitem_all_switch', 'original_index_array', 'poison_indicator', 'save_folder_path'}

where data_dict maps each poisoned sample's original index (a numpy.int64, as prepro_backdoor iterates
original_index_array) to {'path': '<save_folder_path>/<true label>/<index>.png', 'other_info': [bd_label, label]},
and each image is the PIL image BackdoorBench saved there. The paths are the attacker's (relative to where its attack
script ran); the PNGs sit next to the record as BackdoorBench leaves them (record/<name>/bd_test_dataset/...).

The poisoned test set is the non-target images of make-attack-fixtures.py's `plain` images with its BadNets patch;
`bd_train` keeps 8 of the victim's 200 poisoned training images (the same seeded draw) to stay small. expected.json
holds the ACC/ASR/RA PyTorch measures on the images read back from the PNGs.

Needs the victim made by make-attack-fixtures.py. Run with Debian's python3-torch:
/usr/bin/python3 scripts/make-record-fixture.py
"""
import importlib.util
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, '..', 'test', 'fixtures', 'attacks')
OUT = os.path.join(FIX, 'record-v2')
# Where BackdoorBench's attack script wrote the record on the attacker's machine (its args.save_path).
SAVE_PATH = '../record/badnet-preactresnet18-mnist'

spec = importlib.util.spec_from_file_location('maf', os.path.join(HERE, 'make-attack-fixtures.py'))
maf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(maf)


def container(subfolder, samples):
    """poisonedCLSDataContainer(save_folder_path, '.png') after setitem of each (index, PIL image, bd_label, label)."""
    folder = f'{SAVE_PATH}/{subfolder}'
    data_dict = {}
    for index, img, bd_label, label in samples:
        rel = f'{subfolder}/{label}/{index}.png'
        os.makedirs(os.path.dirname(os.path.join(OUT, rel)), exist_ok=True)
        img.save(os.path.join(OUT, rel))
        data_dict[np.int64(index)] = {'path': f'{folder}/{label}/{index}.png', 'other_info': [bd_label, label]}
    return {'save_folder_path': folder, 'data_dict': data_dict, 'save_file_format': '.png'}, folder


def dataset_state(subfolder, samples, length):
    """prepro_cls_DatasetBD_v2.retrieve_state() after subset() to the poisoned samples (as BackdoorBench's bd_test)."""
    poison_indicator = np.zeros(length, dtype=np.int64)
    for index, *_ in samples:
        poison_indicator[index] = 1
    data, folder = container(subfolder, samples)
    return {
        'bd_data_container': data,
        'getitem_all': True,
        'getitem_all_switch': False,
        'original_index_array': np.where(poison_indicator == 1)[0],
        'poison_indicator': poison_indicator,
        'save_folder_path': folder,
    }


def main():
    torch.set_num_threads(2)
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    sd = torch.load(os.path.join(FIX, 'victim.pt'))
    model = maf.mf.PreActResNet18(4, 1, 10)
    model.load_state_dict(sd)
    model.eval()

    xte, yte = maf.idx('t10k-images-idx3-ubyte.gz'), maf.idx('t10k-labels-idx1-ubyte.gz')
    first, n = 200, maf.N  # the `plain` images of make-attack-fixtures.py: test indices 200..263
    px, py = xte[first:first + n], yte[first:first + n]
    bd = maf.paste_patch(px)
    # BackdoorBench poisons the test images whose label the attack changes (all-to-one: not the target).
    test_samples = [(first + i, Image.fromarray(bd[i]), maf.TARGET, int(py[i])) for i in range(n) if py[i] != maf.TARGET]

    # The victim's poisoned training images: make-attack-fixtures.py's seeded draw, 8 of them.
    xtr, ytr = maf.idx('train-images-idx3-ubyte.gz')[:2000], maf.idx('train-labels-idx1-ubyte.gz')[:2000]
    poison = np.sort(np.random.RandomState(0).choice(len(xtr), 200, replace=False))[:8]
    train_samples = [(int(j), Image.fromarray(maf.paste_patch(xtr[j:j + 1])[0]), maf.TARGET, int(ytr[j])) for j in poison]

    record = {
        'model_name': 'preactresnet18',
        'num_classes': 10,
        'model': sd,
        'data_path': './data/mnist',
        'img_size': [28, 28, 1],
        'clean_data': 'mnist',
        'bd_train': dataset_state('bd_train_dataset', train_samples, len(xtr)),
        'bd_test': dataset_state('bd_test_dataset', test_samples, first + n),
    }
    torch.save(record, os.path.join(OUT, 'attack_result.pt'))

    # What PyTorch measures on the images as the PNGs hold them.
    back = np.stack([np.array(Image.open(os.path.join(OUT, 'bd_test_dataset', str(label), f'{index}.png'))) for index, _, _, label in test_samples])
    true = np.array([label for *_, label in test_samples])
    pred = maf.predict(model, back)
    clean_x, clean_y = np.load(os.path.join(FIX, 'clean-x.npy'))[..., 0], np.load(os.path.join(FIX, 'clean-y.npy'))
    expected = {
        'acc': float(np.mean(maf.predict(model, clean_x) == clean_y)),
        'images': len(test_samples),
        'asr': float(np.mean(pred == maf.TARGET)),
        'ra': float(np.mean(pred == true)),
    }
    with open(os.path.join(OUT, 'expected.json'), 'w') as f:
        json.dump(expected, f, indent=2)
    print(json.dumps(expected, indent=2))


if __name__ == '__main__':
    main()
