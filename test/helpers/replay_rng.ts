/**
 * Random draws recorded by PyTorch, handed to an engine defense: the shuffles and crop offsets that
 * scripts/zoo/reference_defenses.py (`--record-stream`) and scripts/zoo/make_ft_stream_fixture.py write, so that
 * our training sees the batches and crops PyTorch's did (scripts/zoo/replay-stream.ts, ft-step-parity.test.ts).
 */
import { Rng } from '../../src/engine/util/rng';

export type Draw = { permutation: number[] } | { crops: [number, number][] };

/**
 * An Rng that hands out a recorded stream: `permutation(n)` the next recorded permutation, `int(k)` the next
 * recorded crop offset (row then column of each image, as makeBatchArray asks for them). The offsets are
 * positions in the padded image, which is what makeBatchArray's `int(2p + 1)` draws. Any other draw throws.
 */
export class ReplayRng extends Rng {
  private at = 0;
  private inCrops = 0;
  /** False while Rng's constructor warms its own state up (the only draws not replayed). */
  private readonly armed: boolean;
  constructor(
    private readonly draws: Draw[],
    private readonly cropRange: number,
  ) {
    super(0);
    this.armed = true;
  }

  private where(): string {
    return `draw ${this.at + 1} of ${this.draws.length}`;
  }

  override permutation(n: number): Int32Array {
    const d = this.draws[this.at];
    if (this.inCrops !== 0) throw new Error(`replay: a permutation asked for inside a batch's crops (${this.where()})`);
    if (!d || !('permutation' in d)) throw new Error(`replay: the defense asks for a permutation of ${n}, the recording has ${d ? 'crops' : 'nothing more'} at ${this.where()}`);
    if (d.permutation.length !== n) throw new Error(`replay: permutation of ${n} asked for, ${d.permutation.length} recorded (${this.where()})`);
    this.at++;
    return Int32Array.from(d.permutation);
  }

  override int(k: number): number {
    const d = this.draws[this.at];
    if (k !== this.cropRange) throw new Error(`replay: int(${k}) asked for; the recording holds crop offsets of range ${this.cropRange}`);
    if (!d || !('crops' in d)) throw new Error(`replay: the defense asks for a crop offset, the recording has ${d ? 'a permutation' : 'nothing more'} at ${this.where()}`);
    const image = this.inCrops >> 1;
    const value = d.crops[image][this.inCrops & 1];
    this.inCrops++;
    if (this.inCrops === 2 * d.crops.length) {
      this.inCrops = 0;
      this.at++;
    }
    return value;
  }

  override nextUint32(): number {
    if (!this.armed) return super.nextUint32();
    throw new Error(`replay: the defense draws a number the recording does not hold (${this.where()})`);
  }

  override fork(label: string): Rng {
    throw new Error(`replay: the defense forks a stream ("${label}") the recording does not hold`);
  }

  /** Throws unless every recorded draw was used. */
  finish(): void {
    if (this.at !== this.draws.length || this.inCrops !== 0) throw new Error(`replay: ${this.draws.length - this.at} recorded draws left unused`);
  }
}
