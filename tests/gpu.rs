//! The GPU layer end to end. Without a GPU (CI): every kernel compiles with NVRTC (the PyPI
//! wheel the setup script installs), `--device cuda` is one clear error that writes nothing,
//! and `--device auto` runs on the CPU and says so in the report. With a GPU (the lent machine,
//! `scripts/gpu-check.sh`): quilt unstitch/stitch, the Debevec merge and pyramids (every method)
//! give the CPU's bytes on random inputs (NaN, 2-D and 3-D, variances, integer types), on 1 and
//! 2 ranks, and runs interrupted on the GPU resume on the CPU to the same bytes. Tests that need what is missing say so and pass.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::write_npy;

/// The folder with `libnvrtc.so.13`: `TESSERA_NVRTC_DIR`, else the wheel in the test venv.
fn nvrtc_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TESSERA_NVRTC_DIR") {
        return Some(PathBuf::from(d));
    }
    let python = std::env::var("TESSERA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/pyenv/bin/python"));
    let venv = python.parent()?.parent()?.to_path_buf();
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let d = e.path().join("site-packages/nvidia/cu13/lib");
            d.join("libnvrtc.so.13").is_file().then_some(d)
        })
}

/// `LD_LIBRARY_PATH` with the NVRTC folder first (when there is one).
fn library_path() -> String {
    let mut parts: Vec<String> = nvrtc_dir()
        .map(|d| vec![d.to_string_lossy().into_owned()])
        .unwrap_or_default();
    if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
        parts.push(old);
    }
    parts.join(":")
}

fn tessera_gpu(args: &[&str]) -> std::process::Output {
    tessera_env(args, &[("LD_LIBRARY_PATH", &library_path())])
}

/// `args`, owned.
fn owned(args: Vec<&str>) -> Vec<String> {
    args.into_iter().map(String::from).collect()
}

