/**
 * The values the restricted pickle reader (pickle.ts) produces: plain containers, references to globals, torch
 * storage/tensor references, and numpy dtypes, arrays and number scalars built from their raw bytes. Nothing here
 * runs anything a file names; these are data records the reader fills in.
 */
import type { DType } from './state_dict';

export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

/** dict and collections.OrderedDict. `attrs` holds instance attributes set by BUILD (torch's `_metadata`). */
export class PyDict {
  readonly map = new Map<PyValue, PyValue>();
  readonly attrs = new Map<string, PyValue>();
  constructor(readonly ordered = false) {}
}

export class PySet {
  constructor(
    readonly items: PyValue[],
    readonly frozen = false,
  ) {}
}

/** A reference to an allowed global. Only names in ALLOWED ever become one. */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get fullName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A torch storage named by a persistent id: ('storage', torch.FloatStorage, key, location, numel). */
export class StorageRef {
  constructor(
    readonly dtype: DType,
    readonly key: string,
    readonly location: string,
    readonly numel: number,
  ) {}
}

/** What torch._utils._rebuild_tensor_v2 would build: a strided view of a storage. Data is resolved later. */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

/** numpy.dtype as pickled: its type string (`i8`, `f4`, `u1`, ...) and, after BUILD, its byte order. */
export class NpDtype {
  byteorder = '|';
  constructor(readonly str: string) {}
}

/** A numpy array read as data: C-ordered bytes of `shape` elements of `dtype` (filled in by BUILD). */
export class NpArray {
  shape: number[] = [0];
  dtype?: NpDtype;
  fortran = false;
  data: Uint8Array = new Uint8Array(0);
  built = false;
}

/** Bytes per element of the numpy dtypes an attack record holds (numbers only: no objects, no strings). */
export const NP_ITEM_SIZE: Record<string, number> = { b1: 1, i1: 1, u1: 1, i2: 2, u2: 2, i4: 4, u4: 4, i8: 8, u8: 8, f2: 2, f4: 4, f8: 8 };

export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PySet
  | PyGlobal
  | StorageRef
  | TensorRef
  | NpDtype
  | NpArray;

/** One numpy number from its raw bytes: a number (a bigint for 64-bit integers beyond 2^53), a boolean for b1. */
export function npScalar(dtype: NpDtype, bytes: Uint8Array): PyValue {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const le = dtype.byteorder !== '>';
  switch (dtype.str) {
    case 'b1':
      return v.getUint8(0) !== 0;
    case 'i1':
      return v.getInt8(0);
    case 'u1':
      return v.getUint8(0);
    case 'i2':
      return v.getInt16(0, le);
    case 'u2':
      return v.getUint16(0, le);
    case 'i4':
      return v.getInt32(0, le);
    case 'u4':
      return v.getUint32(0, le);
    case 'i8':
    case 'u8': {
      const b = dtype.str === 'i8' ? v.getBigInt64(0, le) : v.getBigUint64(0, le);
      return b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
    }
    case 'f2': {
      const h = v.getUint16(0, le);
      const e = (h >> 10) & 0x1f;
      const m = h & 0x3ff;
      const mag = e === 0 ? m * 2 ** -24 : e === 31 ? (m ? NaN : Infinity) : (1 + m / 1024) * 2 ** (e - 15);
      return h & 0x8000 ? -mag : mag;
    }
    case 'f4':
      return v.getFloat32(0, le);
    default:
      return v.getFloat64(0, le);
  }
}
