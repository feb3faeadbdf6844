/**
 * NAD's BatchNorm updates per student step: BackdoorBench runs one forward for the logits and one per tap (the
 * network truncated after it), so a layer before a tap moves its running statistics once more per tap.
 */
import { strict as assert } from 'node:assert';
import { useWasm } from '../helpers/backend';
import { buildModel } from '../../src/engine/models';
import { bnUpdatesPerStep } from '../../src/engine/defenses/nad';

describe("NAD's BatchNorm updates per student step", () => {
  before(useWasm);

  it('counts 4 in PreAct-ResNet18 layer1-3 and 3 in layer4 with the taps layer3, layer4 and the pooled feature', () => {
    const m = buildModel({ arch: 'preact-resnet18', inputShape: [16, 16, 1], numClasses: 10, options: { width: 4 } });
    try {
      const counts = bnUpdatesPerStep(m, m.layout.stages);
      assert.deepEqual(m.layout.stages, ['layer3', 'layer4', 'avgpool']);
      assert.ok(counts.size > 0);
      for (const [bn, k] of counts) assert.equal(k, bn.path.startsWith('layer4') ? 3 : 4, bn.path);
      // Only the pooled feature (BackdoorBench's rule for other models): every layer twice.
      for (const k of bnUpdatesPerStep(m, ['avgpool']).values()) assert.equal(k, 2);
    } finally {
      m.dispose();
    }
  });

  it('counts by forward order in a plain CNN: a layer after the first tap is passed by fewer truncated forwards', () => {
    const m = buildModel({ arch: 'small-cnn-32', inputShape: [32, 32, 3], numClasses: 10 });
    try {
      const counts = [...bnUpdatesPerStep(m, m.layout.stages).values()];
      assert.ok(counts.length >= 2);
      // Non-increasing along the network, from 1 + taps at the input down to at least 2 (logits + pooled tap).
      for (let i = 1; i < counts.length; i++) assert.ok(counts[i] <= counts[i - 1]);
      assert.equal(counts[0], 1 + m.layout.stages.length);
      assert.ok(counts.at(-1)! >= 2);
    } finally {
      m.dispose();
    }
  });
});
