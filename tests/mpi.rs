//! Real MPI ranks: `mpirun -n 1, 2, 4` of the built binary (MPI starts once per process, so
//! these are programs, not in-process tests). Skipped with a message where `mpirun` is
//! missing, unless `TESSERA_REQUIRE_MPI=1` (CI) makes that a failure. The 2- and 4-rank cases
//! of the identity tests also run on two nodes emulated on this machine (common::Nodes::Two:
//! half the ranks in each of two UTS namespaces, talking over TCP), and must write the same
//! bytes; what differs between nodes is checked on its own below.
#![cfg(feature = "mpi")]

mod common;

use common::*;
use tessera::io::DType;

#[test]
fn every_collective_agrees_on_1_2_and_4_ranks_on_one_and_two_nodes() {
    if mpirun().is_none() {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for (ranks, nodes) in placements(&[1, 2, 4]) {
        // Threads from each node's own CPUs, not the suite's RAYON_NUM_THREADS.
        let out = ok(mpi_command_on(nodes, ranks, &["debug", "comm-check"], &[])
            .env_remove("RAYON_NUM_THREADS")
            .output()
            .unwrap());
        assert!(out.contains(&format!("agree on {ranks} rank")), "{out}");
        let per_node = match nodes {
            Nodes::One => ranks,
            Nodes::Two => ranks.div_ceil(2),
        };
        for rank in 0..ranks {
            let host = match nodes {
                Nodes::One => here.trim(),
                Nodes::Two => NODE_NAMES[rank / per_node],
            };
            // Node-local numbering (one GPU per rank of a node) and the node's CPUs divided
            // among its own ranks only.
            let line = format!(
                "placement: rank {rank} on {host}: node rank {} of {per_node}, {} thread(s)",
                rank % per_node,
                (cpus / per_node).max(1)
            );
            assert!(
                out.contains(&line),
                "{ranks} ranks on {nodes:?}: no {line:?} in\n{out}"
            );
        }
    }
}

/// Two emulated nodes: each run report names every rank's host and its own node's thread
/// count; the output lock is rank 0's host's: a dead job's lock on that host is taken over,
/// another host's refused (it cannot be checked from here), as are its lock temporaries.
#[test]
fn two_nodes_name_their_hosts_in_reports_and_locks() {
    if mpirun().is_none() || emulated_nodes().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("v.npy");
    ndarray_npy::write_npy(&input, &ndarray::Array4::<f32>::zeros((2, 1, 24, 20))).unwrap();
    let geometry = [
        "--window",
        "8,8",
        "--step",
        "4,4",
        "--patches-per-chunk",
        "4",
    ];
    let unstitch = |nodes: Nodes, out: &std::path::Path| {
        let args = io_args("quilt unstitch", &input, out, &geometry);
        mpi_command_on(nodes, 4, &args, &[("TESSERA_UNIT_BYTES", "2000")])
            .env_remove("RAYON_NUM_THREADS")
            .output()
            .unwrap()
    };
    let single = d.path().join("single.zarr");
    run_io("quilt unstitch", &input, &single, &geometry);
    let out = d.path().join("two.zarr");
    ok(unstitch(Nodes::Two, &out));
    assert_same_tree(&single, &out);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("two.zarr.report.json")).unwrap())
            .unwrap();
    let per_rank = report["runs"][0]["per_rank"].as_array().unwrap();
    let hosts: Vec<&str> = per_rank
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["nodeA", "nodeA", "nodeB", "nodeB"], "{report}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for r in per_rank {
        assert_eq!(r["threads"], (cpus / 2).max(1), "{report}");
        assert!(r["units"].as_u64().unwrap() > 0, "{report}");
    }
    assert_eq!(report["launch"]["threads"]["sharing"], 2, "{report}");

    // A PID no process has any more; a dead job's lock (and lock temporary) on `host` for
    // each output.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let locked_by = |name: &str, host: &str| {
        let out = d.path().join(name);
        let owner = serde_json::json!({"host": host, "pid": pid, "started": 0});
        std::fs::write(d.path().join(format!("{name}.lock")), owner.to_string()).unwrap();
        out
    };
    let temporary = |host: &str| d.path().join(format!("a.zarr.lock.tmp-{host}-{pid}"));
    // nodeA's dead job: rank 0 runs on nodeA, finds the PID gone, takes the lock over and
    // removes nodeA's lock temporaries, not nodeB's.
    let out = locked_by("a.zarr", "nodeA");
    for host in NODE_NAMES {
        std::fs::write(temporary(host), "").unwrap();
    }
    let log = ok(unstitch(Nodes::Two, &out));
    assert!(log.contains("stale lock"), "{log}");
    assert!(!temporary("nodeA").exists() && temporary("nodeB").exists());
    assert!(
        !d.path().join("a.zarr.lock").exists(),
        "the run removes its lock"
    );
    assert_same_tree(&single, &out);
    // nodeB's job cannot be checked from nodeA; nor nodeA's from this machine as one node.
    fails_with(
        unstitch(Nodes::Two, &locked_by("b.zarr", "nodeB")),
        &["host nodeB"],
    );
    fails_with(
        unstitch(Nodes::One, &locked_by("c.zarr", "nodeA")),
        &["host nodeA"],
    );
}