/// Runs `args --device <device> <extra>` with the NVRTC folder on the library path and `env`.
fn on_device(
    mut args: Vec<String>,
    device: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    args.extend(["--device".into(), device.into()]);
    args.extend(extra.iter().map(|x| x.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let lib = library_path();
    let mut e = vec![("LD_LIBRARY_PATH", lib.as_str())];
    e.extend(env);
    tessera_env(&a, &e)
}

/// `args(out)` run whole on the CPU into `whole`, and into `resumed` killed after two units on
/// the GPU then resumed on the CPU: both give the same bytes.
fn resumes_on_the_cpu(whole: &Path, resumed: &Path, args: impl Fn(&Path) -> Vec<String>) {
    ok(on_device(args(whole), "cpu", &[], &[]));
    let abort = [("TESSERA_ABORT_AFTER_UNITS", "2")];
    let killed = on_device(args(resumed), gpu_device(), &[], &abort);
    assert!(!killed.status.success());
    ok(on_device(args(resumed), "cpu", &["--resume"], &[]));
    assert_same_tree(whole, resumed);
}

/// The device the GPU tests ask for: `cuda`, or `cpu` with `TESSERA_GPU_TESTS_ON_CPU=1`, which
/// runs the GPU tests' command lines on the CPU (a check of the tests themselves where no GPU
/// is: both sides then must agree trivially, but every command must run).
fn gpu_device() -> &'static str {
    if std::env::var("TESSERA_GPU_TESTS_ON_CPU").as_deref() == Ok("1") {
        "cpu"
    } else {
        "cuda"
    }
}

/// Whether the 2-rank runs can happen: mpirun, and a binary built with MPI (the binary carried
/// to the GPU machine has none: scripts/gpu-check.sh sets TESSERA_GPU_SKIP_MPI=1).
fn two_ranks() -> bool {
    if std::env::var("TESSERA_GPU_SKIP_MPI").as_deref() == Ok("1") {
        eprintln!("skipping the 2-rank runs: TESSERA_GPU_SKIP_MPI=1");
        return false;
    }
    mpirun().is_some()
}

/// Whether this machine can run the GPU path: a driver, a device and NVRTC.
fn gpu() -> bool {
    if gpu_device() == "cpu" {
        return true;
    }
    let out = tessera_gpu(&["gpu", "info"]);
    let info = text(&out);
    let usable = info.contains("cuda:0:") && info.contains("NVRTC: 1");
    if !usable {
        assert!(
            std::env::var("TESSERA_REQUIRE_GPU").as_deref() != Ok("1"),
            "no usable GPU but TESSERA_REQUIRE_GPU=1 (scripts/gpu-check.sh sets it):\n{info}"
        );
        eprintln!("skipping the GPU run: no usable GPU here (tessera gpu info says:\n{info})");
    }
    usable
}

#[test]
fn every_kernel_compiles_with_nvrtc_and_has_no_fma() {
    if !cfg!(feature = "cuda") {
        let out = tessera(&["gpu", "compile"]);
        fails_with(out, &["needs a tessera built with feature \"cuda\""]);
        eprintln!("skipping the compile check: this build has no \"cuda\" feature");
        return;
    }
    if nvrtc_dir().is_none() {
        assert!(
            std::env::var("TESSERA_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "libnvrtc.so.13 not found but TESSERA_REQUIRE_NVRTC=1 (scripts/setup.sh --nvrtc installs it)"
        );
        eprintln!("skipping: libnvrtc.so.13 not found (scripts/setup.sh --nvrtc installs the nvidia-cuda-nvrtc wheel)");
        return;
    }
    let out = ok(tessera_gpu(&["gpu", "compile"]));
    assert!(
        out.contains("all 5 kernel sources compile for compute_80, compute_90"),
        "{out}"
    );
    for kernel in [
        "quilt/stitch.cu",
        "quilt/unstitch.cu",
        "hdr/debevec.cu",
        "pyramid/reduce.cu",
        "crop/crop.cu",
    ] {
        for arch in ["compute_80", "compute_90"] {
            assert!(out.contains(&format!("{arch} {kernel}")), "{out}");
        }
    }
}

/// ptxas' own report of every kernel function for the A100's and the H100's architectures:
/// no stack frame, no spills (a per-thread array in local memory made the pyramid mean read
/// 512 B per thread through the caches), at most `gpu::MAX_REGISTERS` registers.
#[test]
fn every_kernel_keeps_its_data_in_registers() {
    if !cfg!(feature = "cuda") {
        eprintln!("skipping: this build has no \"cuda\" feature");
        return;
    }
    if nvrtc_dir().is_none() {
        assert!(
            std::env::var("TESSERA_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "libnvrtc.so.13 not found but TESSERA_REQUIRE_NVRTC=1"
        );
        eprintln!("skipping: libnvrtc.so.13 not found (scripts/setup.sh --nvrtc installs it)");
        return;
    }
    let out = ok(tessera_gpu(&["gpu", "resources", "--check"]));
    assert!(
        out.contains("0 kernel function(s) keep data in local memory"),
        "{out}"
    );
    for arch in ["sm_80", "sm_90"] {
        for function in [
            "stitch_f32_f32",
            "mean_u8",
            "mode_f64",
            "laplacian_diff",
            "crop_analyse_f32",
        ] {
            let line = out
                .lines()
                .find(|l| l.starts_with(arch) && l.contains(&format!(" {function}: ")))
                .unwrap_or_else(|| panic!("no report for {arch} {function}:\n{out}"));
            assert!(
                line.contains(" 0 B stack frame, 0 B spill stores, 0 B spill loads"),
                "{line}"
            );
        }
    }
}

/// `tessera gpu compile --cache` fills the kernel cache with machine code (ELF cubins behind
/// tessera's header); a second run finds every entry; a corrupt entry is compiled again with a
/// warning and replaced.
#[test]
fn the_kernel_cache_is_filled_once_and_never_trusts_a_bad_entry() {
    if !cfg!(feature = "cuda") || nvrtc_dir().is_none() {
        assert!(
            !cfg!(feature = "cuda") || std::env::var("TESSERA_REQUIRE_NVRTC").as_deref() != Ok("1"),
            "libnvrtc.so.13 not found but TESSERA_REQUIRE_NVRTC=1"
        );
        eprintln!("skipping: needs the \"cuda\" feature and libnvrtc.so.13");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("kernels");
    let env = [
        ("LD_LIBRARY_PATH", library_path()),
        ("TESSERA_KERNEL_CACHE", s(&cache)),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["gpu", "compile", "--cache", "--arch", "sm_90"];
    let first = ok(tessera_env(&args, &env));
    assert_eq!(first.matches("compiled and cached").count(), 5, "{first}");
    let second = ok(tessera_env(&args, &env));
    assert_eq!(second.matches("already cached").count(), 5, "{second}");
    let mut entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 5);
    for e in &entries {
        let bytes = std::fs::read(e).unwrap();
        assert_eq!(&bytes[..16], b"tessera-kernel1\n");
        assert_eq!(
            &bytes[16 + 64 + 8 + 32..][..4],
            b"\x7fELF",
            "{}",
            e.display()
        );
    }
    let victim = entries.iter().find(|e| s(e).contains("debevec")).unwrap();
    let whole = std::fs::read(victim).unwrap();
    std::fs::write(victim, &whole[..whole.len() / 2]).unwrap();
    let third = ok(tessera_env(&args, &env));
    assert!(
        third.contains("is not usable") && third.contains("compiling again"),
        "{third}"
    );
    assert_eq!(third.matches("already cached").count(), 4, "{third}");
    assert_eq!(std::fs::read(victim).unwrap(), whole);
}

fn random_image(shape: &[usize], seed: u64, nan_every: u64) -> ArrayD<f32> {
    let mut rng = Rng::new(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        let v = rng.below(2_000_000) as f32 / 1_000_000.0 - 1.0;
        if nan_every > 0 && rng.below(nan_every) == 0 {
            f32::NAN
        } else {
            v
        }
    })
}

fn report_device(report: &Path) -> serde_json::Value {
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).expect("report written")).unwrap();
    r["runs"][0]["per_rank"][0]["device"].clone()
}

#[test]
fn without_a_gpu_cuda_is_one_clear_error_and_auto_runs_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.npy");
    write_npy(&image, &random_image(&[1, 1, 32, 32], 1, 0)).unwrap();
    let patches = dir.path().join("p.zarr");
    let unstitch = |device: &str| {
        tessera_gpu(&io_args(
            "quilt unstitch",
            &image,
            &patches,
            &["--window", "16,16", "--step", "8,8", "--device", device],
        ))
    };
    if tessera_gpu(&["gpu", "info"])
        .stdout
        .windows(7)
        .any(|w| w == b"cuda:0:")
    {
        eprintln!("skipping: this machine has a GPU (the GPU tests cover it)");
        return;
    }
    // Without the driver, or in a build without the "cuda" feature.
    let why = if cfg!(feature = "cuda") {
        "libcuda.so.1"
    } else {
        "feature \"cuda\""
    };
    let err = fails_with(unstitch("cuda"), &[why]);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!patches.exists(), "nothing may be written");
    let err = fails_with(unstitch("cuda:x"), &["--device", "cuda:N"]);
    assert!(!err.contains("panicked"), "{err}");
    ok(unstitch("auto"));
    let device = report_device(&dir.path().join("p.zarr.report.json"));
    assert_eq!(device["device"], "cpu", "{device}");
    assert!(device["reason"].as_str().unwrap().contains(why), "{device}");
    // The device is not part of the output: a resume may change it (identity unchanged).
    let params: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("p.zarr.report.json")).unwrap())
            .unwrap();
    assert!(params["parameters"].get("device").is_none(), "{params}");
}

