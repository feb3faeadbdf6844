/**
 * The environment of the processes we start for large-tensor work (cell processes, the extension's job
 * process, the PyTorch peer): glibc's malloc thresholds raised, unless the caller set them, so that buffers of
 * megabytes come from the heap and are reused instead of being mapped fresh, page-faulted in and unmapped at
 * every run. ONNX Runtime's outputs reach JavaScript as new buffers at every run (a split graph's forward part
 * hands over 111 MB of saved activations per 128 images of the zoo's width-16 PreAct-ResNet18), and with glibc's
 * defaults each is a fresh mapping until glibc's own dynamic threshold happens to rise past it. PyTorch's
 * activations likewise: with glibc's defaults the peer evaluated the zoo's width-16 victim's 19,000 test images
 * in 21.5 s before the defense and 3.7 s after it (2 threads), 4.3 s before with the thresholds raised, and its
 * FT training took 5.2 s instead of 3.8, so the bench's peer runs with them too, at its best.
 *
 * `glibc.malloc.hugetlb=1` has malloc ask for transparent huge pages on that heap (where the kernel leaves them
 * to madvise, as Debian's does): a training session's first runs touch some 400 MB of fresh activations, and in
 * 4 KB pages that is 100,000 page faults. On the zoo's width-16 PreAct-ResNet18 at 128 images (one thread, no
 * memory pattern: ortSessionOptions) the first run took 790 ms and later ones 284; with huge pages 607-659 ms,
 * and the page faults of the whole command fell from about 105,000 to 44,000. The PyTorch peer's FT job took
 * the same time either way (13.6-14.1 s against 13.7). Other C libraries ignore these variables, and so does
 * a kernel without transparent huge pages (and a glibc before 2.35 this tunable).
 */
export function heapEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return { MALLOC_MMAP_THRESHOLD_: '2000000000', MALLOC_TRIM_THRESHOLD_: '2000000000', GLIBC_TUNABLES: 'glibc.malloc.hugetlb=1', ...env };
}