#[test]
fn convert_writes_identical_chunks_on_1_2_and_4_ranks() {
    let Some(d) = mpi_tempdir() else { return };
    let input = d.path().join("in");
    let slices = write_slices(&input, "vol", 23, &[20, 24], DType::U16, 21);
    let reference = reference_stack(&slices, 0);
    let env = [("TESSERA_UNIT_BYTES", "2000")]; // 2 chunks of 2 slices per unit: 6 units
    let layouts: [&[&str]; 3] = [
        &["--chunks", "2,8,8"],
        &[
            "--chunks", "1,10,12", "--shards", "3,20,24", "--codec", "gzip",
        ],
        &["--chunks", "5,20,24", "--codec", "none"],
    ];
    for (l, layout) in layouts.iter().enumerate() {
        let single = d.path().join(format!("l{l}-local.zarr"));
        let mut args = io_args("convert", &input, &single, &[]);
        args.extend_from_slice(layout);
        ok(tessera_env(&args, &env));
        assert_eq!(read_all(&s(&single)), reference);
        for (ranks, nodes) in placements(&[1, 2, 4]) {
            let out = d.path().join(format!("l{l}-{ranks}-{nodes:?}.zarr"));
            let mut args = io_args("convert", &input, &out, &[]);
            args.extend_from_slice(layout);
            let log = ok(tessera_mpi_on(nodes, ranks, &args, &env));
            assert!(log.contains(&format!("on {ranks} rank")), "{log}");
            assert_same_tree(&single, &out);
        }
    }
    // .npy: several ranks fill one memory-mapped file.
    let single = d.path().join("local.npy");
    ok(tessera_env(&io_args("convert", &input, &single, &[]), &env));
    let four = d.path().join("four.npy");
    ok(tessera_mpi(
        4,
        &io_args("convert", &input, &four, &[]),
        &env,
    ));
    assert_eq!(
        std::fs::read(&single).unwrap(),
        std::fs::read(&four).unwrap()
    );
}

