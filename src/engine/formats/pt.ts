/**
 * PyTorch `.pt`/`.pth` checkpoints (the zip format of torch.save since PyTorch 1.6): `<top>/data.pkl` is a
 * pickle of the object with every storage replaced by a persistent id, and `<top>/data/<key>` holds each
 * storage's raw bytes. `<top>` is whatever folder name the writer chose (torch uses the file stem or
 * `archive`), so it is discovered, not assumed.
 *
 * Reading goes through the restricted unpickler (pickle.ts): nothing from the file is executed. Only the zip
 * records the chosen state_dict refers to are decompressed, each after its declared size is checked against
 * the file and the storage it must hold.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { zipSync, type Zippable } from 'fflate';
import { InputError } from '../errors';
import { unzipChecked } from './zip';
import { PyDict, PyTuple, StorageRef, TensorRef, unpickle, type PyValue } from './pickle';
import {
  DTYPE_INFO,
  decodeTensorBytes,
  encodeTensorBytes,
  isDType,
  numel,
  writeFileAtomic,
  type StateDict,
  type StateDictLike,
  type TensorArray,
} from './state_dict';

/** Keys under which training scripts commonly nest the state_dict, in order of preference. */
export const STATE_DICT_KEYS = ['state_dict', 'model_state_dict', 'model', 'net', 'model_state', 'network', 'weights', 'params', 'module'];

const RESAVE_HINT = 're-save it with torch.save(model.state_dict(), path) from PyTorch >= 1.6 (zip format)';

export interface ReadPtResult {
  stateDict: StateDict;
  /** The top-level key the state_dict was found under, or undefined when the file is the state_dict itself. */
  key?: string;
  /** The archive's `version` record (torch writes 3). */
  version?: string;
}

/** Read the state_dict of a PyTorch checkpoint. */
export function readPt(file: string): StateDict {
  return readPtBytes(readInput(file), file).stateDict;
}

/** A torch.save archive opened: its unpickled root object (tensors as TensorRef) and what reading storages needs. */
export interface PtArchive {
  root: PyValue;
  buf: Uint8Array;
  top: string;
  byteorder: 'little' | 'big';
  version?: string;
  where: string;
}

/** Same as readPt, with where the state_dict was found. `where` names the file in errors. */
export function readPtBytes(buf: Uint8Array, where: string): ReadPtResult {
  return readStateDict(openPtArchive(buf, where));
}

/** The state_dict of an opened archive (the file itself, or the value of one of its top-level keys). */
export function readStateDict(archive: PtArchive): ReadPtResult {
  const { dict, key } = findStateDict(archive.root, archive.where);
  return { stateDict: readTensors(archive, dict), key, version: archive.version };
}

/** Unzip and unpickle a torch.save file (no storage is read yet). */
export function openPtArchive(buf: Uint8Array, where: string): PtArchive {
  if (buf.length >= 2 && buf[0] === 0x80 && buf[1] <= 5) {
    throw new InputError(`legacy (pre-1.6, non-zip) PyTorch checkpoint is not supported: ${RESAVE_HINT}`, where);
  }
  if (buf.length >= 262 && String.fromCharCode(...buf.subarray(257, 262)) === 'ustar') {
    throw new InputError(`legacy tar-format PyTorch checkpoint is not supported: ${RESAVE_HINT}`, where);
  }
  if (buf.length < 22 || buf[0] !== 0x50 || buf[1] !== 0x4b) {
    throw new InputError(`not a PyTorch checkpoint (not a zip archive): ${RESAVE_HINT}`, where);
  }

  // Pass 1: the small records only. The filter sees each entry's declared sizes before fflate allocates.
  const small = unzipChecked(buf, where, (name) => /^[^/]+\/(data\.pkl|version|\.data\/version|byteorder)$/.test(name), { maxEntry: 64 << 20, hint: RESAVE_HINT });
  const pkls = Object.keys(small).filter((n) => n.endsWith('/data.pkl'));
  if (pkls.length !== 1) {
    throw new InputError(pkls.length ? 'archive holds more than one data.pkl' : `archive has no <folder>/data.pkl: not a torch.save file (${RESAVE_HINT})`, where);
  }
  const top = pkls[0].slice(0, -'/data.pkl'.length);
  const text = (n: string): string | undefined => (small[`${top}/${n}`] ? Buffer.from(small[`${top}/${n}`]).toString('latin1').trim() : undefined);
  const version = text('version') ?? text('.data/version');
  const order = text('byteorder') ?? 'little';
  if (order !== 'little' && order !== 'big') throw new InputError(`unknown byteorder record "${order.slice(0, 20)}"`, where);
  const byteorder: 'little' | 'big' = order;

  const root = unpickle(small[pkls[0]], { where });
  return { root, buf, top, byteorder, version, where };
}

