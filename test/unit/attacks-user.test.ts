/**
 * The attacks a user brings, measured against PyTorch on a PyTorch-trained victim (fixtures made by
 * scripts/make-attack-fixtures.py): poisoned test sets with and without true labels, uint8 N,H,W,C and float
 * N,C,H,W; trigger files (BadNets patch at a position, BackdoorBench's mask image, a Blended image, WaNet grids)
 * and SIG, each giving the very pixels BackdoorBench's code gives; a BackdoorBench attack record as the model.
 * Each ASR must be PyTorch's within 0.002. Hostile inputs are refused with one InputError and write nothing.
 * `attack: unknown` on a BadNets victim: no ASR is invented, Neural Cleanse flags the target and its reversed
 * trigger PNG sits on the true patch.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { runJobFile } from '../../src/engine/jobs/runner';
import { InputError } from '../../src/engine/errors';
import { makeAttack } from '../../src/engine/attacks';
import { npyValues, readTriggerImage, readWanetGrids } from '../../src/engine/attacks/trigger_files';
import { parseNpy } from '../../src/engine/formats/data/npy';
import { loadPoisonedSet } from '../../src/engine/attacks/poisoned_set';
import { readBackdoorBenchRecord } from '../../src/engine/formats/backdoorbench';
import { Rng } from '../../src/engine/util/rng';
import type { Results } from '../../src/shared/results';

const FIX = path.join(__dirname, '..', 'fixtures', 'attacks');
const fx = (f: string) => path.join(FIX, f);
const expected = JSON.parse(fs.readFileSync(fx('expected.json'), 'utf8'));
const NORM = { mean: [0.5], std: [0.5] };

function u8(file: string): Uint8Array {
  const a = parseNpy(fs.readFileSync(file), file);
  return a.body.slice();
}

describe('attacks the user brings (poisoned sets, trigger files, BackdoorBench records, unknown)', function () {
  this.timeout(600_000);
  let dir: string;
  let n = 0;
  const run = async (job: Record<string, unknown>): Promise<{ results: Results; out: string }> => {
    const f = path.join(dir, `job-${++n}.json`);
    fs.writeFileSync(f, JSON.stringify({ model: { path: fx('victim.pt'), normalize: NORM }, data: { test: { path: fx('clean-x.npy'), labels: fx('clean-y.npy') } }, device: 'cpu', embedding: { method: 'none' }, ...job }));
    const out = path.join(dir, `out-${n}`);
    return { results: await runJobFile(f, { outDir: out, workers: 1 }), out };
  };
  /** The one-line error of a job that must be refused, after checking it wrote nothing. */
  const refused = async (job: Record<string, unknown>): Promise<string> => {
    const before = fs.readdirSync(dir).length;
    try {
      await run(job);
    } catch (e) {
      assert.ok(e instanceof InputError, `expected an InputError, got ${e}`);
      assert.ok(!fs.existsSync(path.join(dir, `out-${n}`, 'results.json')), 'a refused job wrote results');
      assert.equal(fs.readdirSync(dir).filter((f) => f.startsWith('.backdoor-audit')).length, 0, 'staging left behind');
      assert.ok(fs.readdirSync(dir).length <= before + 2);
      return `${e.message} (${e.where})`;
    }
    assert.fail('expected the job to be refused');
  };
  const near = (got: number | null | undefined, want: number, what: string) => assert.ok(typeof got === 'number' && Math.abs(got - want) <= 0.002, `${what}: ours ${got}, PyTorch ${want}`);

  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-attacks-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('poisoned set, uint8 N,H,W,C with true labels: ASR and RA as PyTorch measures them', async () => {
    const { results } = await run({ attack: { type: 'poisoned-set', target: 0, data: { path: fx('poisoned-u8-nhwc.npy'), labels: fx('poisoned-labels.npy') } } });
    near(results.baseline.acc, expected.acc, 'ACC');
    near(results.baseline.asr, expected.poisoned_labels.asr, 'ASR');
    near(results.baseline.ra, expected.poisoned_labels.ra, 'RA');
    assert.ok(expected.poisoned_labels.asr > 0.5, 'the victim carries the backdoor');
    assert.equal(results.attack?.trueLabels, true);
  });

  it('poisoned set, float N,C,H,W in [0,1] without labels: ASR over every image, RA n/a (null), and the results say so', async () => {
    const { results } = await run({ attack: { type: 'poisoned-set', target: 0, data: { path: fx('poisoned-f32-nchw.npy') } } });
    near(results.baseline.asr, expected.poisoned_no_labels.asr, 'ASR');
    assert.equal(results.baseline.ra, null);
    assert.equal(results.attack?.trueLabels, false);
    assert.equal(results.attack?.images, expected.n);
    assert.match(results.attack?.note ?? '', /no true labels/);
  });

  const forms: Array<[string, Record<string, unknown>, () => ReturnType<typeof makeAttack>]> = [
    ['badnets_patch', { type: 'badnets', patch: { image: fx('patch.png'), position: '20,20' } }, () => makeAttack({ type: 'badnets', patch: { image: readTriggerImage(fx('patch.png')), position: { x: 20, y: 20 } } }, [28, 28, 1], new Rng(0))],
    ['badnets_mask', { type: 'badnets', patch: { image: fx('mask.png'), position: 'mask' } }, () => makeAttack({ type: 'badnets', patch: { image: readTriggerImage(fx('mask.png')), position: 'mask' } }, [28, 28, 1], new Rng(0))],
    ['blended', { type: 'blended', image: fx('blend.png'), alpha: 0.2 }, () => makeAttack({ type: 'blended', alpha: 0.2, image: readTriggerImage(fx('blend.png')) }, [28, 28, 1], new Rng(0))],
    ['sig', { type: 'sig' }, () => makeAttack({ type: 'sig', amplitude: 40 / 255, frequency: 6 }, [28, 28, 1], new Rng(0))],
    ['wanet', { type: 'wanet', grids: fx('wanet-grids.pt') }, () => makeAttack({ type: 'wanet', s: 0.5, grids: readWanetGrids(fx('wanet-grids.pt'), 28, 28), normalize: NORM }, [28, 28, 1], new Rng(0))],
  ];
  for (const [name, attack, build] of forms) {
    it(`${name}: the triggered pixels are BackdoorBench's, and the ASR PyTorch's`, async () => {
      const plain = u8(fx('plain-x.npy'));
      const want = u8(fx(`expected-${name}.npy`));
      const a = build();
      const img = new Float32Array(28 * 28);
      let differ = 0;
      let maxDiff = 0;
      for (let i = 0; i < expected.n; i++) {
        for (let p = 0; p < 784; p++) img[p] = plain[i * 784 + p] / 255;
        a.apply(img, [28, 28, 1]);
        for (let p = 0; p < 784; p++) {
          const d = Math.abs(Math.round(img[p] * 255) - want[i * 784 + p]);
          if (d) differ++;
          maxDiff = Math.max(maxDiff, d);
        }
      }
      if (name === 'wanet') {
        // grid_sample's float32 sums as PyTorch's vectorized kernel orders them, truncated to 8 bits: measured 1 pixel of
        // 50176 one grey level off (a sum that lands within an ulp of an integer).
        assert.ok(maxDiff <= 1 && differ <= 5, `${differ} of ${expected.n * 784} pixels differ from BackdoorBench's, by up to ${maxDiff}`);
      } else assert.equal(differ, 0, `${differ} of ${expected.n * 784} pixels differ from BackdoorBench's`);
      const { results } = await run({ data: { test: { path: fx('plain-x.npy'), labels: fx('plain-y.npy') } }, attack: { target: 0, ...attack } });
      near(results.baseline.asr, expected[name].asr, 'ASR');
      near(results.baseline.ra, expected[name].ra, 'RA');
    });
  }

  it('poisoned set: the same images as uint8 N,H,W,C, float32 [0,1] N,C,H,W, float32 and float64 0..255 N,H,W,C give the same pixels', () => {
    const a = parseNpy(fs.readFileSync(fx('poisoned-u8-nhwc.npy')), 'u8');
    const [count, h, w, c] = a.shape;
    const bytes = u8(fx('poisoned-u8-nhwc.npy'));
    const write = (name: string, descr: string, shape: number[], body: Uint8Array) => {
      let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}), }`;
      header += ' '.repeat((64 - ((11 + header.length) % 64)) % 64) + '\n';
      const f = path.join(dir, name);
      fs.writeFileSync(f, Buffer.concat([Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]), Buffer.from(Uint16Array.of(header.length).buffer), Buffer.from(header, 'latin1'), body]));
      return f;
    };
    const asBytes = (t: Float32Array | Float64Array) => new Uint8Array(t.buffer);
    const nchw = new Float32Array(bytes.length);
    for (let i = 0; i < count; i++) for (let p = 0; p < h * w; p++) for (let k = 0; k < c; k++) nchw[(i * c + k) * h * w + p] = bytes[(i * h * w + p) * c + k] / 255;
    const files = [
      fx('poisoned-u8-nhwc.npy'),
      write('f32-nchw.npy', '<f4', [count, c, h, w], asBytes(nchw)),
      write('f32-255.npy', '<f4', a.shape, asBytes(Float32Array.from(bytes))),
      write('f64-255.npy', '<f8', a.shape, asBytes(Float64Array.from(bytes))),
    ];
    const sets = files.map((f) => loadPoisonedSet({ format: 'npy', path: f }, 'attack.data', { target: 0, allToAll: false, shape: [h, w, c], numClasses: 10 }).triggered.set);
    for (const s of sets) assert.deepEqual(s.shape, [h, w, c]);
    for (const s of sets.slice(1)) assert.deepEqual(s.x, sets[0].x);
    assert.equal(sets[0].x[bytes.indexOf(255)], 1);
    assert.equal(sets[0].x[bytes.findIndex((v) => v > 0 && v < 255)], Math.fround(bytes[bytes.findIndex((v) => v > 0 && v < 255)] / 255));
  });

  it('a BackdoorBench record: the model from model_name and img_size, bd_test (numpy original_index in the pickle) as the poisoned set', async () => {
    const f = path.join(dir, 'record-job.json');
    fs.writeFileSync(f, JSON.stringify({ model: fx('attack_result.pt'), data: { test: { path: fx('clean-x.npy'), labels: fx('clean-y.npy') } }, device: 'cpu', embedding: { method: 'none' } }));
    const results = await runJobFile(f, { outDir: path.join(dir, 'record-out'), workers: 1 });
    assert.equal(results.model.arch, 'preact-resnet18');
    near(results.baseline.acc, expected.acc, 'ACC (normalization from clean_data "mnist")');
    near(results.baseline.asr, expected.record.asr, 'ASR');
    assert.equal(results.baseline.ra, null);
    assert.deepEqual([results.attack?.type, results.attack?.images, results.attack?.target], ['record', expected.record.images, 0]);
  });

  it('a BackdoorBench record in the current layout: bd_test as a dataset state (numpy.int64 keys), its PNGs in bd_test_dataset/ next to the record, with true labels', async () => {
    const rv2 = (f: string) => fx(path.join('record-v2', f));
    const want = JSON.parse(fs.readFileSync(rv2('expected.json'), 'utf8'));
    const rec = readBackdoorBenchRecord(rv2('attack_result.pt'))!;
    assert.deepEqual([rec.layout, rec.arch, rec.numClasses, rec.inputShape, rec.bdTestCount, rec.bdTrainCount], ['dataset-state', 'preact-resnet18', 10, [28, 28, 1], want.images, 8]);
    // The images are read from the PNGs under the record's folder (the saved paths are the attacker's), pixel for
    // pixel the patched images make-attack-fixtures.py made, in index order, with their true labels.
    const p = rec.poisonedSet();
    const patched = u8(fx('expected-badnets_patch.npy'));
    const truth = npyValues(parseNpy(fs.readFileSync(fx('plain-y.npy')), 'plain-y'));
    const keep = [...Array(expected.n).keys()].filter((i) => truth[i] !== 0);
    assert.equal(p.n, keep.length);
    let differ = 0;
    keep.forEach((j, i) => {
      for (let q = 0; q < 784; q++) if (Math.round(p.x[i * 784 + q] * 255) !== patched[j * 784 + q]) differ++;
    });
    assert.equal(differ, 0, `${differ} pixels differ from the images BackdoorBench saved`);
    assert.deepEqual([...p.trueLabels!], keep.map((j) => truth[j]));
    assert.ok(p.attackLabels.every((a) => a === 0));

    const f = path.join(dir, 'record-v2-job.json');
    fs.writeFileSync(f, JSON.stringify({ model: rv2('attack_result.pt'), data: { test: { path: fx('clean-x.npy'), labels: fx('clean-y.npy') } }, device: 'cpu', embedding: { method: 'none' } }));
    const results = await runJobFile(f, { outDir: path.join(dir, 'record-v2-out'), workers: 1 });
    assert.equal(results.model.arch, 'preact-resnet18');
    near(results.baseline.acc, want.acc, 'ACC (normalization from clean_data "mnist")');
    near(results.baseline.asr, want.asr, 'ASR');
    near(results.baseline.ra, want.ra, 'RA');
    assert.deepEqual([results.attack?.type, results.attack?.images, results.attack?.trueLabels], ['record', want.images, true]);

    // A record moved without its bd_test_dataset/ images: refused with one line naming the missing file.
    const moved = path.join(dir, 'moved-record');
    fs.cpSync(path.join(FIX, 'record-v2'), moved, { recursive: true });
    const first = fs.readdirSync(path.join(moved, 'bd_test_dataset', '3'))[0];
    fs.rmSync(path.join(moved, 'bd_test_dataset', '3', first));
    assert.match(await refused({ model: path.join(moved, 'attack_result.pt') }), new RegExp(`^the attack record's poisoned test image bd_test_dataset/3/${first} is missing \\(keep bd_test_dataset/ next to the record\\)`));
  });

  it('refuses hostile inputs with one line and writes nothing', async () => {
    assert.match(await refused({ model: fx('mal-record.pt') }), /^refusing to load posix\.system/);
    const short = path.join(dir, 'short-labels.npy');
    const lab = parseNpy(fs.readFileSync(fx('poisoned-labels.npy')), 'x');
    fs.writeFileSync(short, encodeI64(Array.from({ length: lab.shape[0] - 1 }, () => 1)));
    assert.match(await refused({ attack: { type: 'poisoned-set', data: { path: fx('poisoned-u8-nhwc.npy'), labels: short } } }), /^64 images but 63 labels \(.*short-labels\.npy\)$/);
    const tiny = path.join(dir, 'tiny.png');
    fs.writeFileSync(tiny, PNG.sync.write(Object.assign(new PNG({ width: 1, height: 1 }), { data: Buffer.from([255, 255, 255, 255]) })));
    assert.match(await refused({ attack: { type: 'badnets', patch: { image: tiny, position: '3,3' } } }), /^a 1x1 patch is too small to be a trigger/);
    // A PNG whose header claims 10000 x 10000 pixels: refused before anything is inflated.
    const huge = Buffer.from(PNG.sync.write(Object.assign(new PNG({ width: 4, height: 4 }), { data: Buffer.alloc(64, 255) })));
    huge.writeUInt32BE(10000, 16);
    huge.writeUInt32BE(10000, 20);
    fs.writeFileSync(path.join(dir, 'huge.png'), huge);
    assert.match(await refused({ attack: { type: 'badnets', patch: { image: path.join(dir, 'huge.png') } } }), /10000x10000, larger than/);
    assert.match(await refused({ attack: { type: 'record' } }), /the model file is not one/);
  });

  it('attack unknown on a BadNets victim: ASR/RA/DER null, NC flags the target, its reversed trigger PNG sits on the patch', async () => {
    const victim = path.join(__dirname, '..', '..', 'examples', 'mnist-badnets', 'victim.safetensors');
    const { results, out } = await run({
      model: victim,
      data: { test: { format: 'mnist-embedded' } },
      attack: { type: 'unknown' },
      aux: [{ name: 'heldout', type: 'unseen', source: { format: 'mnist-embedded' }, perClass: 20 }],
      defenses: ['clp'],
    });
    assert.equal(results.baseline.asr, null);
    assert.equal(results.baseline.ra, null);
    assert.ok(results.baseline.acc > 0.9);
    assert.equal(results.rows.length, 1);
    assert.deepEqual([results.rows[0].asr, results.rows[0].ra, results.rows[0].der], [null, null, null]);
    const nc = results.detection.nc!;
    assert.ok(nc.flagged.includes(0), `flagged ${nc.flagged}, anomaly ${nc.anomalyIndex}`);
    // Every class's reversed trigger is carried for the panel; only the flagged ones are written as PNGs.
    assert.deepEqual(nc.triggers!.map((x) => x.label), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.deepEqual(nc.triggers!.filter((x) => x.file).map((x) => x.label), nc.flagged);
    assert.deepEqual(fs.readdirSync(out).filter((f) => f.startsWith('nc-trigger-')).sort(), nc.flagged.map((c) => `nc-trigger-${c}.png`).sort());
    const t = nc.triggers!.find((x) => x.label === 0)!;
    assert.ok(fs.existsSync(path.join(out, t.file!)), 'the reversed trigger PNG is written');
    const png = PNG.sync.read(fs.readFileSync(path.join(out, t.file!)));
    assert.deepEqual([png.width, png.height], [28, 28]);
    // The demo's trigger: a 3x3 white square at rows/cols 25-27. Most of the mask's mass is in that corner.
    const mask = Buffer.from(t.mask, 'base64');
    let inside = 0;
    let total = 0;
    for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) (total += mask[y * 28 + x], y >= 23 && x >= 23 && (inside += mask[y * 28 + x]));
    assert.ok(inside > 0.5 * total, `mask mass near the patch ${inside} of ${total}`);
  });
});

/** An int64 .npy of the given values. */
function encodeI64(values: number[]): Buffer {
  let header = `{'descr': '<i8', 'fortran_order': False, 'shape': (${values.length},), }`;
  header += ' '.repeat((64 - ((10 + header.length + 1) % 64)) % 64) + '\n';
  const out = Buffer.alloc(10 + header.length + 8 * values.length);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]).copy(out);
  out.writeUInt16LE(header.length, 8);
  out.write(header, 10, 'latin1');
  values.forEach((v, i) => out.writeBigInt64LE(BigInt(v), 10 + header.length + 8 * i));
  return out;
}