#[cfg(feature = "hdf5")]
#[test]
fn parallel_hdf5_reads_back_identical_to_one_process() {
    let Some(d) = mpi_tempdir() else { return };
    let input = d.path().join("in");
    let slices = write_slices(&input, "vol", 9, &[3, 10, 6], DType::U8, 22);
    let reference = reference_stack(&slices, 1); // CZYX
    let env = [("TESSERA_UNIT_BYTES", "200")];
    for (ranks, codec) in [(1, "gzip"), (2, "none"), (4, "gzip")] {
        let out = format!("{}:/scan/data", s(&d.path().join(format!("o{ranks}.h5"))));
        ok(tessera_mpi(
            ranks,
            &io_args(
                "convert",
                &input,
                &out,
                &[
                    "--axis-order",
                    "CZYX",
                    "--codec",
                    codec,
                    "--chunks",
                    "1,2,5,6",
                ],
            ),
            &env,
        ));
        assert_eq!(read_all(&out), reference, "{ranks} ranks");
        let m = meta(&out);
        assert_eq!(m.chunks, Some(vec![1, 2, 5, 6]));
        assert_eq!(m.attributes["axis_order"], "CZYX");
    }
}

#[test]
fn a_killed_job_resumes_on_another_rank_count_to_identical_bytes() {
    let Some(d) = mpi_tempdir() else { return };
    let input = d.path().join("in");
    write_slices(&input, "vol", 16, &[16, 16], DType::U16, 23);
    let env = [("TESSERA_UNIT_BYTES", "1024")]; // 8 units
    let clean = d.path().join("clean.zarr");
    ok(tessera_env(
        &io_line("convert", &input, &clean, "--chunks 2,16,16"),
        &env,
    ));
    let out = d.path().join("o.zarr");
    let args = io_line("convert", &input, &out, "--chunks 2,16,16");
    let killed = tessera_mpi(2, &args, &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "2")]);
    assert!(!killed.status.success(), "{}", text(&killed));
    assert!(!out.exists());
    let resume = resumed(&args);
    ok(tessera_mpi(4, &resume, &env));
    assert_same_tree(&clean, &out);
}

#[test]
fn a_plan_error_every_rank_finds_is_printed_once() {
    let Some(d) = mpi_tempdir() else { return };
    let input = d.path().join("in");
    write_slices(&input, "vol", 8, &[32, 32], DType::U16, 24);
    // Cutting the end of a TIFF cuts its directory: the header probe fails, before any output.
    let victim = input.join("vol_007.tif");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() - 64]).unwrap();
    let out = d.path().join("o.zarr");
    let stderr = fails_with(
        tessera_mpi(4, &io_args("convert", &input, &out, &[]), &[]),
        &["vol_007.tif"],
    );
    assert!(
        !stderr.contains("(rank"),
        "the same error on every rank is not attributed: {stderr}"
    );
    assert!(!out.exists() && !d.path().join("o.zarr.partial").exists());
}

#[test]
fn a_failure_on_one_rank_mid_run_stops_every_rank_with_one_error() {
    let Some(d) = mpi_tempdir() else { return };
    let input = d.path().join("in");
    // Values fit in uint8 except in the last slice, which only the last rank reads.
    for k in 0..8u16 {
        let v = if k == 7 { 300 } else { k };
        let slice = ndarray::ArrayD::from_elem(ndarray::IxDyn(&[32, 32]), v);
        tessera::io::images::write_tiff(
            &input_dir(&input).join(format!("vol_{k:03}.tif")),
            &tessera::io::Block::U16(slice),
        )
        .unwrap();
    }
    let out = d.path().join("o.zarr");
    let res = tessera_mpi(
        4,
        &io_line("convert", &input, &out, "--dtype u8"),
        &[("TESSERA_UNIT_BYTES", "1024")],
    );
    let stderr = fails_with(res, &["(rank 3)", "vol_007.tif", "300", "uint8"]);
    assert!(!stderr.contains("stopped because"), "{stderr}");
    assert!(!out.exists());
    assert!(
        d.path().join("o.zarr.partial").exists(),
        "left for --resume, clearly partial"
    );
}

fn input_dir(p: &std::path::Path) -> &std::path::Path {
    std::fs::create_dir_all(p).unwrap();
    p
}

