/**
 * The audit.json contract: valid jobs pass with defaults applied and paths made absolute; every kind of bad
 * job is refused with one InputError naming the field; the published schema file is the generated one.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InputError } from '../../src/engine/errors';
import { loadJob, validateJobObject, parseJson } from '../../src/engine/jobs/validate';
import { publishedSchemaText, type JobInput } from '../../src/engine/job_schema';
import { auditValidatorSource, compileAuditValidator } from '../../src/engine/jobs/audit_validator';

const ROOT = path.join(__dirname, '..', '..');

/** Runs f, which must throw an InputError; returns its one-line form `message (where)`. */
function inputError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof InputError, `expected an InputError, got ${e}`);
    return `${e.message} (${e.where})`;
  }
  assert.fail('expected an InputError');
}

describe('job schema and validation', () => {
  let dir: string;
  const minimal = (): Record<string, unknown> => ({ model: 'victim.safetensors', data: { test: { format: 'mnist-embedded' } } });
  const writeJob = (job: unknown, name = 'audit.json') => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, typeof job === 'string' ? job : JSON.stringify(job, null, 2));
    return f;
  };

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ba-schema-'));
    for (const f of ['victim.safetensors', 'train-images.npy', 'train-labels.npy', 'patch.png', 'trig.png']) fs.writeFileSync(path.join(dir, f), 'x');
    fs.mkdirSync(path.join(dir, 'web', 'cat'), { recursive: true });
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('accepts a minimal job and applies the documented defaults', () => {
    const job = loadJob(writeJob(minimal()));
    assert.deepEqual(job.model, { path: path.join(dir, 'victim.safetensors') });
    assert.equal(job.attack, undefined, 'no attack: the runner uses the model\'s record or "unknown"');
    assert.deepEqual(job.gic, { mode: 'off', delta: 0.1, norm: 'inf', lambdaBn: 1, epochs: 20, lr: 0.001 });
    assert.deepEqual(job.embedding, { method: 'tsne', points: 600 });
    assert.deepEqual([job.aux, job.defenses, job.profile, job.seed, job.device], [[], [], 'fast', 0, 'auto']);
    assert.deepEqual(job.outputs, {});
  });

  it('accepts a full job (every field), resolves every path against the job folder', () => {
    // Typed as JobInput: a field the type has but the schema lacks fails here.
    const full: JobInput = {
      $schema: '../schema/audit.schema.json',
      model: { path: 'victim.safetensors', arch: 'preact-resnet18', inputShape: [32, 32, 3], numClasses: 10, normalize: { mean: [0.4914, 0.4822, 0.4465], std: [0.247, 0.243, 0.261] } },
      data: { train: { path: 'train-images.npy', labels: 'train-labels.npy' }, test: { format: 'mnist-embedded' } },
      attack: { type: 'badnets', target: 3, allToAll: false, size: 4, offset: 1 },
      aux: [
        { name: 'seen', type: 'seen', perClass: 10 },
        { name: 'heldout', type: 'unseen', source: { format: 'mnist-embedded' }, size: 500 },
        { name: 'dark', type: 'ood', source: { format: 'mnist-embedded' }, shift: 'brightness' },
        { name: 'web', type: 'external', source: { path: 'web', resize: true } },
        { name: 'inverted', type: 'synthetic', perClass: 5 },
      ],
      defenses: ['ft', 'fp', { name: 'anp', profile: 'fast' }, { name: 'nad', params: { epochs: 2, lr: 0.01 } }],
      gic: { mode: 'both', delta: 0.05, norm: 2, lambdaBn: 0.5, epochs: 5, lr: 0.002 },
      profile: 'paper',
      embedding: { method: 'none', points: 100 },
      seed: 7,
      device: 'cpu',
      outputs: { formats: ['safetensors', 'onnx'] },
    };
    const jobFile = writeJob(full, 'full.audit.json');
    const job = loadJob(path.relative(process.cwd(), jobFile)); // a relative job path works too
    const abs = (f: string) => path.join(dir, f);
    assert.equal(typeof job.model === 'object' && job.model.path, abs('victim.safetensors'));
    assert.deepEqual(job.data.train, { path: abs('train-images.npy'), labels: abs('train-labels.npy'), format: 'npy' });
    assert.deepEqual(job.aux[3].source, { path: abs('web'), format: 'imagefolder', resize: true });
    assert.deepEqual(job.attack, { type: 'badnets', target: 3, allToAll: false, size: 4, offset: 1 });
    assert.deepEqual(job.defenses, [
      { name: 'ft', profile: 'paper' },
      { name: 'fp', profile: 'paper' },
      { name: 'anp', profile: 'fast' },
      { name: 'nad', profile: 'paper', params: { epochs: 2, lr: 0.01 } },
    ]);
    assert.equal(job.gic.norm, '2', 'a numeric norm is read as the string the engine compares');
    assert.deepEqual(job.outputs, { formats: ['safetensors', 'onnx'] });
    assert.ok(!('$schema' in job));
  });

  it('gives each attack its own defaults, in the vocabulary of the engine', () => {
    const attack = (a: unknown) => validateJobObject({ ...minimal(), attack: a }, dir).attack;
    assert.deepEqual(attack({ type: 'blended' }), { type: 'blended', alpha: 0.2, target: 0, allToAll: false });
    assert.deepEqual(attack({ type: 'sig', target: 1, freq: 4 }), { type: 'sig', target: 1, allToAll: false, frequency: 4, amplitude: 40 / 255 });
    assert.deepEqual(attack({ type: 'wanet', allToAll: true }), { type: 'wanet', k: 4, s: 0.5, target: 0, allToAll: true });
  });

  it('resolves trigger files, patch positions and poisoned sets; refuses what cannot be one', () => {
    const ok = (a: unknown) => validateJobObject({ ...minimal(), attack: a }, dir, 'audit.json').attack;
    const attack = (a: unknown) => inputError(() => validateJobObject({ ...minimal(), attack: a }, dir, 'audit.json'));
    assert.deepEqual(ok({ type: 'badnets', patch: { image: 'patch.png', position: '3,4' } }), { type: 'badnets', target: 0, allToAll: false, size: 3, offset: 0, patchFile: { path: path.join(dir, 'patch.png'), position: { x: 3, y: 4 } } });
    assert.deepEqual((ok({ type: 'badnets', patch: { image: 'patch.png' } }) as { patchFile: unknown }).patchFile, { path: path.join(dir, 'patch.png'), position: { corner: 'bottom-right' } });
    assert.deepEqual((ok({ type: 'badnets', patch: { image: 'patch.png', position: 'mask' } }) as { patchFile: unknown }).patchFile, { path: path.join(dir, 'patch.png'), position: 'mask' });
    assert.deepEqual(ok({ type: 'blended', image: 'trig.png', alpha: 0.1 }), { type: 'blended', target: 0, allToAll: false, alpha: 0.1, imageFile: path.join(dir, 'trig.png') });
    assert.deepEqual(ok({ type: 'wanet', seed: 3 }), { type: 'wanet', target: 0, allToAll: false, k: 4, s: 0.5, seed: 3 });
    assert.deepEqual(ok({ type: 'unknown' }), { type: 'unknown', target: 0, allToAll: false });
    const ps = ok({ type: 'poisoned-set', target: 2, data: { path: 'train-images.npy' } }) as { data: unknown };
    assert.deepEqual(ps.data, { path: path.join(dir, 'train-images.npy'), format: 'npy' }, 'labels are optional for a poisoned set');
    assert.match(attack({ type: 'poisoned-set', data: { format: 'mnist-embedded', path: 'train-images.npy' } }), /^must be one of imagefolder, npy, npz, idx, cifar10-bin, not "mnist-embedded" \(audit.json: attack.data.format\)$/);
    assert.match(attack({ type: 'badnets', patch: { image: 'patch.png', position: 'middle' } }), /^must be "x,y" .* \(audit.json: attack.patch.position\)$/);
    assert.equal(attack({ type: 'blended', image: 'nope.png' }), 'no such file: nope.png (audit.json: attack.image)');
    assert.equal(attack({ type: 'wanet', grids: 'nope.pt' }), 'no such file: nope.pt (audit.json: attack.grids)');
  });

  it('does not modify the object it validates (the demo reuses its job object)', () => {
    const obj = minimal();
    const before = JSON.stringify(obj);
    validateJobObject(obj, dir);
    assert.equal(JSON.stringify(obj), before);
  });

  describe('refuses bad jobs with one error naming the field', () => {
    const cases: Array<[string, (j: Record<string, any>) => void, string]> = [
      ['an unknown top-level field', (j) => (j.fooBar = 1), 'unknown field "fooBar" (audit.json: fooBar)'],
      ['an unknown nested field', (j) => (j.aux = [{ name: 'a', type: 'unseen', source: { format: 'mnist-embedded' } }, { name: 'b', type: 'synthetic', fooBar: 2 }]), 'unknown field "fooBar" (audit.json: aux[1].fooBar)'],
      ['a misspelt field, with a hint', (j) => (j.gic = { lamdaBn: 1 }), 'unknown field "lamdaBn"; did you mean "lambdaBn"? (audit.json: gic.lamdaBn)'],
      ['an unknown field in a data source', (j) => (j.data.test.colour = 1), 'unknown field "colour" (audit.json: data.test.colour)'],
      ['an unknown field in a defense', (j) => (j.defenses = [{ name: 'ft', rate: 1 }]), 'unknown field "rate" (audit.json: defenses[0].rate)'],
      ['a field of another attack', (j) => (j.attack = { type: 'sig', size: 3 }), 'unknown field "size" when type is sig (audit.json: attack.size)'],
      ['an unknown defense', (j) => (j.defenses = ['ft', 'fp', 'magic']), 'must be one of ft, fp, nad, anp, ibau, sau, ftsam, fst, npd, rnp, clp, nc, not "magic" (audit.json: defenses[2])'],
      ['a wrong enum deep inside', (j) => (j.gic = { mode: 'sometimes' }), 'must be one of off, on, both, not "sometimes" (audit.json: gic.mode)'],
      ['an unknown aux type', (j) => (j.aux = [{ name: 'a', type: 'web' }]), 'must be one of seen, unseen, ood, external, synthetic, not "web" (audit.json: aux[0].type)'],
      ['a wrong type', (j) => (j.seed = 'zero'), 'must be an integer (audit.json: seed)'],
      ['a defense that is neither id nor object', (j) => (j.defenses = [1]), 'must be a string or an object (audit.json: defenses[0])'],
      ['an out-of-range number', (j) => (j.gic = { delta: 0 }), 'must be > 0, not 0 (audit.json: gic.delta)'],
      ['a missing required field', (j) => delete j.data, 'missing field "data" (audit.json: data)'],
      ['a source the aux type needs', (j) => (j.aux = [{ name: 'a', type: 'unseen' }]), 'missing field "source", needed when type is one of unseen, ood, external (audit.json: aux[0].source)'],
      ['an ood set without a shift', (j) => (j.aux = [{ name: 'a', type: 'ood', source: { format: 'mnist-embedded' } }]), 'missing field "shift", needed when type is ood (audit.json: aux[0].shift)'],
      ['a shift outside ood', (j) => (j.aux = [{ name: 'a', type: 'unseen', source: { format: 'mnist-embedded' }, shift: 'blur' }]), 'field "shift" is not used unless type is ood (audit.json: aux[0].shift)'],
      ['a path for the embedded data', (j) => (j.data.test.path = 'x'), 'field "path" is not used when format is mnist-embedded (audit.json: data.test.path)'],
      ['a file source without a path', (j) => (j.data.test = { format: 'npz' }), 'missing field "path", needed unless format is mnist-embedded (audit.json: data.test.path)'],
      ['size and perClass together', (j) => (j.aux = [{ name: 'a', type: 'synthetic', size: 2, perClass: 2 }]), 'give either "size" or "perClass", not both (audit.json: aux[0])'],
      ['an aux name unfit for file names', (j) => (j.aux = [{ name: 'my set', type: 'synthetic' }]), 'may contain only letters, digits, "_", "." and "-" (it names output files) (audit.json: aux[0].name)'],
      ['a repeated aux name', (j) => (j.aux = [{ name: 'a', type: 'synthetic' }, { name: 'a', type: 'synthetic' }]), 'aux name "a" is already used by aux[0] (audit.json: aux[1].name)'],
      ['a repeated defense', (j) => ((j.aux = [{ name: 'a', type: 'synthetic' }]), (j.defenses = ['ft', { name: 'ft', profile: 'paper' }])), 'defense "ft" is already listed at defenses[0] (audit.json: defenses[1])'],
      ['an unknown defense parameter', (j) => ((j.aux = [{ name: 'a', type: 'synthetic' }]), (j.defenses = ['fp', { name: 'ft', params: { lr: 0.01, learningRate: 0.1 } }])), 'unknown parameter "learningRate" for defense ft (known: epochs, lr, batchSize, momentum, weightDecay) (audit.json: defenses[1].params.learningRate)'],
      ['a misspelt word for a string parameter', (j) => ((j.aux = [{ name: 'a', type: 'synthetic' }]), (j.defenses = [{ name: 'nad', params: { studentSchedule: 'cosin' } }])), 'parameter "studentSchedule" of defense nad takes one of "constant", "cosine" (got "cosin") (audit.json: defenses[0].params.studentSchedule)'],
      ['a number given as a string', (j) => ((j.aux = [{ name: 'a', type: 'synthetic' }]), (j.defenses = [{ name: 'ft', params: { lr: '0.01' } }])), 'parameter "lr" of defense ft takes a number (got "0.01") (audit.json: defenses[0].params.lr)'],
      ['a word where CLP takes a number or "auto"', (j) => ((j.aux = [{ name: 'a', type: 'synthetic' }]), (j.defenses = [{ name: 'clp', params: { u: 'max' } }])), 'parameter "u" of defense clp takes a number or one of "auto" (got "max") (audit.json: defenses[0].params.u)'],
      ['defenses without aux sets', (j) => (j.defenses = ['ft']), 'the defenses purify with auxiliary data: add at least one auxiliary set (audit.json: aux)'],
      ['a seen set without training data', (j) => (j.aux = [{ name: 'a', type: 'seen' }]), 'a "seen" auxiliary set is drawn from data.train, which the job does not give (audit.json: aux[0].type)'],
      ['an input shape of two numbers', (j) => (j.model = { path: 'victim.safetensors', inputShape: [28, 28] }), 'must have exactly 3 items (audit.json: model.inputShape)'],
      ['a normalization for other channels', (j) => (j.model = { path: 'victim.safetensors', inputShape: [32, 32, 3], normalize: { mean: [0.1, 0.2], std: [1, 1] } }), '2 values for 3 input channels (audit.json: model.normalize.mean)'],
      ['a target outside the classes', (j) => ((j.model = { path: 'victim.safetensors', numClasses: 10 }), (j.attack = { type: 'badnets', target: 10 })), 'target 10 is not a class of a 10-class model (audit.json: attack.target)'],
      ['a repeated output format', (j) => (j.outputs = { formats: ['pt', 'pt'] }), 'lists "pt" twice (audit.json: outputs.formats)'],
      ['a missing model file', (j) => (j.model = 'nope.safetensors'), 'no such file: nope.safetensors (audit.json: model)'],
      ['a missing model file (object form)', (j) => (j.model = { path: 'sub/nope.pt' }), 'no such file: sub/nope.pt (audit.json: model.path)'],
      ['a missing labels file', (j) => (j.data.train = { path: 'train-images.npy', labels: 'gone.npy' }), 'no such file: gone.npy (audit.json: data.train.labels)'],
      ['a missing aux source', (j) => (j.aux = [{ name: 'w', type: 'external', source: { path: 'elsewhere', format: 'imagefolder' } }]), 'no such file: elsewhere (audit.json: aux[0].source.path)'],
      ['npy images without labels', (j) => (j.data.train = { path: 'train-images.npy' }), 'npy images need a "labels" file (audit.json: data.train.labels)'],
      ['a file where a folder is needed', (j) => (j.data.train = { path: 'patch.png', format: 'imagefolder' }), 'patch.png is a file, expected a folder (one sub-folder per class) (audit.json: data.train.path)'],
      ['a format that cannot be inferred', (j) => (j.data.train = { path: 'patch.png' }), 'cannot tell the format of patch.png: add "format" (one of imagefolder, npy, npz, idx, cifar10-bin) (audit.json: data.train.format)'],
    ];
    for (const [what, mutate, expected] of cases) {
      it(what, () => {
        const job = minimal() as Record<string, any>;
        mutate(job);
        assert.equal(inputError(() => loadJob(writeJob(job))), expected);
      });
    }
    it('a job that is not an object', () => {
      assert.equal(inputError(() => loadJob(writeJob('[1]'))), 'must be an object (audit.json)');
    });
    it("the bundles' validator, compiled at build time, gives every case above the verdict, errors and defaults of ajv's compile", () => {
      const mod: { exports: unknown } = { exports: {} };
      new Function('module', 'exports', 'require', auditValidatorSource())(mod, mod.exports, require);
      const built = mod.exports as ((d: unknown) => boolean) & { errors?: unknown };
      const compiled = compileAuditValidator();
      const jobs: unknown[] = [minimal(), [1], { ...minimal(), aux: [{ name: 'a', type: 'synthetic' }], defenses: ['ft', { name: 'nad', params: { studentSchedule: 'constant' } }] }];
      for (const [, mutate] of cases) {
        const job = minimal() as Record<string, any>;
        mutate(job);
        jobs.push(job);
      }
      let refused = 0;
      for (const job of jobs) {
        const [a, b] = [structuredClone(job), structuredClone(job)];
        const verdict = compiled(a);
        assert.equal(built(b), verdict, JSON.stringify(job));
        assert.deepEqual(b, a, 'the defaults written into the job');
        assert.deepEqual(JSON.parse(JSON.stringify(built.errors ?? null)), JSON.parse(JSON.stringify(compiled.errors ?? null)));
        if (!verdict) refused++;
      }
      assert.ok(refused >= 15, `only ${refused} of the cases fail the schema itself`);
    });
  });

  it('accepts each defense parameter in every kind a profile gives it', () => {
    const job = loadJob(writeJob({ ...minimal(), aux: [{ name: 'a', type: 'synthetic' }], defenses: [{ name: 'clp', params: { u: 2.5 } }, { name: 'nad', params: { studentSchedule: 'constant' } }, { name: 'nc', params: { anomalyScale: 'linear' } }] }));
    assert.deepEqual(job.defenses.map((d) => d.params), [{ u: 2.5 }, { studentSchedule: 'constant' }, { anomalyScale: 'linear' }]);
    assert.equal(loadJob(writeJob({ ...minimal(), aux: [{ name: 'a', type: 'synthetic' }], defenses: [{ name: 'clp', params: { u: 'auto' } }] })).defenses[0].params?.u, 'auto');
  });

  it('reports JSON syntax errors with line and column', () => {
    assert.equal(inputError(() => loadJob(writeJob('{\n  "model": "victim.safetensors",\n  "data": {,\n}'))), 'not valid JSON: expected a double-quoted field name, found "," (audit.json:3:12)');
    assert.equal(inputError(() => loadJob(writeJob('{\n  "seed": 1,\n}'))), 'not valid JSON: trailing comma before "}" (audit.json:2:12)');
    assert.equal(inputError(() => loadJob(writeJob('{"seed": 1'))), 'not valid JSON: expected "," or "}" after a value, found the end of the file (audit.json:1:11)');
    assert.equal(inputError(() => loadJob(writeJob('{"a": tru}'))), 'not valid JSON: unexpected "t" (audit.json:1:7)');
    assert.equal(inputError(() => parseJson('{\n  // a comment\n}', 'job.json')), 'not valid JSON: comments are not allowed in JSON (job.json:2:3)');
    assert.deepEqual(parseJson('\ufeff{"a": 1}', 'x'), { a: 1 }, 'a byte-order mark is not an error');
  });

  it('repeats: "seeds" runs every cell per seed, the first fixing what they share; "seed" is one seed; not both', () => {
    assert.deepEqual([validateJobObject(minimal(), dir).seed, validateJobObject(minimal(), dir).seeds], [0, [0]]);
    const one = validateJobObject({ ...minimal(), seed: 4 }, dir);
    assert.deepEqual([one.seed, one.seeds], [4, [4]]);
    const many = validateJobObject({ ...minimal(), seeds: [3, 1, 2] }, dir);
    assert.deepEqual([many.seed, many.seeds], [3, [3, 1, 2]]);
    assert.equal(inputError(() => validateJobObject({ ...minimal(), seed: 0, seeds: [0, 1] }, dir)), 'give either "seed" or "seeds", not both (job)');
    assert.equal(inputError(() => validateJobObject({ ...minimal(), seeds: [] }, dir)), 'must have at least 1 item (job: seeds)');
    assert.equal(inputError(() => validateJobObject({ ...minimal(), seeds: [1, 1] }, dir)), 'lists 1 twice (job: seeds)');
  });

  it('names a job file that does not exist', () => {
    const missing = path.join(dir, 'none.json');
    assert.equal(inputError(() => loadJob(missing)), `no such job file (${missing})`);
  });

  it('in-memory jobs name themselves "job" and resolve against the given folder', () => {
    assert.equal(inputError(() => validateJobObject({ ...minimal(), seed: -1 }, dir)), 'must be >= 0, not -1 (job: seed)');
    const job = validateJobObject(minimal(), dir);
    assert.equal(typeof job.model === 'object' && job.model.path, path.join(dir, 'victim.safetensors'));
  });

  it('the example job validates', () => {
    const job = loadJob(path.join(ROOT, 'examples', 'mnist-badnets', 'audit.json'));
    assert.equal(job.data.test.format, 'mnist-embedded');
    assert.ok(job.aux.length > 0 && job.defenses.length > 0);
  });

  it('the committed schema/audit.schema.json is the one job_schema.ts generates', () => {
    const committed = fs.readFileSync(path.join(ROOT, 'schema', 'audit.schema.json'), 'utf8');
    assert.equal(committed, publishedSchemaText(), 'run: npx tsx scripts/gen-schema.ts');
    const s = JSON.parse(committed);
    assert.equal(s.additionalProperties, false);
    assert.equal(s.properties.aux.items.additionalProperties, false);
  });
});
