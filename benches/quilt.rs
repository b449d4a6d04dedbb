//! Quilting kernel throughput against a memory copy of the same patch bytes, in the same run,
//! for the two shapes of issue 3 (see `tessera bench quilt` for the fractions printed
//! directly). `cargo bench --bench quilt`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::{ArrayD, IxDyn};
use tessera::bench::quilt::{accumulator, cases, stitch_into, unstitch_into};

fn bench(c: &mut Criterion) {
    for case in cases() {
        let image = case.image();
        let grid = case.grid();
        let weights = case.weights();
        let mut patches = ArrayD::<f32>::zeros(IxDyn(&case.patch_shape()));
        let source = ArrayD::<f32>::ones(IxDyn(&case.patch_shape()));
        let mut group = c.benchmark_group(format!("quilt {}", case.name));
        group.throughput(Throughput::Bytes((patches.len() * 4) as u64));
        group.sample_size(10);
        group.bench_function("memcpy of the patch bytes", |b| {
            b.iter(|| {
                patches
                    .as_slice_mut()
                    .unwrap()
                    .copy_from_slice(source.as_slice().unwrap())
            })
        });
        group.bench_function("unstitch", |b| {
            b.iter(|| unstitch_into(&image, &grid, &mut patches))
        });
        unstitch_into(&image, &grid, &mut patches);
        let mut acc = accumulator(&case);
        let mut out = ArrayD::<f32>::zeros(IxDyn(&case.shape));
        group.bench_function("stitch", |b| {
            b.iter(|| stitch_into(&patches, &case, &weights, &mut acc, &mut out))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