#[test]
fn quilt_unstitch_and_stitch_are_identical_on_1_2_and_4_ranks() {
    let Some(d) = mpi_tempdir() else { return };
    let mut rng = Rng::new(41);
    let img = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 2, 30, 26, 21]), |_| {
        rng.below(1000) as f32 / 333.0
    });
    let input = d.path().join("v.npy");
    ndarray_npy::write_npy(&input, &img).unwrap();
    let env = [("TESSERA_UNIT_BYTES", "20000")];
    let geometry = [
        "--window", "8,8,6", "--step", "5,4,6", "--border", "1", "--blend", "gaussian",
    ];
    // (patch chunk files, stitched mean bytes, weight bytes) of the first rank count.
    type Outputs = (Vec<(String, Vec<u8>)>, Vec<u8>, Vec<u8>);
    let mut reference: Option<Outputs> = None;
    for (ranks, nodes) in placements(&[1, 2, 4]) {
        let name = |what: &str, ext: &str| d.path().join(format!("{what}{ranks}{nodes:?}.{ext}"));
        let p = name("p", "zarr");
        let mut args = io_line("quilt unstitch", &input, &p, "--patches-per-chunk 7");
        args.extend(geometry);
        ok(tessera_mpi_on(nodes, ranks, &args, &env));
        let out = name("s", "npy");
        let w = name("w", "npy");
        ok(tessera_mpi_on(
            nodes,
            ranks,
            &io_args(
                "quilt stitch",
                &p,
                &out,
                &[
                    "--weights",
                    &s(&w),
                    "--memory-limit",
                    "1M",
                    "--chunks",
                    "1,1,2,26,21",
                ],
            ),
            &env,
        ));
        let now = (
            tree(&p),
            std::fs::read(&out).unwrap(),
            std::fs::read(&w).unwrap(),
        );
        let positions = d.path().join(format!("p{ranks}{nodes:?}_positions.npy"));
        let positions = std::fs::read(positions).unwrap();
        assert!(!positions.is_empty());
        match &reference {
            None => reference = Some(now),
            Some(r) => {
                assert!(
                    r.0 == now.0,
                    "patch chunks differ on {ranks} ranks, {nodes:?}"
                );
                assert!(
                    r.1 == now.1,
                    "stitched mean differs on {ranks} ranks, {nodes:?}"
                );
                assert!(r.2 == now.2, "weights differ on {ranks} ranks, {nodes:?}");
            }
        }
    }
    let back: ndarray::ArrayD<f32> = ndarray_npy::read_npy(d.path().join("s4One.npy")).unwrap();
    assert!(back
        .iter()
        .zip(img.iter())
        .all(|(a, b)| (a - b).abs() <= 1e-6));
}

