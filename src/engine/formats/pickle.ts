/**
 * A restricted pickle reader for PyTorch checkpoints. Checkpoints come from strangers, and a normal unpickler
 * runs whatever callable the file names (`posix.system`, `builtins.eval`, ...). This reader is a data parser,
 * not a virtual machine: it knows only the opcodes a tensor state_dict pickle uses and a short list of globals,
 * each of which it *emulates* in JS (nothing is looked up or called by name). Any other global is refused at
 * the GLOBAL opcode, before a REDUCE could call it, with `refusing to load <module>.<name>` - the same policy as
 * `torch.load(weights_only=True)`.
 *
 * Resource bounds: every length in the stream is checked against the bytes that remain before anything is
 * allocated, and the stack, mark depth and memo have caps, so a hostile file cannot make us allocate more
 * than a small multiple of its own size.
 *
 * BackdoorBench's attack records (`attack_result.pt`) also hold numpy arrays (`bd_train.original_index`), pickled
 * as `numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')` followed by BUILD with the array's shape,
 * dtype and raw bytes, the dtype itself as `numpy.dtype('<i8', False, True)` plus BUILD. Those three globals are
 * accepted as data constructors only: the reader builds an NpArray (shape, dtype, bytes) itself, checks that the
 * bytes match the shape, and refuses object arrays (whose "bytes" would be a list of arbitrary objects). Numpy
 * number scalars (`numpy.core.multiarray.scalar(dtype, bytes)`: the numpy.int64 keys of the current record
 * layout's `bd_data_container.data_dict`) are read the same way, into a plain number.
 *
 * Reference for the opcode semantics: Python's Lib/pickletools.py documentation.
 */
import { InputError } from '../errors';
import type { DType } from './state_dict';

// The values a pickle can produce here live in pickle_values.ts; they are re-exported for the readers.
import { PyTuple, PyDict, PySet, PyGlobal, StorageRef, TensorRef, NpDtype, NpArray, NP_ITEM_SIZE, npScalar, type PyValue } from './pickle_values';
export { PyTuple, PyDict, PySet, PyGlobal, StorageRef, TensorRef, NpDtype, NpArray, NP_ITEM_SIZE, type PyValue };

// ---- the allow-list ---------------------------------------------------------------------------------------

/** torch storage classes -> element dtype (the legacy typed-storage names torch still pickles). */
export const STORAGE_DTYPES: Record<string, DType> = {
  FloatStorage: 'float32',
  DoubleStorage: 'float64',
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ShortStorage: 'int16',
  CharStorage: 'int8',
  ByteStorage: 'uint8',
  BoolStorage: 'bool',
};

const CALLABLES = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_tensor',
  'torch._utils._rebuild_parameter',
  'torch._utils._rebuild_parameter_with_state',
  'torch.Size',
  'torch.device',
  // Python 3 pickles `bytes` at protocol 2 as _codecs.encode(str, 'latin1'); emulated as a pure conversion.
  '_codecs.encode',
  // Counter pickles as Counter(dict): a plain dict for us (MultiStepLR's milestones in a scheduler state).
  'collections.Counter',
  // numpy arrays as data (see the header): the reconstruct helper under numpy 1 and 2 names, the dtype.
  'numpy.core.multiarray._reconstruct',
  'numpy._core.multiarray._reconstruct',
  'numpy.dtype',
  // numpy number scalars (a numpy.int64 dict key: BackdoorBench's bd_data_container.data_dict) as data.
  'numpy.core.multiarray.scalar',
  'numpy._core.multiarray.scalar',
  // Plain containers. `__builtin__` is the name Python 3 writes at protocol <= 2 (fix_imports).
  'builtins.set',
  'builtins.frozenset',
  'builtins.bytearray',
  '__builtin__.set',
  '__builtin__.frozenset',
  '__builtin__.bytearray',
]);

