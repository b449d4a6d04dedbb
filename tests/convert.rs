//! `tessera convert` end to end on one process: hand-checked cases, random stacks against a
//! reference, every output format, and each kind of bad input.

mod common;

use common::*;
use ndarray::{ArrayD, IxDyn};
use tessera::io::{images, Block, DType};

#[test]
fn hand_checked_three_slices_to_each_format() {
    let d = tempfile::tempdir().unwrap();
    let input = new_dir(d.path().join("in"));
    // Slice k holds 100k + 10y + x, so every pixel says where it came from.
    for k in 0..3u16 {
        let slice =
            ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| 100 * k + 10 * i[0] as u16 + i[1] as u16);
        images::write_tiff(&input.join(format!("cells_{k}.tif")), &Block::U16(slice)).unwrap();
    }
    let mut outputs = vec![s(&d.path().join("o.zarr")), s(&d.path().join("o.npy"))];
    if cfg!(feature = "hdf5") {
        outputs.push(format!("{}:/g/data", s(&d.path().join("o.h5"))));
    }
    for out in &outputs {
        run_io(
            "convert",
            &input,
            out,
            &[
                "--chunks",
                "2,2,2",
                "--codec",
                if out.contains(".h5") { "gzip" } else { "zstd" },
            ],
        );
        let a = read_all(out).into_array::<u16>().unwrap();
        assert_eq!(a.shape(), &[3, 2, 3], "{out}");
        assert_eq!(a[[0, 0, 0]], 0);
        assert_eq!(a[[1, 1, 2]], 112);
        assert_eq!(a[[2, 0, 1]], 201);
        assert_eq!(a[[2, 1, 2]], 212);
    }
    let m = meta(&outputs[0]);
    assert_eq!(m.chunks, Some(vec![2, 2, 2]));
    assert_eq!(m.attributes["axis_order"], "ZYX");
    assert_eq!(m.attributes["index_range"], serde_json::json!([0, 2]));
    assert_eq!(
        m.attributes["source_files"],
        serde_json::json!(["cells_0.tif", "cells_1.tif", "cells_2.tif"])
    );
    assert_eq!(
        m.dimension_names,
        Some(vec!["z".into(), "y".into(), "x".into()])
    );
    // The report lands beside the output and names the work done.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("o.zarr.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["command"], "convert");
    assert_eq!(report["bytes_written"], 36);
    assert_eq!(report["ranks"], 1);
    assert!(report["runs"][0]["per_rank"][0]["phases"]["write"]
        .as_f64()
        .is_some());
}

/// (slice shape, dtype, axis order, chunks, shards, codec)
type Case<'a> = (
    &'a [usize],
    DType,
    &'a str,
    Option<&'a str>,
    &'a str,
    &'a str,
);