/// Stitch by bands (kernel.rs) of f64 patches (an f64 output shows any change of summation
/// order): the same bits on 1, 2 and 4 ranks; one rank reads every window once, and each
/// further rank re-reads only the windows of the band before its first unit that reach into
/// it (the report's bytes read, printed).
#[test]
fn quilt_stitch_of_f64_patches_is_identical_on_1_2_and_4_ranks_reading_windows_once() {
    let Some(d) = mpi_tempdir() else { return };
    let mut rng = Rng::new(43);
    let img = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 1, 40, 20, 18]), |_| {
        rng.below(1 << 40) as f64 / 1e9 - 500.0
    });
    let input = d.path().join("v.npy");
    ndarray_npy::write_npy(&input, &img).unwrap();
    let p = d.path().join("p.zarr");
    run_line(
        "quilt unstitch",
        &input,
        &p,
        "--window 8,6,6 --step 4,3,3 --blend gaussian",
    );
    // 9 x 6 x 5 windows of 8 x 6 x 6 f64.
    let patch_bytes: u64 = 9 * 6 * 5 * 8 * 6 * 6 * 8;
    // Chunks of 2 rows: bands of 8 rows, 5 of them, one per unit.
    let env = [("TESSERA_UNIT_BYTES", "1")];
    let stitch = |ranks: usize, out: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = io_line("quilt stitch", &p, out, "--chunks 1,1,2,20,18");
        args.extend(extra);
        tessera_mpi(ranks, &args, env)
    };
    let bytes_read = |report: &str| {
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
        assert_eq!(report["runs"][0]["units_total"].as_u64().unwrap(), 5);
        report["runs"][0]["bytes_read"].as_u64().unwrap()
    };
    let reference = d.path().join("s1.npy");
    for ranks in [1, 2, 4] {
        let out = d.path().join(format!("s{ranks}.npy"));
        ok(stitch(ranks, &s(&out), &[], &env));
        assert!(
            std::fs::read(&reference).unwrap() == std::fs::read(&out).unwrap(),
            "stitched mean differs on {ranks} ranks"
        );
        // Window rows (9, each 8 high) start at 0, 4, ..., 32; band g is rows 8g..8g + 8, and
        // band g - 1's window row starting at 8g - 4 reaches into it. Its sums over band g's
        // first rows go to the rank computing band g: no rank re-reads it.
        let read = bytes_read(&format!("{}.report.json", s(&out)));
        assert_eq!(read, patch_bytes, "{ranks} rank(s) read each window once");
    }
    // Collective writes (parallel HDF5, rounds) with held bands: the same values.
    let h5 = format!("{}:/mean", s(&d.path().join("s2.h5")));
    ok(stitch(2, &h5, &[], &env));
    assert_eq!(read_all(&h5), read_all(&s(&reference)), "HDF5 on 2 ranks");
    // Killed after the first rank's first unit, when the others' units are held (written
    // but not journaled): resumed on another rank count, where unit 0 is finished, so the
    // rank computing unit 1 re-reads the one window row of band 0 reaching into band 1.
    let out = d.path().join("k.npy");
    let killed = stitch(
        4,
        &s(&out),
        &[],
        &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "1")],
    );
    assert!(!killed.status.success(), "{}", text(&killed));
    assert!(!out.exists());
    ok(stitch(2, &s(&out), &["--resume"], &env));
    assert!(
        std::fs::read(&reference).unwrap() == std::fs::read(&out).unwrap(),
        "a resumed stitch differs"
    );
    let read = bytes_read(&format!("{}.report.json", s(&out)));
    assert!(read < patch_bytes, "the resumed run reads less: {read}");
}

#[test]
fn pyramids_are_identical_on_1_2_and_4_ranks() {
    let Some(d) = mpi_tempdir() else { return };
    let mut rng = Rng::new(43);
    let vol = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 19, 22, 17]), |_| {
        rng.below(60000) as u16
    });
    let input = d.path().join("v.npy");
    ndarray_npy::write_npy(&input, &vol).unwrap();
    // Small units: several stages, later ones reading levels back from the staged output.
    let env = [("TESSERA_UNIT_BYTES", "6000")];
    for method in ["mean", "gaussian", "laplacian"] {
        // Two nodes for the Laplacian only (the most stages): the added time stays small.
        let layouts = match method {
            "laplacian" => placements(&[1, 2, 4]),
            _ => [1, 2, 4].map(|r| (r, Nodes::One)).to_vec(),
        };
        for (ranks, nodes) in layouts {
            let dir = d.path().join(format!("{method}{ranks}{nodes:?}"));
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join("p.zarr");
            let flags = ["--axes", "czyx", "--chunks", "1,4,4,4", "--method", method];
            ok(tessera_mpi_on(
                nodes,
                ranks,
                &io_args("pyramid", &input, &out, &flags),
                &env,
            ));
            if ranks > 1 {
                let first = d.path().join(format!("{method}1One/p.zarr"));
                assert_same_tree(&first, &out);
            }
        }
    }
}

