//! Threads per rank (issue 15): the CPUs a rank may run on divided among the ranks of its node
//! that may run on them too, at least 1; `--threads` and `RAYON_NUM_THREADS` override; the
//! report records each rank's width and why.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::write_npy;

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Unstitches a small image with `extra` flags; (threads per rank from the report, launch).
fn run(
    dir: &Path,
    cmd: impl FnOnce(&[&str]) -> std::process::Output,
) -> (Vec<u64>, serde_json::Value) {
    let image = dir.join("image.npy");
    if !image.exists() {
        write_npy(&image, &ArrayD::<f32>::zeros(IxDyn(&[2, 1, 32, 32]))).unwrap();
    }
    let out = dir.join("p.zarr");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(dir.join("p.zarr.report.json"));
    let _ = std::fs::remove_file(dir.join("p_positions.npy"));
    let args = io_line("quilt unstitch", &image, &out, "--window 16,16 --step 8,8");
    ok(cmd(&args));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("p.zarr.report.json")).unwrap()).unwrap();
    let per_rank = r["runs"][0]["per_rank"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["threads"].as_u64().unwrap())
        .collect();
    (per_rank, r["launch"]["threads"].clone())
}

#[test]
fn one_process_uses_its_cpus_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let plain = |a: &[&str]| {
        let mut c = Command::new(&*BIN);
        c.args(a)
            .env("TESSERA_MPI", "0")
            .env_remove("RAYON_NUM_THREADS");
        c.output().unwrap()
    };
    let (t, launch) = run(dir.path(), plain);
    assert_eq!(t, vec![cpus() as u64], "{launch}");
    assert_eq!(launch["source"], "affinity");
    let (t, launch) = run(dir.path(), |a| {
        let mut args = vec!["--threads", "3"];
        args.extend(a);
        plain(&args)
    });
    assert_eq!(t, vec![3], "{launch}");
    assert_eq!(launch["source"], "--threads");
    let (t, _) = run(dir.path(), |a| {
        let mut c = Command::new(&*BIN);
        c.args(a)
            .env("TESSERA_MPI", "0")
            .env("RAYON_NUM_THREADS", "5");
        c.output().unwrap()
    });
    assert_eq!(t, vec![5]);
    fails_with(
        plain(&["--threads", "0", "info", "x.npy"]),
        &["--threads", "at least 1"],
    );
}

#[test]
fn the_thread_sweep_puts_each_speed_up_beside_the_copys() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("sweep");
    let sweep = "--mode threads --thread-counts 1,2,3 --size 1 --memcopy-mib 4 --repeat 2";
    let out = ok(tessera(&scaling_args("pyramid", &dir, sweep)));
    assert!(
        out.contains("| threads |") && out.contains("| 3 |"),
        "{out}"
    );
    assert!(
        out.contains("fastest of 2 run(s) per count after one untimed run"),
        "{out}"
    );
    let rows = scaling_csv(&dir.join("scaling-pyramid-threads.csv"));
    let counts: Vec<f64> = rows.iter().map(|r| r["threads"]).collect();
    assert_eq!(counts, [1.0, 2.0, 3.0]);
    for column in ["speedup", "memcopy_speedup", "vs_memcopy"] {
        assert_eq!(rows[0][column], 1.0, "{column}: {:?}", rows[0]);
    }
    for row in &rows {
        for column in ["seconds", "gb_per_s", "memcopy_gb_per_s", "speedup"] {
            assert!(row[column] > 0.0, "{column}: {row:?}");
        }
        // Each speed-up beside the copy's at the same thread count (4 decimals in the CSV).
        let ratio = row["speedup"] / row["memcopy_speedup"];
        assert!(
            (row["vs_memcopy"] - ratio).abs() <= 1e-3 * ratio.max(1.0),
            "{row:?}"
        );
    }
    // Each count ran as one process of that many threads: the operation and the copy.
    for t in [1u64, 2, 3] {
        let read = |name: String| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
        };
        let report = read(format!("report-{t}.json"));
        assert_eq!(report["runs"][0]["ranks"], 1, "{report}");
        assert_eq!(report["runs"][0]["per_rank"][0]["threads"], t, "{report}");
        assert_eq!(read(format!("memcopy-{t}.json"))["threads_per_rank"], t);
    }
    let png = image::open(dir.join("scaling-pyramid-threads.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1000, 450));
    fails_with(
        tessera(&scaling_args("pyramid", &dir, "--thread-counts 1,2")),
        &["--thread-counts", "--mode threads"],
    );
    fails_with(
        tessera(&scaling_args("pyramid", &dir, "--mode threads --repeat 0")),
        &["--repeat", "0"],
    );
    // Only the fastest run's report is kept, under the count's name.
    assert!(!dir.join("report-1.fastest.json").exists());
}

#[cfg(feature = "mpi")]
/// `mpirun -n 2` with the given binding, without the test suite's RAYON_NUM_THREADS.
fn mpirun2(bind: &str, extra_env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut c = mpi_launcher(Nodes::One, 2, bind);
    c.env_remove("RAYON_NUM_THREADS").env_remove("TESSERA_MPI");
    for (k, v) in extra_env {
        c.env(k, v);
    }
    c.arg(&*BIN).args(args);
    c.output().unwrap()
}

#[cfg(feature = "mpi")]
#[test]
fn ranks_of_a_node_divide_its_cpus() {
    let Some(dir) = mpi_tempdir() else { return };
    // Unbound: both ranks may use every CPU, so each takes half (at least 1).
    let (t, launch) = run(dir.path(), |a| mpirun2("none", &[], a));
    let half = (cpus() / 2).max(1) as u64;
    assert_eq!(t, vec![half, half], "{launch}");
    assert_eq!(launch["sharing"], 2, "{launch}");
    // Bound to a core each (oversubscribed on one core, they share it): one thread each.
    let (t, launch) = run(dir.path(), |a| mpirun2("core", &[], a));
    assert_eq!(t, vec![1, 1], "{launch}");
    // Told.
    let (t, _) = run(dir.path(), |a| {
        let mut args = vec!["--threads", "2"];
        args.extend(a);
        mpirun2("none", &[], &args)
    });
    assert_eq!(t, vec![2, 2]);
    let (t, _) = run(dir.path(), |a| {
        mpirun2("none", &[("RAYON_NUM_THREADS", "3")], a)
    });
    assert_eq!(t, vec![3, 3]);
}