/// Runs `args` with `--device cpu` into `cpu/` and `--device cuda` into `gpu/` (same names)
/// and compares every output file byte for byte.
fn same_on_both(dir: &Path, ranks: usize, args: &dyn Fn(&Path) -> Vec<String>) {
    for side in ["cpu", "cuda"] {
        let out = dir.join(format!("{side}-{ranks}"));
        std::fs::create_dir_all(&out).unwrap();
        let mut a = args(&out);
        let device = if side == "cpu" { "cpu" } else { gpu_device() };
        a.extend(["--device".into(), device.into()]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let env = [("LD_LIBRARY_PATH", library_path())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if ranks == 1 {
            ok(tessera_env(&a, &env));
        } else {
            ok(tessera_mpi(ranks, &a, &env));
        }
        for f in std::fs::read_dir(&out).unwrap().flatten() {
            if f.path().to_string_lossy().ends_with(".report.json") {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
    }
    assert_same_tree(
        &dir.join(format!("cpu-{ranks}")),
        &dir.join(format!("cuda-{ranks}")),
    );
}

#[test]
fn quilt_on_the_gpu_gives_the_cpu_bytes() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[usize], &str, &str, &str); 3] = [
        (&[2, 3, 70, 90], "16,32", "8,12", "border"),
        (&[1, 2, 20, 33, 40], "8,16,16", "4,8,8", "gaussian"),
        (&[3, 5, 64, 64], "32,32", "16,16", "hann"),
    ];
    for (i, (shape, window, step, blend)) in cases.iter().enumerate() {
        let case = dir.path().join(format!("case{i}"));
        std::fs::create_dir_all(&case).unwrap();
        let image = case.join("image.npy");
        write_npy(&image, &random_image(shape, 10 + i as u64, 97)).unwrap();
        // Unstitch on each device; then stitch each device's patches (with a variance made of
        // the patches themselves) on each device.
        for ranks in [1, 2] {
            if ranks == 2 && !two_ranks() {
                continue;
            }
            same_on_both(&case, ranks, &|out| {
                io_args(
                    "quilt unstitch",
                    &image,
                    &out.join("p.zarr"),
                    &[
                        "--window",
                        window,
                        "--step",
                        step,
                        "--gpu-memory-limit",
                        "2M",
                    ],
                )
                .into_iter()
                .map(String::from)
                .collect()
            });
            let patches = case.join(format!("cpu-{ranks}/p.zarr"));
            let stitched = case.join(format!("st-{ranks}"));
            std::fs::create_dir_all(&stitched).unwrap();
            same_on_both(&stitched, ranks, &|out| {
                io_args(
                    "quilt stitch",
                    &patches,
                    &out.join("mean.zarr"),
                    &[
                        "--weights",
                        &s(&out.join("w.zarr")),
                        "--variance",
                        &s(&patches),
                        "--std",
                        &s(&out.join("std.zarr")),
                        "--blend",
                        blend,
                        "--gpu-memory-limit",
                        "3M",
                    ],
                )
                .into_iter()
                .map(String::from)
                .collect()
            });
        }
    }
}

#[test]
fn a_stitch_interrupted_on_the_gpu_resumes_on_the_cpu_to_the_same_bytes() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.npy");
    write_npy(&image, &random_image(&[2, 2, 96, 80], 3, 0)).unwrap();
    let patches = dir.path().join("p.zarr");
    run_line(
        "quilt unstitch",
        &image,
        &patches,
        "--window 32,32 --step 16,16 --device cpu",
    );
    let stitch = |out: &Path| owned(io_line("quilt stitch", &patches, out, "--chunks 1,1,16,80"));
    let (whole, resumed) = (
        dir.path().join("whole.zarr"),
        dir.path().join("resumed.zarr"),
    );
    resumes_on_the_cpu(&whole, &resumed, stitch);
}

