/**
 * The catalog is the one list of names: the registries implement exactly its names, the schema offers exactly
 * them, the set-up flow and the demo list them, and the one format guesser tells formats apart (a folder of
 * CIFAR-10 batches is not an image folder).
 */
import * as assert from 'node:assert/strict';
import { ATTACK_TYPES, DATA_FORMATS, DEFENSE_CATALOG, DEFENSE_IDS, SHIFT_NAMES, guessDataFormat, needsAuxData } from '../../src/engine/catalog';
import { DEFENSES } from '../../src/engine/defenses';
import { AUDIT_SCHEMA } from '../../src/engine/job_schema';
import { FULL_DEFENSES } from '../../src/engine/jobs/demo';
import { DEFENSES as SETUP_DEFENSES, OOD_SHIFTS } from '../../src/vscode/job_spec';

describe('catalog', () => {
  it('every defense of the catalog has an implementation with the same id, and no other', () => {
    assert.deepEqual(Object.keys(DEFENSES).sort(), Object.keys(DEFENSE_CATALOG).sort());
    for (const [id, d] of Object.entries(DEFENSES)) assert.equal(d.id, id);
  });

  it('the schema, the set-up flow and the demo offer the catalog names', () => {
    const props = (AUDIT_SCHEMA as unknown as { properties: Record<string, { items?: { then?: { enum?: readonly string[] } }; properties?: Record<string, { enum?: readonly string[] }> }> }).properties;
    assert.deepEqual(props.defenses.items?.then?.enum, DEFENSE_IDS);
    assert.deepEqual(props.attack.properties?.type.enum, ATTACK_TYPES);
    assert.deepEqual(SETUP_DEFENSES.map((d) => d.id), ['ft', 'fp', 'clp', 'nad', 'ftsam', 'fst', 'anp', 'rnp', 'sau', 'ibau', 'npd', 'nc']);
    assert.deepEqual(DEFENSE_IDS, ['ft', 'fp', 'nad', 'anp', 'ibau', 'sau', 'ftsam', 'fst', 'npd', 'rnp', 'clp', 'nc']);
    assert.deepEqual([...OOD_SHIFTS], [...SHIFT_NAMES]);
    assert.deepEqual(FULL_DEFENSES, [...DEFENSE_IDS]);
    assert.ok(DATA_FORMATS.includes('cifar10-bin'));
  });

  it('only the data-free defenses run without auxiliary data', () => {
    assert.deepEqual(DEFENSE_IDS.filter((id) => !needsAuxData(id)), ['clp']);
    assert.equal(needsAuxData('no-such-defense'), true);
  });

  it('guesses a data format from a path, and a folder from its files', () => {
    assert.equal(guessDataFormat('/d/t10k-images-idx3-ubyte.gz', false), 'idx');
    assert.equal(guessDataFormat('/d/train.idx3-ubyte', false), 'idx');
    assert.equal(guessDataFormat('/d/t10k-labels-idx1-ubyte', false), undefined);
    assert.equal(guessDataFormat('/d/x.NPY', false), 'npy');
    assert.equal(guessDataFormat('C:\\d\\a.npz', false), 'npz');
    assert.equal(guessDataFormat('/d/test_batch.bin', false), 'cifar10-bin');
    assert.equal(guessDataFormat('/d/cifar', true, ['data_batch_1.bin', 'test_batch.bin', 'batches.meta.txt']), 'cifar10-bin');
    assert.equal(guessDataFormat('/d/pets', true, ['cat', 'dog']), 'imagefolder');
    assert.equal(guessDataFormat('/d/readme.txt', false), undefined);
  });
});