#[test]
fn crops_are_identical_on_1_2_and_4_ranks() {
    let Some(d) = mpi_tempdir() else { return };
    let mut first: Option<Vec<Vec<u8>>> = None;
    for (ranks, nodes) in placements(&[1, 2, 4]) {
        let dir = d.path().join(format!("r{ranks}{nodes:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("c.npy");
        ok(tessera_mpi_on(
            nodes,
            ranks,
            &crop_test_args("37", "64", &out, &["--chunk-size", "5"]),
            &[],
        ));
        let files: Vec<Vec<u8>> = ["c.npy", "c_radii.npy", "c_centers.npy", "c_retention.npy"]
            .iter()
            .map(|f| std::fs::read(dir.join(f)).unwrap())
            .collect();
        assert!(dir.join("c_visualization.png").is_file());
        match &first {
            None => first = Some(files),
            Some(f) => assert!(
                f == &files,
                "crop outputs differ on {ranks} ranks, {nodes:?}"
            ),
        }
    }
}

#[test]
fn the_scaling_bench_writes_its_table_and_plot() {
    let Some(d) = mpi_tempdir() else { return };
    let dir = d.path().join("scaling");
    let ranks = "--ranks 1,2 --size 2 --launcher-args=--oversubscribe";
    let out = ok(tessera(&scaling_args("hdr", &dir, ranks)));
    assert!(out.contains("| 2 |"), "{out}");
    let rows = scaling_csv(&dir.join("scaling-hdr-strong.csv"));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["ranks"], 2.0);
    for row in &rows {
        // hdr's per-bracket files are written outside exec; their phases are timed too.
        for column in [
            "compute",
            "write",
            "read",
            "memcopy_gb_per_s",
            "wall_seconds",
        ] {
            assert!(row[column] > 0.0, "{column}: {row:?}");
        }
        assert!(row["wall_seconds"] >= row["seconds"], "{row:?}");
    }
    assert_eq!(rows[0]["memcopy_efficiency"], 1.0);
    let png = image::open(dir.join("scaling-hdr-strong.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1000, 450));
    // Both runs wrote the whole archive (2 brackets), half each on 2 ranks.
    assert!(dir.join("run-2/out/20240601120030.npy").exists());
}

#[test]
fn the_scaling_bench_stitches_patches_made_once_per_size() {
    let Some(d) = mpi_tempdir() else { return };
    let dir = d.path().join("scaling");
    let weak = "--mode weak --ranks 1,2 --size 1 --memcopy-mib 8 --launcher-args=--oversubscribe";
    ok(tessera(&scaling_args("stitch", &dir, weak)));
    let rows = scaling_csv(&dir.join("scaling-stitch-weak.csv"));
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(
            row["compute"] > 0.0 && row["memcopy_gb_per_s"] > 0.0,
            "{row:?}"
        );
    }
    // Weak: one image on 1 rank, two on 2, each cut into patches once and stitched back.
    for (size, ranks) in [(1u64, 1), (2, 2)] {
        assert!(dir.join(format!("patches-{size}.zarr")).is_dir());
        let meta = tessera::io::open(
            &tessera::io::Address::parse(&s(&dir.join(format!("run-{ranks}/out.zarr")))).unwrap(),
        )
        .unwrap()
        .meta()
        .clone();
        assert_eq!(meta.shape, vec![size, 1, 1024, 1024]);
    }
}

#[test]
fn every_log_line_of_a_multi_rank_run_names_its_rank() {
    let Some(d) = mpi_tempdir() else { return };
    let vol = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[16, 16, 16]), |i| {
        (i[0] * 256 + i[1] * 16 + i[2]) as u16
    });
    let input = d.path().join("v.npy");
    ndarray_npy::write_npy(&input, &vol).unwrap();
    // Small units: both ranks build some, and log each at debug level (from rayon's threads).
    let env = [("TESSERA_UNIT_BYTES", "2000")];
    for format in ["text", "json"] {
        let out = d.path().join(format!("p-{format}.zarr"));
        let run = tessera_mpi(
            2,
            &[
                "-vv",
                "--log-format",
                format,
                "pyramid",
                "--input",
                &s(&input),
                "--output",
                &s(&out),
                "--chunks",
                "4,4,4",
            ],
            &env,
        );
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        ok(run);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        for rank in [0, 1] {
            let tag = if format == "text" {
                format!("[rank {rank}] ")
            } else {
                format!("{{\"rank\":{rank},")
            };
            assert!(
                lines.iter().any(|l| l.starts_with(&tag)),
                "no {format} line from rank {rank}:\n{stderr}"
            );
        }
        for l in &lines {
            if format == "text" {
                assert!(l.starts_with("[rank "), "untagged line {l:?}");
            } else {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert!(v["rank"].is_u64(), "no rank in {l}");
            }
        }
    }
}