#[test]
fn the_debevec_merge_on_the_gpu_gives_the_cpu_bytes() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    ok(tessera(&synthetic_args(&archive, "3", &["--size", "200"])));
    let response = dir.path().join("response.npz");
    run_calibrate(&archive, &response, &["--recursive"]);
    for ranks in [1, 2] {
        if ranks == 2 && !two_ranks() {
            continue;
        }
        for format in ["npy", "zarr"] {
            let case = dir.path().join(format);
            std::fs::create_dir_all(&case).unwrap();
            same_on_both(&case, ranks, &|out| {
                let target = if format == "zarr" {
                    out.join("radiance.zarr")
                } else {
                    out.join("radiance")
                };
                [
                    "hdr",
                    "merge",
                    "--input",
                    &s(&archive),
                    "--recursive",
                    "--response",
                    &s(&response),
                    "--output",
                    &s(&target),
                    "--format",
                    format,
                    "--gpu-memory-limit",
                    "1M",
                ]
                .map(String::from)
                .to_vec()
            });
            std::fs::remove_dir_all(&case).unwrap();
        }
    }
}

#[test]
fn pyramids_on_the_gpu_give_the_cpu_bytes() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 3-D f32 with NaN (several units of 1 MiB, halos between them), and 2-D u16.
    let volume = dir.path().join("volume.npy");
    write_npy(&volume, &random_image(&[96, 100, 90], 21, 53)).unwrap();
    let mut rng = Rng::new(22);
    let slice = random_slice(&mut rng, &[300, 310], tessera::io::DType::U16);
    let plane = dir.path().join("plane.npy");
    write_npy(&plane, &slice.into_array::<u16>().unwrap()).unwrap();
    for (input, chunks) in [(&volume, "16,16,16"), (&plane, "64,64")] {
        for method in ["mean", "mode", "gaussian", "laplacian"] {
            for ranks in [1, 2] {
                if ranks == 2 && !two_ranks() {
                    continue;
                }
                let case = dir.path().join(format!("{method}-{}", chunks.len()));
                std::fs::create_dir_all(&case).unwrap();
                same_on_both(&case, ranks, &|out| {
                    io_args(
                        "pyramid",
                        input,
                        &out.join("p.zarr"),
                        &["--method", method, "--chunks", chunks, "--codec", "none"],
                    )
                    .into_iter()
                    .map(String::from)
                    .collect()
                });
                std::fs::remove_dir_all(&case).unwrap();
            }
        }
    }
}