/** The tensors of `dict` read from the archive: only the storages they use are decompressed, each checked. */
export function readTensors(archive: PtArchive, dict: Map<string, TensorRef>): StateDict {
  const { buf, top, byteorder, where } = archive;
  // Pass 2: only the storages these tensors use, each checked against the size the pickle declares.
  const refs = new Map<string, TensorRef[]>();
  for (const [, t] of dict) {
    const l = refs.get(t.storage.key) ?? [];
    l.push(t);
    refs.set(t.storage.key, l);
  }
  const wanted = new Set([...refs.keys()].map((k) => `${top}/data/${k}`));
  const raw = unzipChecked(buf, where, (name) => wanted.has(name), { maxEntry: Infinity, hint: RESAVE_HINT });
  const storages = new Map<string, TensorArray>();
  for (const [k, ts] of refs) {
    const s = ts[0].storage;
    for (const t of ts) {
      if (t.storage.dtype !== s.dtype || t.storage.numel !== s.numel) throw new InputError(`storage ${k} is declared with two different types or sizes`, where);
    }
    const bytes = raw[`${top}/data/${k}`];
    if (!bytes) throw new InputError(`archive is missing storage record data/${k}`, where);
    const need = s.numel * DTYPE_INFO[s.dtype].bytes;
    if (bytes.length < need) throw new InputError(`storage data/${k} has ${bytes.length} bytes, its tensors need ${need}`, where);
    storages.set(k, decodeTensorBytes(bytes, s.dtype, s.numel, byteorder === 'little'));
  }

  // Many tensors may view one storage (tied weights). Each view is materialised as its own copy, so a hostile
  // file could list one large storage thousands of times; cap the copies at a small multiple of the storages.
  let storageElems = 0;
  for (const s of storages.values()) storageElems += s.length;
  let budget = 4 * storageElems + (1 << 20);
  const sd: StateDict = new Map();
  for (const [name, t] of dict) {
    checkView(storages.get(t.storage.key)!.length, t, name, where);
    budget -= numel(t.shape);
    if (budget < 0) throw new InputError(`tensors view their storages more than 4 times over (at ${name})`, where);
    sd.set(name, { shape: t.shape, dtype: t.storage.dtype, data: view(storages.get(t.storage.key)!, t) });
  }
  return sd;
}

/** A view must stay inside its storage, and cannot hold more elements than it (stride-0 repetition). */
function checkView(storageLen: number, t: TensorRef, name: string, where: string): void {
  const count = numel(t.shape);
  if (!Number.isSafeInteger(count)) throw new InputError(`tensor ${name} has an impossible shape`, where);
  if (t.offset < 0 || t.stride.some((s) => s < 0)) throw new InputError(`tensor ${name} has a negative offset or stride`, where);
  if (count > 0) {
    let last = t.offset;
    for (let i = 0; i < t.shape.length; i++) last += (t.shape[i] - 1) * t.stride[i];
    if (last >= storageLen) throw new InputError(`tensor ${name} reaches element ${last} of a storage with ${storageLen}`, where);
  }
  // More elements than the storage means an expanded (stride-0) view: a few bytes of file could ask for
  // gigabytes. Parameters are never saved that way.
  if (count > storageLen) throw new InputError(`tensor ${name} repeats storage elements (an expanded view): save it with .contiguous()`, where);
}

/** The tensor `t` (already checked by checkView) as its own contiguous row-major copy. */
function view(storage: TensorArray, t: TensorRef): TensorArray {
  const count = numel(t.shape);
  const ctor = storage.constructor as { new (n: number): TensorArray };
  // Contiguous (row-major) views are one slice; anything else (transposes, expands, slices) is gathered.
  let contiguous = true;
  let expect = 1;
  for (let i = t.shape.length - 1; i >= 0; i--) {
    if (t.shape[i] !== 1 && t.stride[i] !== expect) contiguous = false;
    expect *= t.shape[i];
  }
  if (contiguous || count === 0) return storage.slice(t.offset, t.offset + count) as TensorArray;
  const out = new ctor(count) as TensorArray & { [i: number]: number | bigint };
  const src = storage as TensorArray & { [i: number]: number | bigint };
  const nd = t.shape.length;
  const idx = new Array<number>(nd).fill(0);
  let off = t.offset;
  for (let i = 0; i < count; i++) {
    out[i] = src[off];
    for (let d = nd - 1; d >= 0; d--) {
      idx[d]++;
      off += t.stride[d];
      if (idx[d] < t.shape[d]) break;
      off -= t.stride[d] * t.shape[d];
      idx[d] = 0;
    }
  }
  return out;
}

