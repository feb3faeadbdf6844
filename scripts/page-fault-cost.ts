/**
 * What touching fresh memory costs on this machine: 256 MB allocated (Buffer.allocUnsafeSlow, which takes
 * fresh pages from the C library's allocator) and written one byte a page, then written again. On bare metal
 * a page fault is a fraction of a microsecond; in some virtual machines the host backs guest memory only when it
 * is first touched and every such fault costs tens of times more, which is where the first runs of an ONNX
 * Runtime session and every buffer mapped fresh lose their time (src/engine/util/heap_env.ts). Run it with the
 * engine's heap environment to see what huge pages change:
 *   npx tsx scripts/page-fault-cost.ts
 *   GLIBC_TUNABLES=glibc.malloc.hugetlb=1 MALLOC_MMAP_THRESHOLD_=2000000000 npx tsx scripts/page-fault-cost.ts
 */
const MB = 256;
const PAGE = 4096;

function touch(b: Buffer): number {
  const t0 = performance.now();
  for (let i = 0; i < b.length; i += PAGE) b[i] = 1;
  return performance.now() - t0;
}

for (let round = 1; round <= 2; round++) {
  const b = Buffer.allocUnsafeSlow(MB << 20);
  const first = touch(b);
  const again = touch(b);
  const pages = (MB << 20) / PAGE;
  console.log(
    `round ${round}: first touch ${first.toFixed(0)} ms (${((first * 1000) / pages).toFixed(2)} us a 4 KB page, ${(first / MB).toFixed(2)} ms a MB), touched again ${again.toFixed(1)} ms`,
  );
}