#[test]
fn random_stacks_match_the_reference_for_every_dtype_layout_and_codec() {
    let d = tempfile::tempdir().unwrap();
    let cases: &[Case] = &[
        // (slice shape, dtype, axis order, chunks, shards, codec)
        (&[17, 23], DType::U16, "ZCYX", None, "", "zstd"),
        (&[17, 23], DType::U8, "ZCYX", Some("3,5,7"), "", "none"),
        (
            &[9, 31],
            DType::F32,
            "ZCYX",
            Some("2,4,8"),
            "4,8,16",
            "blosc",
        ),
        (&[12, 10], DType::I16, "ZCYX", Some("5,12,10"), "", "gzip"),
        (&[8, 8], DType::I32, "ZCYX", Some("1,3,3"), "2,6,6", "zstd"),
        (&[8, 8], DType::U32, "ZCYX", None, "", "zstd"),
        (&[3, 11, 13], DType::U8, "ZCYX", Some("2,3,4,4"), "", "zstd"),
        (
            &[3, 11, 13],
            DType::U16,
            "CZYX",
            Some("1,3,4,4"),
            "1,6,8,8",
            "zstd",
        ),
        (&[4, 6, 5], DType::U8, "CZYX", None, "", "none"),
    ];
    for (case, &(shape, dtype, order, chunks, shards, codec)) in cases.iter().enumerate() {
        let input = d.path().join(format!("in{case}"));
        let n = 3 + case as u64 * 2;
        let indices: Vec<u64> = (0..n).map(|i| i * 2 + 5).collect();
        let slices = write_stack(&input, "vol", &indices, shape, dtype, case as u64);
        let axis = usize::from(order == "CZYX" && shape.len() == 3);
        let expected = reference_stack(&slices, axis);
        let out = s(&d.path().join(format!("out{case}.zarr")));
        let mut args = io_args(
            "convert",
            &input,
            &out,
            &["--axis-order", order, "--codec", codec],
        );
        if let Some(c) = chunks {
            args.extend(["--chunks", c]);
        }
        if !shards.is_empty() {
            args.extend(["--shards", shards]);
        }
        // Small units so that every case spans several of them.
        ok(tessera_units(&args, "600"));
        assert_eq!(
            read_all(&out),
            expected,
            "case {case}: {shape:?} {dtype} {order}"
        );
        let m = meta(&out);
        if !shards.is_empty() {
            assert!(m.shards.is_some(), "case {case} sharded");
        }
        assert_eq!(
            m.attributes["missing_indices"].as_array().unwrap().len() as u64,
            n - 1,
            "odd indices missing"
        );
    }
}

#[test]
fn png_and_dtype_conversion() {
    let d = tempfile::tempdir().unwrap();
    let input = new_dir(d.path().join("in"));
    for k in 0..4u16 {
        let img = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(5, 3, |x, y| {
            image::Luma([k * 1000 + (y * 5 + x) as u16])
        });
        img.save(input.join(format!("p_{k}.png"))).unwrap();
    }
    let out = s(&d.path().join("o.zarr"));
    run_line("convert", &input, &out, "--dtype f32");
    let a = read_all(&out).into_array::<f32>().unwrap();
    assert_eq!(a.shape(), &[4, 3, 5]);
    assert_eq!(a[[3, 2, 4]], 3014.0);
    // To uint8 the values do not fit: refused, naming the file and value, no output.
    let out8 = d.path().join("o8.zarr");
    fails_with(
        tessera(&io_line("convert", &input, &out8, "--dtype u8")),
        &["p_1.png", "1000", "uint8"],
    );
    assert!(!out8.exists());
}

#[test]
fn several_stacks_go_to_a_directory_and_gaps_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let a = write_stack(&input, "left", &[0, 1, 2, 5, 6, 9], &[4, 4], DType::U16, 1);
    let b = write_stack(&input, "right", &[1, 2], &[6, 3], DType::U8, 2);
    let out = d.path().join("stacks");
    let log = run_io("convert", &input, &out, &[]);
    assert!(log.contains("3-4, 7-8"), "gaps named:\n{log}");
    assert_eq!(read_all(&s(&out.join("left.zarr"))), reference_stack(&a, 0));
    assert_eq!(
        read_all(&s(&out.join("right.zarr"))),
        reference_stack(&b, 0)
    );
    // A single-array output for several stacks is refused.
    fails_with(
        tessera(&io_args("convert", &input, &d.path().join("one.zarr"), &[])),
        &["several stacks"],
    );
}

#[test]
fn json_logs_carry_the_rank() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    write_stack(&input, "s", &[0, 1, 3], &[4, 4], DType::U8, 30);
    let out = run_line(
        "convert",
        &input,
        &d.path().join("o.zarr"),
        "--log-format json",
    );
    let line = out
        .lines()
        .find(|l| l.contains("missing slice"))
        .expect("a gap warning");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["rank"], 0);
    // -q keeps warnings, drops info.
    let quiet = ok(tessera(&[
        "-q",
        "convert",
        "--input",
        &s(&input),
        "--output",
        &s(&d.path().join("q.zarr")),
    ]));
    assert!(
        quiet.contains("missing slice") && !quiet.contains("INFO"),
        "{quiet}"
    );
}