function isAllowedGlobal(module: string, name: string): boolean {
  if (module === 'torch' && Object.prototype.hasOwnProperty.call(STORAGE_DTYPES, name)) return true;
  // The array class, as the first argument of _reconstruct only (calling it is refused like any storage).
  if (module === 'numpy' && name === 'ndarray') return true;
  return CALLABLES.has(`${module}.${name}`);
}

// ---- the reader -------------------------------------------------------------------------------------------

export interface UnpickleOptions {
  /** File name for error messages (InputError's `where`). */
  where?: string;
  /** Caps; defaults suit checkpoints of any realistic size. */
  maxStack?: number;
  maxMarks?: number;
  maxMemo?: number;
}

const OPNAMES: Record<number, string> = {
  0x28: 'MARK', 0x2e: 'STOP', 0x30: 'POP', 0x31: 'POP_MARK', 0x32: 'DUP', 0x46: 'FLOAT', 0x49: 'INT', 0x4a: 'BININT',
  0x4b: 'BININT1', 0x4c: 'LONG', 0x4d: 'BININT2', 0x4e: 'NONE', 0x50: 'PERSID', 0x51: 'BINPERSID', 0x52: 'REDUCE',
  0x53: 'STRING', 0x54: 'BINSTRING', 0x55: 'SHORT_BINSTRING', 0x56: 'UNICODE', 0x58: 'BINUNICODE', 0x61: 'APPEND',
  0x62: 'BUILD', 0x63: 'GLOBAL', 0x64: 'DICT', 0x7d: 'EMPTY_DICT', 0x65: 'APPENDS', 0x67: 'GET', 0x68: 'BINGET',
  0x69: 'INST', 0x6a: 'LONG_BINGET', 0x6c: 'LIST', 0x5d: 'EMPTY_LIST', 0x6f: 'OBJ', 0x70: 'PUT', 0x71: 'BINPUT',
  0x72: 'LONG_BINPUT', 0x73: 'SETITEM', 0x74: 'TUPLE', 0x29: 'EMPTY_TUPLE', 0x75: 'SETITEMS', 0x47: 'BINFLOAT',
  0x80: 'PROTO', 0x81: 'NEWOBJ', 0x82: 'EXT1', 0x83: 'EXT2', 0x84: 'EXT4', 0x85: 'TUPLE1', 0x86: 'TUPLE2',
  0x87: 'TUPLE3', 0x88: 'NEWTRUE', 0x89: 'NEWFALSE', 0x8a: 'LONG1', 0x8b: 'LONG4', 0x42: 'BINBYTES',
  0x43: 'SHORT_BINBYTES', 0x8c: 'SHORT_BINUNICODE', 0x8d: 'BINUNICODE8', 0x8e: 'BINBYTES8', 0x8f: 'EMPTY_SET',
  0x90: 'ADDITEMS', 0x91: 'FROZENSET', 0x92: 'NEWOBJ_EX', 0x93: 'STACK_GLOBAL', 0x94: 'MEMOIZE', 0x95: 'FRAME',
  0x96: 'BYTEARRAY8', 0x97: 'NEXT_BUFFER', 0x98: 'READONLY_BUFFER',
};

const utf8 = new TextDecoder('utf-8', { fatal: true });

function describeValue(v: PyValue): string {
  return v === null ? 'None' : typeof v === 'object' ? (v.constructor?.name ?? 'object') : typeof v;
}
const IDENT = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

/** A global's name as shown in errors: readable when it is a dotted identifier, escaped and clipped otherwise. */
function showName(s: string): string {
  return IDENT.test(s) && s.length <= 200 ? s : JSON.stringify(s.slice(0, 80));
}

/**
 * Parse a pickle. Returns the top-level value; tensors come back as TensorRef (shape, stride, offset and a
 * StorageRef naming the archive record), never as live objects. Throws InputError for anything it refuses.
 */
