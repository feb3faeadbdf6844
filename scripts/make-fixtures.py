#!/usr/bin/python3
"""Write the small checkpoint fixtures of the state_dict I/O tests to test/fixtures/.

Run with the system Python that has PyTorch (Debian python3-torch):  /usr/bin/python3 scripts/make-fixtures.py

- tiny.pt / tiny.safetensors: one state_dict with every dtype we read, a non-contiguous (transposed) view,
  a view at a storage offset and two tensors sharing one storage.
- nested_state_dict.pt: {'epoch', 'state_dict', 'optimizer', 'best_acc'} as training scripts save it.
- nested_model.pt: BackdoorBench-style {'model': state_dict, ...}.
- legacy.pt: the pre-1.6 non-zip format (_use_new_zipfile_serialization=False).
- containers_p2.pkl / containers_p4.pkl: plain Python containers for the pickle reader.
- mal_*.pt: zip archives whose data.pkl would run a command under a normal unpickler. They are assembled
  from raw opcodes; nothing here unpickles them, so nothing runs. Each payload would create a marker file
  (MARKERS below) that the tests assert never appears.
- expected.json: every tensor's dtype, shape and values (tiny, so exact values rather than summaries).
- parity_*.{pt,safetensors,onnx} and parity.safetensors / parity.json: small networks in the layouts users
  bring (BackdoorBench PreAct-ResNet18 at two widths with 1 and 3 input channels, torchvision-style
  ResNet-18, the CIFAR ResNet-18 saved from DataParallel, VGG-BN with and without the adaptive pool, a
  plain CNN exported to ONNX in eval mode so BN is folded, and a graph using the other ONNX ops we import),
  with random BN statistics, fixed inputs and PyTorch's logits for them.
"""
import collections
import io
import json
import os
import pickle
import struct
import zipfile

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures')
MARKER_DIR = '/tmp'
MARKERS = {
    'system': f'{MARKER_DIR}/backdoor-audit-pickle-marker-system',
    'eval': f'{MARKER_DIR}/backdoor-audit-pickle-marker-eval',
    'popen': f'{MARKER_DIR}/backdoor-audit-pickle-marker-popen',
    'stack_global': f'{MARKER_DIR}/backdoor-audit-pickle-marker-stack-global',
    'inst': f'{MARKER_DIR}/backdoor-audit-pickle-marker-inst',
    'hidden': f'{MARKER_DIR}/backdoor-audit-pickle-marker-hidden',
}


def tiny_state_dict():
    g = torch.Generator().manual_seed(7)
    sd = collections.OrderedDict()
    sd['conv1.weight'] = torch.randn(4, 3, 3, 3, generator=g)
    sd['conv1.bias'] = torch.randn(4, generator=g)
    sd['bn1.weight'] = torch.rand(4, generator=g) + 0.5
    sd['bn1.running_mean'] = torch.randn(4, generator=g)
    sd['bn1.num_batches_tracked'] = torch.tensor(123456789012, dtype=torch.int64)
    # Non-contiguous: a transpose, saved by torch as the original storage with swapped strides.
    sd['linear.weight'] = torch.randn(5, 2, generator=g).t()
    assert not sd['linear.weight'].is_contiguous()
    # A view at a storage offset, sharing the storage with another entry.
    base = torch.arange(20, dtype=torch.float32) * 0.25
    sd['shared.full'] = base
    sd['shared.slice'] = base[5:11].view(2, 3)
    # Every-other-element view: stride 2.
    sd['strided.even'] = (torch.arange(10, dtype=torch.float32) - 3.5)[::2]
    sd['extra.float64'] = torch.tensor([1.0 / 3.0, -2.5, 1e-300], dtype=torch.float64)
    sd['extra.float16'] = torch.tensor([0.5, -1.25, 65504.0, 6e-8], dtype=torch.float16)
    sd['extra.bfloat16'] = torch.tensor([1.0, -3.140625, 1e30], dtype=torch.bfloat16)
    sd['extra.int32'] = torch.tensor([-7, 0, 2147483647], dtype=torch.int32)
    sd['extra.int16'] = torch.tensor([-300, 300], dtype=torch.int16)
    sd['extra.int8'] = torch.tensor([-128, 5], dtype=torch.int8)
    sd['extra.uint8'] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd['extra.bool'] = torch.tensor([True, False, True])
    sd['extra.scalar'] = torch.tensor(2.75)
    sd['extra.empty'] = torch.zeros(0, 3)
    return sd