#[test]
fn dry_run_writes_nothing_and_prints_the_plan() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    write_slices(&input, "s", 10, &[8, 8], DType::U16, 3);
    let out = d.path().join("o.zarr");
    let log = ok(tessera_units(
        &io_line("convert", &input, &out, "--chunks 2,8,8 --dry-run"),
        "256",
    ));
    assert!(
        log.contains("5 units") && log.contains("rank 0: 5 units"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        1,
        "only the input is there"
    );
}

#[test]
fn existing_outputs_are_refused_unless_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let first = write_stack(&input, "s", &[0, 1], &[4, 4], DType::U16, 4);
    let out = s(&d.path().join("o.zarr"));
    run_io("convert", &input, &out, &[]);
    fails_with(
        tessera(&io_args("convert", &input, &out, &[])),
        &["o.zarr", "--overwrite"],
    );
    assert_eq!(
        read_all(&out),
        reference_stack(&first, 0),
        "old output untouched"
    );
    let second = write_stack(&input, "s", &[0, 1], &[4, 4], DType::U16, 5);
    run_line("convert", &input, &out, "--overwrite");
    assert_eq!(read_all(&out), reference_stack(&second, 0));
}

#[test]
fn an_aborted_run_resumes_to_identical_bytes() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    write_slices(&input, "s", 12, &[16, 16], DType::U16, 6);
    let env = [("TESSERA_UNIT_BYTES", "1024")]; // 2 slices per unit: 6 units
    let (clean, out) = (d.path().join("clean.zarr"), d.path().join("o.zarr"));
    ok(tessera_env(
        &io_line("convert", &input, &clean, "--chunks 2,8,8"),
        &env,
    ));
    let args = io_line("convert", &input, &out, "--chunks 2,8,8");
    let killed = tessera_env(&args, &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "3")]);
    assert!(!killed.status.success());
    assert!(
        !out.exists(),
        "an interrupted output must not look complete"
    );
    assert!(d.path().join("o.zarr.partial").exists());
    // Without --resume the leftover is pointed out, not silently reused or deleted.
    fails_with(tessera_env(&args, &env), &["o.zarr.partial", "--resume"]);
    let resume = resumed(&args);
    ok(tessera_env(&resume, &env));
    assert_same_tree(&clean, &out);
    assert!(!d.path().join("o.zarr.journal").exists());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("o.zarr.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["runs"][0]["units_resumed"], 3);
    // Resuming with other parameters is refused.
    let _ = tessera_env(&args, &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "2")]);
    let _ = std::fs::remove_dir_all(&out);
    let _ = tessera_env(
        &io_line("convert", &input, &out, "--chunks 2,8,8 --overwrite"),
        &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "2")],
    );
    fails_with(
        tessera_env(
            &io_line("convert", &input, &out, "--chunks 2,4,4 --resume"),
            &env,
        ),
        &["other parameters: --chunks (was"],
    );
}

#[test]
fn a_job_file_resumes_with_the_run_flag() {
    // `tessera run job.toml --resume` is how a Slurm job that hit its time limit is resubmitted
    // (slurm/run.sbatch, EXTRA=--resume) without editing the job file.
    let d = tempfile::tempdir().unwrap();
    write_slices(&d.path().join("in"), "vol", 8, &[16, 16], DType::U16, 8);
    let env = [("TESSERA_UNIT_BYTES", "1024")];
    let job = |name: &str| {
        let path = d.path().join(format!("{name}.toml"));
        let text =
            format!("[convert]\ninput = \"in\"\noutput = \"{name}.zarr\"\nchunks = [2, 8, 8]\n");
        std::fs::write(&path, text).unwrap();
        s(&path)
    };
    let (clean, cut) = (job("clean"), job("cut"));
    ok(tessera_env(&["run", &clean], &env));
    let killed = tessera_env(
        &["run", &cut],
        &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "2")],
    );
    assert!(!killed.status.success());
    fails_with(tessera_env(&["run", &cut], &env), &["--resume"]);
    // A dry run of the resumption writes nothing.
    ok(tessera_env(&["run", &cut, "--resume", "--dry-run"], &env));
    assert!(!d.path().join("cut.zarr").exists());
    ok(tessera_env(&["run", &cut, "--resume"], &env));
    assert_same_tree(&d.path().join("clean.zarr"), &d.path().join("cut.zarr"));
}

