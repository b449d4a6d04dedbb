//! Every example job in `configs/` parses, and runs on the demo stack it expects.

mod common;

use std::path::Path;

use common::*;
use tessera::job::JobFile;

fn configs() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn every_config_parses() {
    for path in configs() {
        JobFile::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn every_config_runs_on_the_demo_stack() {
    let d = tempfile::tempdir().unwrap();
    // The configs point at ../tessera-demo/slices relative to themselves.
    let cfg_dir = new_dir(d.path().join("configs"));
    tessera::demo::write_stack(&d.path().join("tessera-demo/slices")).unwrap();
    tessera::demo::write_nczyx(&d.path().join("tessera-demo/demo-nczyx.npy")).unwrap();
    // The manifests some configs name sit beside them.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "csv") {
            std::fs::copy(e.path(), cfg_dir.join(e.file_name())).unwrap();
        }
    }
    for path in configs() {
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains(".h5") && !cfg!(feature = "hdf5") {
            continue;
        }
        let copy = cfg_dir.join(path.file_name().unwrap());
        let log = ok(run_job_file(&copy, &text));
        assert!(log.contains("wrote"), "{}: {log}", path.display());
    }
    let a = read_all(&s(&d.path().join("tessera-demo/from-config.zarr")))
        .into_array::<u16>()
        .unwrap();
    assert_eq!(a.shape(), &[64, 256, 256]);
    assert_eq!(a[[32, 100, 100]], tessera::demo::demo_voxel(32, 100, 100));
    assert_eq!(
        read_all(&s(&d.path().join("tessera-demo/sharded.zarr"))),
        read_all(&s(&d.path().join("tessera-demo/from-config.zarr")))
    );
    // The crop config: 200 synthetic patterns cropped, with results and plot beside.
    assert_eq!(
        meta(&s(&d.path().join("tessera-demo/cropped.npy"))).shape[0],
        200
    );
    assert!(d.path().join("tessera-demo/cropped_results.json").is_file());
    assert!(d
        .path()
        .join("tessera-demo/cropped_visualization.png")
        .is_file());
    // The patches configs: 64 slices x 4 patches as .npy files; two splits as Zarr arrays.
    let demo = d.path().join("tessera-demo");
    let patch_meta = |p: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(demo.join(p).join("patch_meta.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(patch_meta("ct-patches")["num_patches"], 256);
    assert_eq!(patch_meta("ct-patches")["patch_dir"], "ct-patches");
    assert!(demo.join("ct-patches/demo_000063_128_128.npy").is_file());
    for (split, slices) in [("train", 6), ("val", 3)] {
        let m = patch_meta(&format!("ct-patch-splits/{split}"));
        assert_eq!(m["num_slices"], slices);
        let n = m["num_patches"].as_u64().unwrap();
        assert!(n > 0 && n + m["dropped"]["low_std_patches"].as_u64().unwrap() == slices * 9);
        let zarr = s(&demo.join(format!("ct-patch-splits/{split}/patches.zarr")));
        assert_eq!(
            tessera::io::open(&tessera::io::Address::parse(&zarr).unwrap())
                .unwrap()
                .meta()
                .shape,
            vec![n, 128, 128]
        );
    }
    // The pyramid config: 64x256x256 in 64^3 chunks gives levels 0..2.
    let top = meta(&s(&d.path().join("tessera-demo/pyramid.zarr/2")));
    assert_eq!(top.shape, vec![16, 64, 64]);
    assert!(!d.path().join("tessera-demo/pyramid.zarr/3").exists());
}

#[test]
fn a_bad_config_is_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.toml");
    let job = "[convert]\ninput = \"x\"\noutput = \"y.zarr\"\ncodecs = \"zstd\"\n";
    fails_with(run_job_file(&p, job), &["bad.toml", "codecs"]);
    fails_with(
        tessera(&["run", &s(&d.path().join("missing.toml"))]),
        &["missing.toml"],
    );
}

#[test]
fn the_demo_runs_and_says_how_to_look() {
    let d = tempfile::tempdir().unwrap();
    let log = ok(tessera(&["demo", "--dir", &s(&d.path().join("demo"))]));
    assert!(
        log.contains("tessera info") && log.contains("zarr.open_array"),
        "{log}"
    );
    let a = read_all(&s(&d.path().join("demo/demo.zarr")))
        .into_array::<u16>()
        .unwrap();
    assert_eq!(a[[40, 150, 160]], tessera::demo::demo_voxel(40, 150, 160));
    // Running it again replaces its own output.
    ok(tessera(&["demo", "--dir", &s(&d.path().join("demo"))]));
}

#[test]
fn slurm_scripts_are_valid_bash() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm");
    let slurm_test =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/run.sh"))
            .unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "sbatch") {
            succeeds(
                std::process::Command::new("bash").arg("-n").arg(&p),
                &p.display().to_string(),
            );
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.contains("#SBATCH --ntasks") && text.contains("--mpi=pmix"),
                "{}",
                p.display()
            );
            // Every script is submitted to a real Slurm by tests/slurm/run.sh.
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                slurm_test.contains(&format!("slurm/{name}")),
                "{name} is not run by tests/slurm/run.sh"
            );
        }
    }
}

#[test]
fn the_scaling_doc_shows_what_its_model_prints() {
    // docs/scaling.md's tables sit between `<!-- model: ARGS -->` and `<!-- end -->`; each must
    // be exactly what `python3 docs/scaling_model.py ARGS` prints (the model is pure arithmetic).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| "python3".into());
    if std::process::Command::new(&python)
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("TESSERA_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "no {python} but TESSERA_REQUIRE_PYTHON=1"
        );
        eprintln!("skipping: no {python}");
        return;
    }
    let doc = std::fs::read_to_string(root.join("docs/scaling.md")).unwrap();
    let mut blocks = 0;
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("<!-- model: ") {
        let after = &rest[start + "<!-- model: ".len()..];
        let (args, body) = after.split_once(" -->\n").unwrap();
        let (table, tail) = body.split_once("\n<!-- end -->").unwrap();
        // The arguments are shell words; quotes only group a file-system name with a space.
        let mut words = Vec::new();
        let mut quoted = args.split('\'');
        for (i, part) in quoted.by_ref().enumerate() {
            if i % 2 == 1 {
                words.push(part.to_string());
            } else {
                words.extend(part.split_whitespace().map(str::to_string));
            }
        }
        let out = succeeds(
            std::process::Command::new(&python)
                .arg(root.join("docs/scaling_model.py"))
                .args(&words),
            "docs/scaling_model.py",
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            printed.trim(),
            table.trim(),
            "docs/scaling.md is out of date for `scaling_model.py {args}`"
        );
        blocks += 1;
        rest = tail;
    }
    assert!(blocks >= 5, "found {blocks} model tables");
}