#[test]
fn a_pyramid_interrupted_on_the_gpu_resumes_on_the_cpu_to_the_same_bytes() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume.npy");
    write_npy(&volume, &random_image(&[80, 96, 96], 23, 0)).unwrap();
    let flags = "--method laplacian --chunks 16,16,16";
    let pyramid = |out: &Path| owned(io_line("pyramid", &volume, out, flags));
    // The same name in two folders: the name is in the OME metadata.
    let (whole, resumed) = (dir.path().join("a/p.zarr"), dir.path().join("b/p.zarr"));
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    resumes_on_the_cpu(&whole, &resumed, pyramid);
}

/// Runs `tessera crop` (args plus `--output out/c.npy`) on the CPU and on the GPU, and
/// compares every .npy output byte for byte and the results' analysis and validation.
fn crop_same_on_both(dir: &Path, ranks: usize, args: &[&str]) {
    let mut results = Vec::new();
    for side in ["cpu", "cuda"] {
        let out = dir.join(format!("{side}-{ranks}"));
        std::fs::create_dir_all(&out).unwrap();
        let device = if side == "cpu" { "cpu" } else { gpu_device() };
        let target = s(&out.join("c.npy"));
        let mut a: Vec<&str> = args.to_vec();
        a.extend([
            "--output",
            &target,
            "--device",
            device,
            "--no-visualization",
        ]);
        let lib = library_path();
        let env = [("LD_LIBRARY_PATH", lib.as_str())];
        if ranks == 1 {
            ok(tessera_env(&a, &env));
        } else {
            ok(tessera_mpi(ranks, &a, &env));
        }
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("c_results.json")).unwrap()).unwrap();
        results.push((r["analysis"].clone(), r["validation"].clone()));
    }
    assert_eq!(results[0], results[1]);
    for name in ["c.npy", "c_radii.npy", "c_centers.npy", "c_retention.npy"] {
        let a = std::fs::read(dir.join(format!("cpu-{ranks}/{name}"))).unwrap();
        let b = std::fs::read(dir.join(format!("cuda-{ranks}/{name}"))).unwrap();
        assert!(
            a == b,
            "{name} differs between the CPU and the GPU on {ranks} rank(s)"
        );
    }
}