#[test]
fn bad_inputs_fail_clearly_and_leave_no_output() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let out = root.join("o.zarr");
    let o = s(&out);
    let run = |input: &std::path::Path, extra: &[&str]| {
        let mut args = io_args("convert", &input, &o, &[]);
        args.extend_from_slice(extra);
        tessera(&args)
    };
    // Empty directory, missing directory.
    let empty = new_dir(root.join("empty"));
    fails_with(run(&empty, &[]), &["--input", "holds no files"]);
    fails_with(
        run(&root.join("missing"), &[]),
        &["--input", "does not exist"],
    );
    // Files that match nothing; a pattern without two groups; a bad regex.
    let good = root.join("good");
    write_stack(&good, "s", &[0, 1, 2], &[8, 8], DType::U16, 7);
    fails_with(
        run(&good, &["--pattern", r"(t)_(\d+)\.tif"]),
        &["--pattern", "no file", "s_000.tif"],
    );
    fails_with(run(&good, &["--extension", ".png"]), &["no file", ".png"]);
    fails_with(
        run(&good, &["--pattern", r"s_\d+\.tif"]),
        &["--pattern", "0 capture group"],
    );
    fails_with(
        run(&good, &["--pattern", r"(s_(\d+"]),
        &["--pattern", "not a valid regular expression"],
    );
    // Chunks: wrong rank, a zero; shards not a multiple; unknown codec (clap).
    fails_with(
        run(&good, &["--chunks", "1,8"]),
        &["--chunks", "2 values", "3 dimensions"],
    );
    fails_with(
        run(&good, &["--chunks", "1,0,8"]),
        &["--chunks", "zero on axis 1"],
    );
    fails_with(
        run(&good, &["--chunks", "1,4,4", "--shards", "1,6,8"]),
        &["--shards", "not a multiple"],
    );
    let e = run(&good, &["--codec", "lzma"]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("lzma"));
    // Slices whose shape or dtype differ: named, before any output exists.
    let mixed = root.join("mixed");
    write_stack(&mixed, "m", &[0, 1], &[8, 8], DType::U16, 8);
    write_stack(&mixed, "m", &[2], &[8, 9], DType::U16, 9);
    fails_with(run(&mixed, &[]), &["m_002.tif", "8x8 uint16", "8x9 uint16"]);
    let mixed_t = root.join("mixed_t");
    write_stack(&mixed_t, "m", &[0], &[8, 8], DType::U16, 8);
    write_stack(&mixed_t, "m", &[1], &[8, 8], DType::U8, 9);
    fails_with(run(&mixed_t, &[]), &["m_001.tif", "uint8"]);
    // An unreadable (garbage) and a truncated image.
    let garbage = root.join("garbage");
    write_stack(&garbage, "g", &[0, 1], &[8, 8], DType::U16, 10);
    std::fs::write(garbage.join("g_002.tif"), b"this is not a tiff").unwrap();
    fails_with(run(&garbage, &[]), &["g_002.tif", "cannot read image"]);
    let truncated = root.join("truncated");
    write_stack(&truncated, "t", &[0, 1, 2], &[64, 64], DType::U16, 11);
    let bytes = std::fs::read(truncated.join("t_001.tif")).unwrap();
    std::fs::write(truncated.join("t_001.tif"), &bytes[..bytes.len() - 100]).unwrap();
    fails_with(run(&truncated, &[]), &["t_001.tif"]);
    assert!(
        !out.exists(),
        "no failed run may leave an output that looks complete"
    );
    // A truncated slice fails after the output was staged: the staging is named partial.
    assert!(!root.join("o.zarr.report.json").exists());
}

