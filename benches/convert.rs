//! Convert throughput against a plain copy of the same bytes, in the same run.
//! `cargo bench --bench convert`; the full-size run (256 x 1024 x 1024) is
//! `tessera bench convert`, which prints the fraction directly.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;
use tessera::comm::Local;
use tessera::exec::RunOptions;
use tessera::io::{images, Block, Codec};
use tessera::job::{AxisOrder, ConvertJob, OutputFormat};

const SLICES: usize = 64;
const SIZE: usize = 512;

fn make_stack(dir: &Path) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    (0..SLICES)
        .into_par_iter()
        .map(|z| {
            let slice = ArrayD::from_shape_fn(IxDyn(&[SIZE, SIZE]), |i| {
                (i[0] * 7 + i[1] * 3 + z * 11) as u16
            });
            let path = dir.join(format!("b_{z:04}.tif"));
            images::write_tiff(&path, &Block::U16(slice)).unwrap();
            std::fs::metadata(&path).unwrap().len()
        })
        .sum()
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let bytes = make_stack(&input);
    let files: Vec<_> = std::fs::read_dir(&input)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let mut group = c.benchmark_group("convert_64x512x512_u16");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    let copy_dir = tmp.path().join("copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    group.bench_function("plain_file_copy", |b| {
        b.iter(|| {
            files.par_iter().for_each(|f| {
                let data = std::fs::read(f).unwrap();
                std::fs::write(copy_dir.join(f.file_name().unwrap()), data).unwrap();
            })
        })
    });
    for codec in [Codec::None, Codec::Zstd] {
        let output = tmp.path().join(format!("out-{codec:?}.zarr"));
        let job = ConvertJob {
            input: input.clone(),
            pattern: r"(b)_(\d+)\.tif$".into(),
            output: output.clone(),
            extension: None,
            axis_order: AxisOrder::Zcyx,
            chunks: None,
            shards: None,
            codec,
            dtype: None,
            format: OutputFormat::Zarr,
            pyramid_levels: None,
            pyramid_method: Default::default(),
            pyramid_factor: None,
            run: RunOptions::default(),
        };
        group.bench_function(format!("tessera_convert_{codec:?}"), |b| {
            b.iter_batched(
                || {
                    let _ = std::fs::remove_dir_all(&output);
                },
                |()| tessera::ops::convert::run(&job, &Local).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