/// A stack of 16 MiB of u16 slices (256 slices of 256x128), for the unit-count and failure
/// tests: big enough that the default unit sizing cuts many units.
fn sixteen_mib_stack(dir: &std::path::Path) -> std::path::PathBuf {
    let input = dir.join("in");
    write_slices(&input, "vol", 256, &[256, 128], DType::U16, 31);
    input
}

/// The units each rank gets, from a `--dry-run` plan's `rank R: N units` lines.
fn units_per_rank(plan: &str) -> Vec<usize> {
    plan.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("rank ")?;
            let (_, units) = rest.split_once(": ")?;
            units.split_once(" unit")?.0.parse().ok()
        })
        .collect()
}

#[test]
fn every_rank_gets_several_units_of_data_smaller_than_a_unit_per_rank() {
    let Some(d) = mpi_tempdir() else { return };
    let input = sixteen_mib_stack(d.path());
    let out = d.path().join("o.zarr");
    // 16 MiB on 4 ranks: the old 64 MiB units gave rank 0 everything. No TESSERA_UNIT_BYTES:
    // the default sizing is what is tested.
    let plan = ok(tessera_mpi(
        4,
        &io_line("convert", &input, &out, "--chunks 1,256,128 --dry-run"),
        &[],
    ));
    let per_rank = units_per_rank(&plan);
    assert_eq!(per_rank.len(), 4, "{plan}");
    assert!(per_rank.iter().all(|&n| n >= 4), "{per_rank:?}\n{plan}");
    // The units do not depend on the rank count (the journal's unit ids must mean the same
    // on resume): 1 rank plans the same total.
    let one = run_line("convert", &input, &out, "--chunks 1,256,128 --dry-run");
    assert_eq!(
        units_per_rank(&one),
        vec![per_rank.iter().sum::<usize>()],
        "{one}"
    );
}

#[test]
fn a_rank_that_fails_mid_run_stops_the_others_within_a_few_units() {
    let Some(d) = mpi_tempdir() else { return };
    let input = sixteen_mib_stack(d.path());
    let out = d.path().join("o.zarr");
    // 128 units of 2 slices, 64 per rank; unit 1 is rank 0's second.
    let env = [("TESSERA_UNIT_BYTES", "131072"), ("TESSERA_FAIL_UNIT", "1")];
    let args = io_line("convert", &input, &out, "--chunks 2,256,128");
    let failed = tessera_mpi(2, &args, &env);
    let all = fails_with(failed, &["unit 1 failed on purpose"]);
    assert_eq!(
        all.lines().filter(|l| l.contains("error")).count(),
        1,
        "one error line: {all}"
    );
    assert!(!out.exists(), "nothing published");
    // Rank 1 was not held in lockstep, yet heard of the failure within a few of its units
    // (the bound is loose: it only has to be far from its 64).
    let journal = d.path().join("o.zarr.journal");
    let done = |rank: usize| {
        std::fs::read_to_string(journal.join(format!("rank-{rank}.done")))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(done(0) <= 1, "rank 0 wrote only unit 0: {}", done(0));
    assert!(
        done(1) < 32,
        "rank 1 stopped early: {} of 64 units",
        done(1)
    );
    // And the run resumes to the bytes of a clean one.
    let clean = d.path().join("clean.zarr");
    let mut clean_args = args.to_vec();
    clean_args[4] = clean.to_str().unwrap();
    ok(tessera_env(&clean_args, &env[..1]));
    let resume = resumed(&args);
    ok(tessera_mpi(2, &resume, &env[..1]));
    assert_same_tree(&clean, &out);
}

/// Images for the pairs runs: every value distinct.
fn pair_images(dir: &std::path::Path) -> std::path::PathBuf {
    let input = dir.join("img.npy");
    let img = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[5, 2, 34, 30]), |i| {
        ((i[0] * 2 + i[1]) * 1020 + i[2] * 30 + i[3]) as u16
    });
    write_npy(&input, &tessera::io::Block::U16(img));
    input
}