#[test]
fn info_describes_each_kind_and_refuses_non_arrays() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    write_stack(&input, "s", &[0, 1], &[4, 6], DType::I16, 12);
    let store = d.path().join("st.zarr");
    run_line(
        "convert",
        &input,
        &store.join("grp/arr"),
        "--chunks 1,2,3 --shards 2,4,6",
    );
    let log = ok(tessera(&["info", &s(&store.join("grp/arr"))]));
    assert!(
        log.contains("2 x 4 x 6")
            && log.contains("int16")
            && log.contains("shards: 2 x 4 x 6")
            && log.contains("chunks: 1 x 2 x 3"),
        "{log}"
    );
    assert!(log.contains("sharding_indexed"), "{log}");
    let json = ok(tessera(&["info", "--json", &s(&store.join("grp/arr"))]));
    assert!(json.contains("\"dtype\": \"i16\""), "{json}");
    // A group is not an array; its children are listed.
    fails_with(
        tessera(&["info", &s(&store.join("grp"))]),
        &["group", "arr"],
    );
    fails_with(
        tessera(&["info", &s(&store.join("nothing"))]),
        &["does not exist"],
    );
    fails_with(tessera(&["info", "what.dat"]), &["cannot tell the format"]);
    // Corrupt metadata: cut short, and complete but missing fields.
    let meta_file = store.join("grp/arr/zarr.json");
    for corrupt in [
        r#"{"zarr_format": 3, "node_type": "array", "shape": ["#,
        r#"{"zarr_format": 3, "node_type": "array", "shape": [2]}"#,
    ] {
        std::fs::write(&meta_file, corrupt).unwrap();
        fails_with(
            tessera(&["info", &s(&store.join("grp/arr"))]),
            &["zarr.json", "corrupt Zarr metadata"],
        );
    }
    // npy.
    let npy = d.path().join("a.npy");
    run_io("convert", &input, &npy, &[]);
    let log = ok(tessera(&["info", &s(&npy)]));
    assert!(
        log.contains("2 x 4 x 6") && log.contains("contiguous"),
        "{log}"
    );
    std::fs::write(&npy, b"\x93NUMPY garbage").unwrap();
    fails_with(tessera(&["info", &s(&npy)]), &["a.npy", "not a valid .npy"]);
}

#[cfg(feature = "hdf5")]
#[test]
fn hdf5_inputs_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let slices = write_stack(&input, "s", &[0, 1, 2], &[5, 7], DType::F32, 13);
    let h5 = d.path().join("v.h5");
    run_line(
        "convert",
        &input,
        &format!("{}:/a/b", s(&h5)),
        "--codec none --chunks 1,5,7",
    );
    assert_eq!(
        read_all(&format!("{}:/a/b", s(&h5))),
        reference_stack(&slices, 0)
    );
    let log = ok(tessera(&["info", &format!("{}:/a/b", s(&h5))]));
    assert!(
        log.contains("3 x 5 x 7") && log.contains("float32") && log.contains("source_stack"),
        "{log}"
    );
    fails_with(
        tessera(&["info", &format!("{}:/a", s(&h5))]),
        &["group", "b"],
    );
    fails_with(
        tessera(&["info", &format!("{}:/nope", s(&h5))]),
        &["no such dataset"],
    );
    fails_with(tessera(&["info", &s(&h5)]), &["dataset"]);
    // zstd/blosc and shards are Zarr-only.
    let other = format!("{}:/x", s(&d.path().join("w.h5")));
    fails_with(
        tessera(&io_line("convert", &input, &other, "--codec zstd")),
        &["--codec", "gzip or none"],
    );
    fails_with(
        tessera(&io_line(
            "convert",
            &input,
            &other,
            "--codec gzip --shards 2,5,7 --chunks 1,5,7",
        )),
        &["--shards"],
    );
    assert!(!d.path().join("w.h5").exists());
    std::fs::write(d.path().join("bad.h5"), b"not hdf5").unwrap();
    fails_with(
        tessera(&["info", &format!("{}:/x", s(&d.path().join("bad.h5")))]),
        &["bad.h5", "HDF5"],
    );
}