/** A dict with string keys and only tensors as values. */
export function asTensorDict(v: PyValue): Map<string, TensorRef> | undefined {
  if (!(v instanceof PyDict) || v.map.size === 0) return undefined;
  const out = new Map<string, TensorRef>();
  for (const [k, t] of v.map) {
    if (typeof k !== 'string' || !(t instanceof TensorRef)) return undefined;
    out.set(k, t);
  }
  return out;
}

/** The state_dict is the file itself, or one value of a top-level dict (checkpoint dicts with epochs, optimizers...). */
function findStateDict(root: PyValue, where: string): { dict: Map<string, TensorRef>; key?: string } {
  const direct = asTensorDict(root);
  if (direct) return { dict: direct };
  if (!(root instanceof PyDict)) throw new InputError(`checkpoint holds a ${describe(root)}, not a state_dict: ${RESAVE_HINT}`, where);
  const candidates = new Map<string, Map<string, TensorRef>>();
  for (const [k, v] of root.map) {
    const d = typeof k === 'string' ? asTensorDict(v) : undefined;
    if (d) candidates.set(k as string, d);
  }
  for (const k of STATE_DICT_KEYS) {
    const d = candidates.get(k);
    if (d) return { dict: d, key: k };
  }
  if (candidates.size === 1) {
    const [[k, d]] = [...candidates];
    return { dict: d, key: k };
  }
  const keys = [...root.map.keys()].filter((k) => typeof k === 'string').slice(0, 12).join(', ');
  if (candidates.size > 1) throw new InputError(`checkpoint holds several tensor dicts (${[...candidates.keys()].join(', ')}); save only the model's state_dict`, where);
  throw new InputError(`no state_dict found in the checkpoint (top-level keys: ${keys || 'none'}): ${RESAVE_HINT}`, where);
}

function describe(v: PyValue): string {
  if (v === null) return 'None';
  if (Array.isArray(v)) return 'list';
  if (v instanceof PyTuple) return 'tuple';
  if (v instanceof TensorRef) return 'single tensor';
  if (v instanceof PyDict) return 'dict';
  return typeof v;
}