export function unpickle(bytes: Uint8Array, opts: UnpickleOptions = {}): PyValue {
  const where = opts.where;
  const maxStack = opts.maxStack ?? 1 << 20;
  const maxMarks = opts.maxMarks ?? 1 << 12;
  const maxMemo = opts.maxMemo ?? 1 << 20;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.length;
  let pos = 0;
  let opPos = 0;
  let stack: PyValue[] = [];
  const metastack: PyValue[][] = [];
  const memo = new Map<number, PyValue>();

  const fail = (msg: string): never => {
    throw new InputError(`corrupt or unsupported pickle: ${msg} at byte ${opPos}`, where);
  };
  const refuse = (module: string, name: string): never => {
    throw new InputError(`refusing to load ${showName(module)}.${showName(name)}: only tensor state_dicts can be read (like torch.load(weights_only=True))`, where);
  };
  const need = (k: number): void => {
    if (k < 0 || k > n - pos) fail(`length ${k} runs past the end of the data`);
  };
  const u8 = (): number => {
    need(1);
    return bytes[pos++];
  };
  const u16 = (): number => {
    need(2);
    const v = dv.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4);
    const v = dv.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = dv.getBigUint64(pos, true);
    pos += 8;
    // Anything above the remaining length fails the `need` check that follows; clamp to keep it a number.
    return v > BigInt(n) ? n + 1 : Number(v);
  };
  const take = (k: number): Uint8Array => {
    need(k);
    const b = bytes.subarray(pos, pos + k);
    pos += k;
    return b;
  };
  const str = (b: Uint8Array): string => {
    try {
      return utf8.decode(b);
    } catch {
      return fail('string is not valid UTF-8');
    }
  };
  const latin1 = (b: Uint8Array): string => {
    let s = '';
    for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
    return s;
  };
  /** A newline-terminated line (GLOBAL/INST operands), bounded so a missing newline cannot scan forever. */
  const line = (): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0 || end - pos > 1024) fail('unterminated or overlong name');
    const s = latin1(bytes.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const push = (v: PyValue): void => {
    if (stack.length >= maxStack) fail(`stack deeper than ${maxStack}`);
    stack.push(v);
  };
  const pop = (): PyValue => {
    if (stack.length === 0) fail('stack underflow');
    return stack.pop() as PyValue;
  };
  const top = (): PyValue => {
    if (stack.length === 0) fail('stack underflow');
    return stack[stack.length - 1];
  };
  const popMark = (): PyValue[] => {
    const items = stack;
    const prev = metastack.pop();
    if (!prev) fail('no MARK to pop to');
    stack = prev as PyValue[];
    return items;
  };
  const memoPut = (i: number, v: PyValue): void => {
    if (!memo.has(i) && memo.size >= maxMemo) fail(`memo larger than ${maxMemo}`);
    memo.set(i, v);
  };
  const memoGet = (i: number): PyValue => {
    if (!memo.has(i)) fail(`memo key ${i} was never stored`);
    return memo.get(i) as PyValue;
  };
  const asInt = (v: PyValue, what: string): number => {
    if (typeof v === 'number' && Number.isSafeInteger(v)) return v;
    if (typeof v === 'boolean') return v ? 1 : 0;
    return fail(`${what} is not an integer`);
  };
  const hashable = (k: PyValue): PyValue => {
    if (k === null || typeof k === 'string' || typeof k === 'number' || typeof k === 'bigint' || typeof k === 'boolean' || k instanceof PyTuple) return k;
    return fail('unhashable dict key');
  };
  const setItems = (target: PyValue, items: PyValue[]): void => {
    if (!(target instanceof PyDict)) fail('SETITEM(S) on something that is not a dict');
    if (items.length % 2) fail('odd number of items for SETITEMS');
    const d = target as PyDict;
    for (let i = 0; i < items.length; i += 2) d.map.set(hashable(items[i]), items[i + 1]);
  };
  const toLong = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const intList = (v: PyValue, what: string): number[] => {
    const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : fail(`${what} is not a tuple`);
    return (items as PyValue[]).map((x) => asInt(x, what));
  };

  /** Emulate one allowed callable. Everything else was refused at GLOBAL; storages are not callable. */
  const call = (fn: PyValue, argsV: PyValue): PyValue => {
    if (!(fn instanceof PyGlobal)) return fail('REDUCE on something that is not a function');
    const g = fn as PyGlobal;
    if (!(argsV instanceof PyTuple)) return fail(`arguments of ${g.fullName} are not a tuple`);
    const args = (argsV as PyTuple).items;
    switch (g.fullName) {
      case 'collections.Counter': {
        const d = new PyDict();
        if (args.length === 0) return d;
        if (args.length === 1 && args[0] instanceof PyDict) {
          for (const [k, v] of args[0].map) d.map.set(k, v);
          return d;
        }
        return fail('unsupported Counter arguments');
      }
      case 'numpy.core.multiarray._reconstruct':
      case 'numpy._core.multiarray._reconstruct': {
        // (numpy.ndarray, (0,), b'b'): an empty array that BUILD fills.
        const cls = args[0];
        if (!(cls instanceof PyGlobal) || cls.fullName !== 'numpy.ndarray') return fail('_reconstruct of something other than numpy.ndarray');
        return new NpArray();
      }
      case 'numpy.core.multiarray.scalar':
      case 'numpy._core.multiarray.scalar': {
        // (dtype, raw bytes): one number of a plain number dtype, already built (byte order set).
        const [dtype, raw] = args;
        if (!(dtype instanceof NpDtype)) return fail('numpy scalar without a dtype');
        const bytes = typeof raw === 'string' ? Uint8Array.from(raw, (ch) => ch.charCodeAt(0) & 0xff) : raw;
        if (!(bytes instanceof Uint8Array)) return fail('numpy object scalars are not supported (only numbers)');
        if (bytes.length !== NP_ITEM_SIZE[dtype.str]) return fail(`numpy ${dtype.str} scalar of ${bytes.length} bytes`);
        return npScalar(dtype, bytes);
      }
      case 'numpy.dtype': {
        const t = args[0];
        const name = typeof t === 'string' ? t : t instanceof Uint8Array ? latin1(t) : undefined;
        if (!name || !Object.prototype.hasOwnProperty.call(NP_ITEM_SIZE, name)) return fail(`numpy dtype ${showName(String(name ?? describeValue(t)))} is not a plain number type`);
        return new NpDtype(name);
      }
      case 'collections.OrderedDict': {
        const d = new PyDict(true);
        if (args.length === 0) return d;
        const src = args[0];
        if (args.length === 1 && (Array.isArray(src) || src instanceof PyTuple)) {
          for (const pair of Array.isArray(src) ? src : src.items) {
            const kv = pair instanceof PyTuple ? pair.items : Array.isArray(pair) ? pair : fail('OrderedDict item is not a pair');
            if ((kv as PyValue[]).length !== 2) fail('OrderedDict item is not a pair');
            d.map.set(hashable((kv as PyValue[])[0]), (kv as PyValue[])[1]);
          }
          return d;
        }
        if (args.length === 1 && src instanceof PyDict) {
          for (const [k, v] of src.map) d.map.set(k, v);
          return d;
        }
        return fail('unsupported OrderedDict arguments');
      }
      case 'torch._utils._rebuild_tensor':
      case 'torch._utils._rebuild_tensor_v2': {
        // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
        if (args.length < 4) return fail(`${g.name} needs 4 or more arguments`);
        if (!(args[0] instanceof StorageRef)) return fail(`${g.name} without a storage`);
        const offset = asInt(args[1], 'storage offset');
        const shape = intList(args[2], 'tensor size');
        const stride = intList(args[3], 'tensor stride');
        if (shape.length !== stride.length || shape.length > 64) return fail('tensor size and stride do not match');
        return new TensorRef(args[0], offset, shape, stride);
      }
      case 'torch._utils._rebuild_parameter':
      case 'torch._utils._rebuild_parameter_with_state':
        // (data, requires_grad, backward_hooks[, state]): a Parameter is its data for a state_dict.
        if (!(args[0] instanceof TensorRef)) return fail(`${g.name} without a tensor`);
        return args[0];
      case 'torch.Size':
        if (args.length === 0) return new PyTuple([]);
        return new PyTuple(intList(args[0], 'torch.Size'));
      case 'torch.device':
        if (typeof args[0] !== 'string') return fail('torch.device without a name');
        return args.length > 1 ? `${args[0]}:${asInt(args[1], 'device index')}` : args[0];
      case '_codecs.encode': {
        if (typeof args[0] !== 'string') return fail('_codecs.encode of a non-string');
        const enc = typeof args[1] === 'string' ? args[1].toLowerCase() : 'utf-8';
        if (enc === 'latin1' || enc === 'latin-1' || enc === 'iso-8859-1') {
          const s = args[0];
          const out = new Uint8Array(s.length);
          for (let i = 0; i < s.length; i++) {
            const c = s.charCodeAt(i);
            if (c > 255) return fail('latin1 string out of range');
            out[i] = c;
          }
          return out;
        }
        if (enc === 'utf-8' || enc === 'utf8') return new Uint8Array(Buffer.from(args[0], 'utf8'));
        return fail(`unsupported encoding ${showName(String(args[1]))}`);
      }
      case 'builtins.set':
      case '__builtin__.set':
      case 'builtins.frozenset':
      case '__builtin__.frozenset': {
        const frozen = g.name === 'frozenset';
        if (args.length === 0) return new PySet([], frozen);
        const src = args[0];
        if (Array.isArray(src)) return new PySet(src.map(hashable), frozen);
        if (src instanceof PyTuple) return new PySet(src.items.map(hashable), frozen);
        return fail(`unsupported ${g.name} arguments`);
      }
      case 'builtins.bytearray':
      case '__builtin__.bytearray':
        if (args.length === 0) return new Uint8Array(0);
        if (args[0] instanceof Uint8Array) return new Uint8Array(args[0]); // a copy (a Buffer.slice would alias)
        return fail('unsupported bytearray arguments');
      default:
        // Storage classes are allowed as persistent-id tags only.
        throw new InputError(`refusing to call ${g.fullName}`, where);
    }
  };

  /** persistent_id: only ('storage', torch.<X>Storage, key, location, numel). */
  const persistentLoad = (pid: PyValue): PyValue => {
    if (!(pid instanceof PyTuple)) return fail('persistent id is not a tuple');
    const it = (pid as PyTuple).items;
    const tag = it[0] instanceof Uint8Array ? latin1(it[0]) : it[0];
    if (tag !== 'storage') return fail(`only storages may be loaded by persistent id, not ${showName(String(tag))}`);
    if (it.length !== 5) return fail('storage persistent id needs 5 fields');
    const cls = it[1];
    if (!(cls instanceof PyGlobal) || cls.module !== 'torch' || !STORAGE_DTYPES[cls.name]) return fail('storage persistent id without a storage type');
    const key = it[2] instanceof Uint8Array ? latin1(it[2]) : it[2];
    const loc = it[3] instanceof Uint8Array ? latin1(it[3]) : it[3];
    // Keys name archive records (data/<key>); torch uses decimal numbers. Anything path-like is refused.
    if (typeof key !== 'string' || !/^[A-Za-z0-9_]{1,64}$/.test(key)) return fail('bad storage key');
    if (typeof loc !== 'string') return fail('bad storage location');
    const count = asInt(it[4], 'storage size');
    if (count < 0) return fail('negative storage size');
    return new StorageRef(STORAGE_DTYPES[(cls as PyGlobal).name], key, loc, count);
  };

  const global = (module: string, name: string): PyGlobal => {
    if (!isAllowedGlobal(module, name)) refuse(module, name);
    return new PyGlobal(module, name);
  };

  for (;;) {
    opPos = pos;
    if (pos >= n) fail('data ends without STOP');
    const op = bytes[pos++];
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail('unknown pickle protocol');
        break;
      case 0x95: // FRAME: framing is only a read-ahead hint; check the length and read on.
        need(u64());
        break;
      case 0x2e: // STOP
        if (metastack.length) fail('STOP inside a MARK');
        return pop();
      case 0x28: // MARK
        if (metastack.length >= maxMarks) fail(`MARKs nested deeper than ${maxMarks}`);
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop();
        else popMark(); // POP of an empty stack after MARK discards the mark, as CPython does
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        push(top());
        break;
      case 0x4e: // NONE
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x4a: // BININT
        need(4);
        push(dv.getInt32(pos, true));
        pos += 4;
        break;
      case 0x4b: // BININT1
        push(u8());
        break;
      case 0x4d: // BININT2
        push(u16());
        break;
      case 0x8a: // LONG1
        push(toLong(take(u8())));
        break;
      case 0x8b: {
        // LONG4: state_dict integers are small; a huge one is hostile (bigint parsing is quadratic).
        const k = u32();
        if (k > 1024) fail('integer longer than 1024 bytes');
        push(toLong(take(k)));
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        push(dv.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x58: // BINUNICODE
        push(str(take(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        push(str(take(u8())));
        break;
      case 0x8d: // BINUNICODE8
        push(str(take(u64())));
        break;
      case 0x55: // SHORT_BINSTRING (Python 2 str): ASCII in practice; latin1 keeps every byte
        push(latin1(take(u8())));
        break;
      case 0x54: {
        // BINSTRING
        need(4);
        const k = dv.getInt32(pos, true);
        pos += 4;
        push(latin1(take(k)));
        break;
      }
      case 0x43: // SHORT_BINBYTES
        push(new Uint8Array(take(u8())));
        break;
      case 0x42: // BINBYTES
        push(new Uint8Array(take(u32())));
        break;
      case 0x8e: // BINBYTES8
        push(new Uint8Array(take(u64())));
        break;
      case 0x5d: // EMPTY_LIST
        push([]);
        break;
      case 0x6c: // LIST
        push(popMark());
        break;
      case 0x61: {
        // APPEND
        const v = pop();
        const l = top();
        if (!Array.isArray(l)) fail('APPEND to something that is not a list');
        (l as PyValue[]).push(v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        const l = top();
        if (!Array.isArray(l)) fail('APPENDS to something that is not a list');
        if ((l as PyValue[]).length + items.length > maxStack) fail('list too long');
        for (const v of items) (l as PyValue[]).push(v);
        break;
      }
      case 0x29: // EMPTY_TUPLE
        push(new PyTuple([]));
        break;
      case 0x74: // TUPLE
        push(new PyTuple(popMark()));
        break;
      case 0x85: // TUPLE1
        push(new PyTuple([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        const a = pop();
        push(new PyTuple([a, b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        push(new PyTuple([a, b, c]));
        break;
      }
      case 0x7d: // EMPTY_DICT
        push(new PyDict());
        break;
      case 0x64: {
        // DICT
        const items = popMark();
        const d = new PyDict();
        push(d);
        setItems(d, items);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x8f: // EMPTY_SET
        push(new PySet([]));
        break;
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof PySet) || s.frozen) fail('ADDITEMS to something that is not a set');
        for (const v of items) (s as PySet).items.push(hashable(v));
        break;
      }
      case 0x91: // FROZENSET
        push(new PySet(popMark().map(hashable), true));
        break;
      case 0x63: {
        // GLOBAL: the security gate. The name is checked before anything can refer to it.
        const module = line();
        const name = line();
        push(global(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        push(global(module as string, name as string));
        break;
      }
      case 0x69: {
        // INST imports and calls a class in one step; name it in the refusal like GLOBAL does.
        const module = line();
        const name = line();
        refuse(module, name);
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        push(call(fn, args));
        break;
      }
      case 0x81: {
        // NEWOBJ: cls.__new__(cls, *args); only for the containers we emulate.
        const args = pop();
        const cls = pop();
        if (!(cls instanceof PyGlobal) || !/^(collections\.(OrderedDict|Counter)|(builtins|__builtin__)\.(set|frozenset|bytearray))$/.test(cls.fullName)) {
          fail('NEWOBJ of an unsupported class');
        }
        push(call(cls, args));
        break;
      }
      case 0x62: {
        // BUILD: instance attributes of an OrderedDict (torch's state_dict `_metadata`), or a numpy dtype/array.
        const state = pop();
        const inst = top();
        if (inst instanceof NpDtype) {
          // (version, byteorder, subarray, names, fields, elsize, alignment, flags)
          const it = state instanceof PyTuple ? state.items : fail('numpy dtype state is not a tuple');
          const order = (it as PyValue[])[1];
          if (typeof order !== 'string' || !['<', '>', '|', '='].includes(order)) fail('numpy dtype has an unknown byte order');
          if ((it as PyValue[]).slice(2, 5).some((v) => v !== null)) fail('structured numpy dtypes are not supported');
          inst.byteorder = order as string;
          break;
        }
        if (inst instanceof NpArray) {
          // (version, shape, dtype, is_fortran, raw bytes); a list instead of bytes is an object array.
          const it = state instanceof PyTuple ? state.items : fail('numpy array state is not a tuple');
          const [, shapeV, dtype, fortran, raw] = it as PyValue[];
          if (inst.built) fail('numpy array built twice');
          if (!(dtype instanceof NpDtype)) fail('numpy array without a dtype');
          const bytesV = typeof raw === 'string' ? Uint8Array.from(raw, (ch) => ch.charCodeAt(0) & 0xff) : raw;
          if (!(bytesV instanceof Uint8Array)) fail('numpy object arrays are not supported (only numbers)');
          const shape = intList(shapeV, 'numpy array shape');
          if (shape.some((d) => d < 0)) fail('numpy array shape is negative');
          const count = shape.reduce((a, b) => a * b, 1);
          if ((bytesV as Uint8Array).length !== count * NP_ITEM_SIZE[(dtype as NpDtype).str]) fail(`numpy array of shape (${shape.join(',')}) holds ${(bytesV as Uint8Array).length} bytes`);
          Object.assign(inst, { shape, dtype, fortran: fortran === true, data: bytesV, built: true });
          break;
        }
        if (!(inst instanceof PyDict)) fail('BUILD on something that is not a dict');
        if (state === null) break;
        let attrs = state;
        // (state, slotstate) form
        if (attrs instanceof PyTuple && attrs.items.length === 2) attrs = attrs.items[0] ?? new PyDict();
        if (!(attrs instanceof PyDict)) fail('BUILD state is not a dict');
        for (const [k, v] of (attrs as PyDict).map) {
          if (typeof k !== 'string') fail('BUILD attribute name is not a string');
          (inst as PyDict).attrs.set(k as string, v);
        }
        break;
      }
      case 0x51: // BINPERSID
        push(persistentLoad(pop()));
        break;
      case 0x68: // BINGET
        push(memoGet(u8()));
        break;
      case 0x6a: // LONG_BINGET
        push(memoGet(u32()));
        break;
      case 0x71: // BINPUT
        memoPut(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memoPut(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memoPut(memo.size, top());
        break;
      default: {
        // Text-protocol opcodes, OBJ, EXT*, NEWOBJ_EX, out-of-band buffers: never needed by a state_dict.
        const name = OPNAMES[op];
        fail(`${name ? `opcode ${name}` : `unknown opcode 0x${op.toString(16).padStart(2, '0')}`} is not allowed`);
      }
    }
  }
}