#[test]
fn pairs_metadata_and_tokens_are_identical_on_1_2_and_4_ranks_and_after_resume() {
    let Some(d) = mpi_tempdir() else { return };
    let input = s(&pair_images(d.path()));
    let env = [("TESSERA_UNIT_BYTES", "3000")];
    let sampling = [
        "--window",
        "10,10",
        "--delta-range",
        "3,7",
        "--pairs-per-image",
        "13",
        "--seed",
        "8",
        "--rotations",
        "0,1,2,3",
    ];
    let run_on = |nodes: Nodes, ranks: usize, out: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = io_args("pairs", &input, out, &[]);
        args.extend_from_slice(&sampling);
        args.extend_from_slice(extra);
        if ranks == 0 {
            tessera_env(&args, env)
        } else {
            tessera_mpi_on(nodes, ranks, &args, env)
        }
    };
    let run = |ranks: usize, out: &str, extra: &[&str], env: &[(&str, &str)]| {
        run_on(Nodes::One, ranks, out, extra, env)
    };
    for (name, extra) in [
        (
            "pix",
            &["--positions", "--overlaps", "--pairs-per-chunk", "3"][..],
        ),
        ("meta", &["--metadata-only", "--pairs-per-chunk", "4"][..]),
    ] {
        let single = s(&d.path().join(format!("{name}-single.zarr")));
        ok(run(0, &single, extra, &env));
        for (ranks, nodes) in placements(&[1, 2, 4]) {
            let out = s(&d.path().join(format!("{name}-{ranks}-{nodes:?}.zarr")));
            let log = ok(run_on(nodes, ranks, &out, extra, &env));
            assert!(log.contains(&format!("on {ranks} rank")), "{log}");
            assert_same_tree(std::path::Path::new(&single), std::path::Path::new(&out));
        }
    }
    let pairs = s(&d.path().join("pix-single.zarr"));
    let tokens = |ranks: usize, out: &str| {
        let args = io_line("tokens", &pairs, out, "--token-size 4");
        if ranks == 0 {
            tessera_env(&args, &env)
        } else {
            tessera_mpi(ranks, &args, &env)
        }
    };
    let single = d.path().join("t-single.zarr");
    ok(tokens(0, &s(&single)));
    for ranks in [2, 4] {
        let out = d.path().join(format!("t-{ranks}.zarr"));
        ok(tokens(ranks, &s(&out)));
        assert_same_tree(&single, &out);
    }
    // Killed on 2 ranks, finished on 4.
    let out = s(&d.path().join("resumed.zarr"));
    let extra = ["--positions", "--overlaps", "--pairs-per-chunk", "3"];
    let killed = run(
        2,
        &out,
        &extra,
        &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "2")],
    );
    assert!(!killed.status.success(), "{}", text(&killed));
    let resume = resumed(&extra);
    ok(run(4, &out, &resume, &env));
    assert_same_tree(
        &d.path().join("pix-single.zarr"),
        std::path::Path::new(&out),
    );
}