#[test]
fn a_second_job_on_the_same_output_is_refused_and_a_dead_ones_lock_is_taken_over() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let slices = write_stack(&input, "s", &[0, 1], &[4, 4], DType::U16, 4);
    let out = d.path().join("o.zarr");
    let lock = d.path().join("o.zarr.lock");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    // A live job (this test process) holds the output: refused, even with --overwrite, and
    // its lock and (absent) output are left alone.
    let live = format!(
        r#"{{"host":"{host}","pid":{},"started":0}}"#,
        std::process::id()
    );
    std::fs::write(&lock, &live).unwrap();
    let args = io_line("convert", &input, &out, "--overwrite");
    fails_with(
        tessera(&args),
        &["o.zarr.lock", "another tessera job", "pid"],
    );
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), live);
    assert!(!out.exists());
    // A job killed on this host left its lock: taken over, and released at the end.
    std::fs::write(
        &lock,
        format!(r#"{{"host":"{host}","pid":{},"started":0}}"#, i32::MAX - 7),
    )
    .unwrap();
    let log = ok(tessera(&args));
    assert!(log.contains("stale lock"), "{log}");
    assert!(!lock.exists());
    assert_eq!(read_all(&s(&out)), reference_stack(&slices, 0));
}

/// Chunk files under a Zarr store with their bytes (`zarr.json`s left out: attributes differ).
fn chunk_files(store: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    tree(store)
        .into_iter()
        .filter(|(name, _)| !name.ends_with("zarr.json"))
        .collect()
}

/// The stack written whole through zarrs (io::create + one write_box): the bytes it keeps.
fn written_by_zarrs(store: &std::path::Path, stack: &Block, chunks: &[u64]) {
    use tessera::io::{self, Address, Codec, CreateSpec};
    let shape: Vec<u64> = stack.shape();
    let spec = CreateSpec {
        flat_chunk_keys: false,
        shape: shape.clone(),
        dtype: stack.dtype(),
        chunks: chunks.to_vec(),
        shards: None,
        codec: Codec::None,
        dimension_names: None,
        attributes: serde_json::Map::new(),
    };
    let address = Address::parse(&s(store)).unwrap();
    let w = io::create(&address, &spec, &tessera::comm::Local, false).unwrap();
    w.write_box(Some((&tessera::grid::Region::whole(&shape), stack)))
        .unwrap();
    w.close().unwrap();
}

#[test]
fn outputs_are_the_same_on_any_thread_count_and_raw_chunks_are_zarrs_bytes() {
    // Slabs decode on the rank's threads and uncompressed chunks are written straight from the
    // slab, in parallel: same files for 1, 2 and 3 threads, and the bytes zarrs writes itself
    // (a tail chunk along z padded, an all-zero chunk not stored). Chunks 2,7,8 are short at
    // the edge of y, so those slabs go through zarrs.
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let mut slices = write_slices(&input, "cells", 7, &[20, 24], DType::U16, 5);
    slices[3] = Block::U16(ArrayD::zeros(IxDyn(&[20, 24])));
    images::write_tiff(&input.join("cells_003.tif"), &slices[3]).unwrap();
    let stack = reference_stack(&slices, 0);
    for chunks in ["1,10,8", "2,4,8", "2,7,8"] {
        let outs: Vec<std::path::PathBuf> = ["1", "2", "3"]
            .iter()
            .map(|t| {
                let out = d.path().join(format!("c{chunks}-t{t}.zarr"));
                run_io(
                    "convert",
                    &input,
                    &out,
                    &["--chunks", chunks, "--codec", "none", "--threads", t],
                );
                assert_eq!(read_all(&s(&out)), stack, "{chunks}, {t} threads");
                out
            })
            .collect();
        for other in &outs[1..] {
            assert_same_tree(&outs[0], other);
        }
        let zarrs = d.path().join(format!("c{chunks}-zarrs.zarr"));
        let chunk_shape: Vec<u64> = chunks.split(',').map(|c| c.parse().unwrap()).collect();
        written_by_zarrs(&zarrs, &stack, &chunk_shape);
        assert_eq!(chunk_files(&outs[0]), chunk_files(&zarrs), "{chunks}");
    }
}