function readInput(file: string): Uint8Array {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new InputError(`cannot read the checkpoint: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, file);
  }
}

// ---- writing ----------------------------------------------------------------------------------------------

const STORAGE_CLASS: Record<string, string> = {
  float32: 'FloatStorage',
  float64: 'DoubleStorage',
  float16: 'HalfStorage',
  bfloat16: 'BFloat16Storage',
  int64: 'LongStorage',
  int32: 'IntStorage',
  int16: 'ShortStorage',
  int8: 'CharStorage',
  uint8: 'ByteStorage',
  bool: 'BoolStorage',
};

/**
 * The data.pkl of a state_dict, written with only the opcodes and globals torch's weights_only unpickler
 * (and ours) accept: protocol 2, GLOBAL, MARK/TUPLE*, BININT, BININT1, BININT2, LONG1, BINUNICODE, BINPERSID, REDUCE,
 * EMPTY_DICT/SETITEMS, NEWFALSE, EMPTY_TUPLE. Layout mirrors what torch.save emits for an OrderedDict.
 */
export function encodeStateDictPickle(entries: Array<{ name: string; key: string; dtype: string; shape: readonly number[] }>): Uint8Array {
  const parts: number[] = [];
  const byte = (...b: number[]): void => {
    for (const x of b) parts.push(x);
  };
  const ascii = (s: string): void => {
    for (let i = 0; i < s.length; i++) parts.push(s.charCodeAt(i));
  };
  const global = (module: string, name: string): void => {
    byte(0x63);
    ascii(`${module}\n${name}\n`);
  };
  const unicode = (s: string): void => {
    const b = Buffer.from(s, 'utf8');
    byte(0x58, b.length & 0xff, (b.length >>> 8) & 0xff, (b.length >>> 16) & 0xff, (b.length >>> 24) & 0xff);
    for (const x of b) parts.push(x);
  };
  const int = (v: number): void => {
    if (v >= 0 && v < 256) byte(0x4b, v);
    else if (v >= 0 && v < 65536) byte(0x4d, v & 0xff, v >>> 8);
    else if (v >= -(2 ** 31) && v < 2 ** 31) byte(0x4a, v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
    else {
      // LONG1: minimal little-endian two's complement
      let x = BigInt(v);
      const bs: number[] = [];
      do {
        bs.push(Number(x & 0xffn));
        x >>= 8n;
      } while (!((x === 0n && !(bs[bs.length - 1] & 0x80)) || (x === -1n && bs[bs.length - 1] & 0x80)));
      byte(0x8a, bs.length, ...bs);
    }
  };
  const intTuple = (xs: readonly number[]): void => {
    if (xs.length === 0) return byte(0x29);
    if (xs.length > 3) byte(0x28);
    for (const x of xs) int(x);
    byte(xs.length === 1 ? 0x85 : xs.length === 2 ? 0x86 : xs.length === 3 ? 0x87 : 0x74);
  };
  const emptyOrderedDict = (): void => {
    global('collections', 'OrderedDict');
    byte(0x29, 0x52); // EMPTY_TUPLE REDUCE
  };

  byte(0x80, 2); // PROTO 2
  emptyOrderedDict();
  if (entries.length) byte(0x28); // MARK for SETITEMS
  for (const e of entries) {
    unicode(e.name);
    global('torch._utils', '_rebuild_tensor_v2');
    byte(0x28); // MARK: the argument tuple
    byte(0x28); // MARK: the persistent id tuple
    unicode('storage');
    global('torch', STORAGE_CLASS[e.dtype]);
    unicode(e.key);
    unicode('cpu');
    int(numel(e.shape));
    byte(0x74, 0x51); // TUPLE BINPERSID
    int(0); // storage offset
    intTuple(e.shape);
    const stride: number[] = [];
    let s = 1;
    for (let i = e.shape.length - 1; i >= 0; i--) {
      stride.unshift(s);
      s *= e.shape[i];
    }
    intTuple(stride);
    byte(0x89); // requires_grad False
    emptyOrderedDict(); // backward hooks
    byte(0x74, 0x52); // TUPLE REDUCE
  }
  if (entries.length) byte(0x75); // SETITEMS
  byte(0x2e); // STOP
  return Uint8Array.from(parts);
}

/**
 * Write a state_dict as a torch zip checkpoint that `torch.load(f, weights_only=True)` accepts. Storage records
 * are stored uncompressed and 64-byte aligned like torch's own writer (so loaders can map them directly).
 */
export function encodePt(sd: StateDictLike, archiveName = 'archive'): Uint8Array {
  if (!/^[A-Za-z0-9_.-]{1,100}$/.test(archiveName)) throw new Error(`bad archive name ${archiveName}`);
  const entries: Array<{ name: string; key: string; dtype: string; shape: readonly number[] }> = [];
  const records: Array<[string, Uint8Array]> = [];
  let i = 0;
  for (const [name, t] of sd) {
    if (!isDType(t.dtype)) throw new Error(`cannot write dtype ${t.dtype} (${name})`);
    const key = String(i++);
    entries.push({ name, key, dtype: t.dtype, shape: t.shape });
    records.push([`${archiveName}/data/${key}`, encodeTensorBytes(t, name)]);
  }
  const all: Array<[string, Uint8Array]> = [
    [`${archiveName}/data.pkl`, encodeStateDictPickle(entries)],
    [`${archiveName}/byteorder`, Buffer.from('little')],
    ...records,
    [`${archiveName}/version`, Buffer.from('3\n')],
  ];
  // fflate writes local headers back to back in insertion order: 30 bytes + name + extra field, then data.
  // Pad each record's extra field (torch uses the id "FB") so its data starts on a 64-byte boundary.
  const files: Zippable = {};
  let offset = 0;
  for (const [name, data] of all) {
    const base = offset + 30 + Buffer.byteLength(name);
    const pad = (64 - ((base + 4) % 64)) % 64;
    const extra = { 0x4246: new Uint8Array(pad) };
    files[name] = [data, { level: 0, extra, mtime: new Date('1980-01-01T00:00:00') }];
    offset = base + 4 + pad + data.length;
  }
  return zipSync(files);
}

/** Write a state_dict to `file` as a torch checkpoint, atomically (temp file + rename). */
export function writePt(sd: StateDictLike, file: string): void {
  const stem = path.basename(file).replace(/\.[^.]*$/, '').replace(/[^A-Za-z0-9_.-]/g, '_') || 'archive';
  writeFileAtomic(file, encodePt(sd, stem.slice(0, 100)));
}