#[test]
fn crop_on_the_gpu_gives_the_cpu_bytes() {
    if !gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // u16 counts around a moving bright disk, a scan (Sy, Sx, H, W); f32 with negative pixels
    // (analysed on the CPU by design) and a wide dynamic range.
    let mut rng = Rng::new(31);
    let counts = ArrayD::from_shape_fn(IxDyn(&[3, 5, 48, 40]), |i| {
        let (cy, cx) = (20.0 + i[0] as f64, 18.0 + i[1] as f64);
        let d2 = (i[2] as f64 - cy).powi(2) + (i[3] as f64 - cx).powi(2);
        (if d2 < 30.0 { 900 } else { 0 } + rng.below(7)) as u16
    });
    let scan = dir.path().join("scan.npy");
    write_npy(&scan, &counts).unwrap();
    let floats = random_image(&[20, 33, 29], 32, 0).mapv(|v| v * v * v * 100.0);
    let stack = dir.path().join("stack.npy");
    write_npy(&stack, &floats).unwrap();
    for (name, input) in [("u16", &scan), ("f32", &stack)] {
        for ranks in [1, 2] {
            if ranks == 2 && !two_ranks() {
                continue;
            }
            let case = dir.path().join(name);
            std::fs::create_dir_all(&case).unwrap();
            let input = s(input);
            crop_same_on_both(
                &case,
                ranks,
                &[
                    "crop",
                    "--input",
                    &input,
                    "--chunk-size",
                    "4",
                    "--min-retention",
                    "0.01",
                ],
            );
            std::fs::remove_dir_all(&case).unwrap();
        }
    }
}

#[test]
fn without_a_gpu_crop_and_pyramid_on_cuda_are_one_clear_error_writing_nothing() {
    if tessera_gpu(&["gpu", "info"])
        .stdout
        .windows(7)
        .any(|w| w == b"cuda:0:")
    {
        eprintln!("skipping: this machine has a GPU (the GPU tests cover it)");
        return;
    }
    let why = if cfg!(feature = "cuda") {
        "libcuda.so.1"
    } else {
        "feature \"cuda\""
    };
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("v.npy");
    write_npy(&volume, &random_image(&[8, 8, 8], 5, 0)).unwrap();
    let out = s(&dir.path().join("c.npy"));
    let err = fails_with(
        tessera_gpu(&crop_test_args("4", "16", &out, &["--device", "cuda"])),
        &[why],
    );
    assert!(!err.contains("panicked"), "{err}");
    let pyr = s(&dir.path().join("p.zarr"));
    fails_with(
        tessera_gpu(&io_line("pyramid", &volume, &pyr, "--device cuda")),
        &[why],
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("v.npy")],
        "nothing may be written"
    );
    // auto runs on the CPU and says why in the report.
    ok(tessera_gpu(&io_args("pyramid", &volume, &pyr, &[])));
    let device = report_device(&dir.path().join("p.zarr.report.json"));
    assert_eq!(device["device"], "cpu", "{device}");
}