ST_DTYPES = {
    torch.float32: 'F32', torch.float64: 'F64', torch.float16: 'F16', torch.bfloat16: 'BF16',
    torch.int64: 'I64', torch.int32: 'I32', torch.int16: 'I16', torch.int8: 'I8',
    torch.uint8: 'U8', torch.bool: 'BOOL',
}
DTYPE_NAMES = {
    torch.float32: 'float32', torch.float64: 'float64', torch.float16: 'float16', torch.bfloat16: 'bfloat16',
    torch.int64: 'int64', torch.int32: 'int32', torch.int16: 'int16', torch.int8: 'int8',
    torch.uint8: 'uint8', torch.bool: 'bool',
}


def raw_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_safetensors(sd, path, metadata=None):
    """By hand (the safetensors package may be missing): u64 header length, JSON header, data."""
    header, chunks, off = {}, [], 0
    if metadata:
        header['__metadata__'] = metadata
    for name, t in sd.items():
        b = raw_bytes(t)
        header[name] = {'dtype': ST_DTYPES[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b' ' * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


def expected(sd):
    out = {}
    for name, t in sd.items():
        v = t.contiguous()
        if t.dtype == torch.int64:
            vals = [str(x) for x in v.flatten().tolist()]  # exact, past 2^53
        elif t.dtype == torch.bool:
            vals = [1 if x else 0 for x in v.flatten().tolist()]
        else:
            vals = v.flatten().tolist()
            if v.is_floating_point():
                vals = [float(x) for x in vals]
        out[name] = {
            'dtype': DTYPE_NAMES[t.dtype],
            'shape': list(t.shape),
            'values': vals,
            'sum': float(v.double().sum()) if t.numel() else 0.0,
        }
    return out


# ---- raw pickle opcodes (pickletools names) --------------------------------------------------------------

def op_global(module, name):
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def op_unicode(s):
    b = s.encode()
    return b'X' + struct.pack('<I', len(b)) + b


def op_short_unicode(s):
    b = s.encode()
    return b'\x8c' + bytes([len(b)]) + b


MARK, TUPLE, REDUCE, STOP, LIST, EMPTY_TUPLE, SETITEMS, EMPTY_DICT = b'(', b't', b'R', b'.', b'l', b')', b'u', b'}'
PROTO2 = b'\x80\x02'


def fixed_info(name):
    """Zip entries with a fixed timestamp, so re-running the script gives identical fixtures."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def zip_with_pickle(path, pkl, top='archive'):
    """A zip laid out like torch.save's, holding `pkl` as data.pkl (plus one honest storage)."""
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
        z.writestr(fixed_info(f'{top}/data.pkl'), pkl)
        z.writestr(fixed_info(f'{top}/data/0'), struct.pack('<4f', 1, 2, 3, 4))
        z.writestr(fixed_info(f'{top}/version'), '3\n')


def malicious():
    m = {}
    # posix.system('touch <marker>') at the top level.
    m['mal_system.pt'] = PROTO2 + op_global('posix', 'system') + MARK + op_unicode(f'touch {MARKERS["system"]}') + TUPLE + REDUCE + STOP
    # builtins.eval(...)
    code = f"open({MARKERS['eval']!r}, 'w').close()"
    m['mal_eval.pt'] = PROTO2 + op_global('builtins', 'eval') + MARK + op_unicode(code) + TUPLE + REDUCE + STOP
    # subprocess.Popen(['touch', marker])
    m['mal_popen.pt'] = (PROTO2 + op_global('subprocess', 'Popen') + MARK + MARK + op_unicode('touch')
                         + op_unicode(MARKERS['popen']) + LIST + TUPLE + REDUCE + STOP)
    # Protocol 4 STACK_GLOBAL form of os.system.
    m['mal_stack_global.pt'] = (b'\x80\x04' + op_short_unicode('os') + op_short_unicode('system') + b'\x93'
                                + op_short_unicode(f'touch {MARKERS["stack_global"]}') + b'\x85' + REDUCE + STOP)
    # INST: import-and-call in one opcode.
    m['mal_inst.pt'] = PROTO2 + MARK + op_unicode(f'touch {MARKERS["inst"]}') + b'i' + b'os\nsystem\n' + STOP
    # Hidden inside an otherwise valid state_dict: the second value is os.system(...) instead of a tensor.
    tensor = (op_global('torch._utils', '_rebuild_tensor_v2') + MARK
              + MARK + op_unicode('storage') + op_global('torch', 'FloatStorage') + op_unicode('0') + op_unicode('cpu') + b'K\x04' + TUPLE + b'Q'
              + b'K\x00' + b'K\x04\x85' + b'K\x01\x85' + b'\x89' + op_global('collections', 'OrderedDict') + EMPTY_TUPLE + REDUCE
              + TUPLE + REDUCE)
    m['mal_hidden.pt'] = (PROTO2 + op_global('collections', 'OrderedDict') + EMPTY_TUPLE + REDUCE + MARK
                          + op_unicode('fc.weight') + tensor
                          + op_unicode('fc.bias') + op_global('posix', 'system') + MARK + op_unicode(f'touch {MARKERS["hidden"]}') + TUPLE + REDUCE
                          + SETITEMS + STOP)
    # An allowed global used the wrong way: calling a storage class (torch would allocate/parse from args).
    m['mal_call_storage.pt'] = PROTO2 + op_global('torch', 'FloatStorage') + MARK + b'K\x04' + TUPLE + REDUCE + STOP
    return m


# ---- parity networks (written here from the published architectures; torchvision is not required) -------

nn = torch.nn
F = torch.nn.functional


class PreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, 'shortcut') else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """BackdoorBench models/preact_resnet.py, with the width and input channels as parameters."""
    def __init__(self, width, in_ch, num_classes):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_ch, width, 3, 1, 1, bias=False)
        self.layer1 = self._layer(width, 1)
        self.layer2 = self._layer(2 * width, 2)
        self.layer3 = self._layer(4 * width, 2)
        self.layer4 = self._layer(8 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(8 * width, num_classes)

    def _layer(self, planes, stride):
        layers = []
        for s in [stride, 1]:
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


class BasicBlock(nn.Module):
    def __init__(self, inp, planes, stride, proj_name):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.proj_name = proj_name
        if stride != 1 or inp != planes:
            setattr(self, proj_name, nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = getattr(self, self.proj_name)(x) if hasattr(self, self.proj_name) else x
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's structure and names (stem='imagenet'), or the CIFAR variant with a 3x3
    stem, no max pool and kuangliu's names (shortcut, linear)."""
    def __init__(self, width, in_ch, num_classes, stem='imagenet'):
        super().__init__()
        proj, head = ('downsample', 'fc') if stem == 'imagenet' else ('shortcut', 'linear')
        if stem == 'imagenet':
            self.conv1 = nn.Conv2d(in_ch, width, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_ch, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == 'imagenet' else nn.Identity()
        inp = width
        for i in range(4):
            planes = width * 2 ** i
            blocks = [BasicBlock(inp, planes, 2 if i > 0 else 1, proj), BasicBlock(planes, planes, 1, proj)]
            setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
            inp = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.head_name = head
        setattr(self, head, nn.Linear(inp, num_classes))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return getattr(self, self.head_name)(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """torchvision.models.vgg's structure and names: features, avgpool, classifier."""
    def __init__(self, cfg, in_ch, num_classes, avgpool=7, hidden=64):
        super().__init__()
        layers, c = [], in_ch
        for v in cfg:
            if v == 'M':
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((avgpool, avgpool)) if avgpool else nn.Identity()
        self.flat = c * avgpool * avgpool if avgpool else None
        self.classifier = nn.Sequential(nn.Linear(self.flat or c * 16, hidden), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class PlainCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
                                 nn.Flatten(), nn.Linear(8 * 6 * 6, 10))

    def forward(self, x):
        return self.net(x)


class OpsNet(nn.Module):
    """Every other op the ONNX importer handles: Concat, Add, MaxPool with padding, GlobalAveragePool,
    Reshape, MatMul, Identity/Dropout and Softmax."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Conv2d(8, 4, (3, 3), padding=1, bias=False)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.drop = nn.Dropout(0.3)
        self.w = nn.Parameter(torch.randn(8, 5) * 0.3)
        self.fc = nn.Linear(5, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = torch.cat([self.a(x), self.b(x)], 1)
        x = self.pool(F.relu(self.mix(y) + x))
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.reshape(x, (-1, 8))
        x = self.drop(x)
        return torch.softmax(self.fc(torch.matmul(x, self.w)), dim=1)


def randomize_bn(model, g):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.2
            m.running_mean.data = torch.randn(n, generator=g) * 0.2
            m.running_var.data = torch.rand(n, generator=g) + 0.5
            m.num_batches_tracked.fill_(17)
    return model.eval()


def parity_fixtures():
    """(name, model, input NCHW, formats, facts the reader must find)"""
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    cases = [
        ('preact_w4_c1', PreActResNet18(4, 1, 10), (2, 1, 28, 28), ['pt', 'safetensors', 'onnx'], {'arch': 'preact-resnet18', 'numClasses': 10}),
        ('preact_w6_c3', PreActResNet18(6, 3, 43), (2, 3, 32, 32), ['pt', 'safetensors', 'onnx'], {'arch': 'preact-resnet18', 'numClasses': 43}),
        ('resnet18_w4', ResNet18(4, 3, 7), (2, 3, 64, 64), ['pt', 'safetensors', 'onnx'], {'arch': 'resnet18', 'numClasses': 7}),
        ('resnet18_cifar_dp', ResNet18(4, 3, 10, stem='cifar'), (2, 3, 32, 32), ['pt'], {'arch': 'resnet18', 'numClasses': 10}),
        ('vgg_bn', VGG([8, 'M', 16, 'M', 16, 16, 'M'], 3, 10, avgpool=7), (2, 3, 28, 28), ['pt', 'safetensors'], {'arch': 'vgg7-bn', 'numClasses': 10}),
        ('vgg_bn_flat', VGG([8, 8, 'M', 16, 'M', 16, 'M'], 1, 10, avgpool=0), (2, 1, 32, 32), ['pt', 'safetensors', 'onnx'], {'arch': 'vgg7-bn', 'numClasses': 10, 'inputShape': [32, 32, 1]}),
        ('plain_bn', PlainCnn(), (2, 1, 28, 28), ['onnx'], {'numClasses': 10, 'inputShape': [28, 28, 1]}),
        ('ops', OpsNet(), (2, 3, 16, 16), ['onnx'], {'numClasses': 5, 'inputShape': [16, 16, 3]}),
    ]
    tensors, index = collections.OrderedDict(), {}
    for name, model, shape, formats, facts in cases:
        randomize_bn(model, g)
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            y = model(x)
        sd = model.state_dict()
        if name.endswith('_dp'):
            sd = collections.OrderedDict(('module.' + k, v) for k, v in sd.items())
        files = {}
        for fmt in formats:
            fn = f'parity_{name}.{fmt}'
            p = os.path.join(OUT, fn)
            if fmt == 'pt':
                torch.save(sd, p)
            elif fmt == 'safetensors':
                write_safetensors(collections.OrderedDict((k, v.contiguous()) for k, v in sd.items()), p)
            else:
                torch.onnx.export(model, x, p, opset_version=13, input_names=['input'], output_names=['logits'],
                                  training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
            files[fmt] = fn
        tensors[f'{name}.input'] = x.contiguous()
        tensors[f'{name}.logits'] = y.contiguous()
        index[name] = {'files': files, **facts}
    write_safetensors(tensors, os.path.join(OUT, 'parity.safetensors'))
    with open(os.path.join(OUT, 'parity.json'), 'w') as f:
        json.dump(index, f, indent=1)
        f.write('\n')


def main():
    os.makedirs(OUT, exist_ok=True)
    parity_fixtures()
    sd = tiny_state_dict()
    torch.save(sd, os.path.join(OUT, 'tiny.pt'))
    write_safetensors(collections.OrderedDict((k, v.contiguous()) for k, v in sd.items()), os.path.join(OUT, 'tiny.safetensors'),
                      {'format': 'pt', 'source': 'make-fixtures.py'})

    small = collections.OrderedDict((k, sd[k]) for k in ['conv1.weight', 'conv1.bias', 'bn1.num_batches_tracked', 'linear.weight'])
    params = [torch.nn.Parameter(small['conv1.weight'].clone()), torch.nn.Parameter(small['conv1.bias'].clone())]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    opt.step()
    torch.save({'epoch': 3, 'state_dict': small, 'optimizer': opt.state_dict(), 'best_acc': 0.9375, 'arch': 'tiny',
                'tags': ('a', 'b'), 'big': 2 ** 70, 'neg': -5, 'blob': b'\x00\xffxyz'},
               os.path.join(OUT, 'nested_state_dict.pt'))
    torch.save({'model': small, 'clean_acc': 0.5, 'epoch_current': 1}, os.path.join(OUT, 'nested_model.pt'))
    torch.save(small, os.path.join(OUT, 'legacy.pt'), _use_new_zipfile_serialization=False)

    # Checkpoints the reader must not guess about: two tensor dicts under unknown keys, and none at all.
    torch.save({'ema': small, 'teacher': small}, os.path.join(OUT, 'ambiguous.pt'))
    torch.save({'epoch': 3, 'acc': 0.5}, os.path.join(OUT, 'no_state_dict.pt'))

    # A real module's state_dict: it carries the `_metadata` attribute (set with BUILD in the pickle).
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    torch.save(net.state_dict(), os.path.join(OUT, 'module_sd.pt'))

    # Archive whose folder is not the file stem nor "archive": the reader must discover it.
    buf = io.BytesIO()
    torch.save(small, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(os.path.join(OUT, 'renamed_top.pt'), 'w') as zout:
        for info in zin.infolist():
            zout.writestr(fixed_info('some-other_top/' + info.filename.split('/', 1)[1]), zin.read(info.filename))

    containers = {
        'none': None, 'true': True, 'false': False, 'int': 7, 'neg': -300, 'i32': 2 ** 31 - 1, 'big': 2 ** 70,
        'negbig': -(2 ** 63), 'float': 1.5, 'str': 'héllo', 'bytes': b'\x00\x01\xff', 'list': [1, [2, 3], 'x'],
        'tuple': (1, 'two', 3.0), 'empty_tuple': (), 'dict': {'a': 1, 2: 'b'}, 'set': {5},
        'ordered': collections.OrderedDict([('z', 1), ('y', 2)]),
    }
    shared = [1, 2]
    containers['shared'] = [shared, shared]  # memo: both entries are one list
    for proto in (2, 4):
        with open(os.path.join(OUT, f'containers_p{proto}.pkl'), 'wb') as f:
            f.write(pickle.dumps(containers, protocol=proto))

    for name, pkl in malicious().items():
        zip_with_pickle(os.path.join(OUT, name), pkl)

    exp = {
        'tiny': expected(sd),
        'small': expected(small),
        'module_sd': expected(net.state_dict()),
        'markers': MARKERS,
        'torch_version': torch.__version__,
    }
    with open(os.path.join(OUT, 'expected.json'), 'w') as f:
        json.dump(exp, f, indent=1)
        f.write('\n')
    for n in sorted(os.listdir(OUT)):
        print(f'{n:28s} {os.path.getsize(os.path.join(OUT, n)):8d} bytes')


if __name__ == '__main__':
    main()
