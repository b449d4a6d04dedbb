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
    let cfg_dir = d.path().join("configs");
    std::fs::create_dir(&cfg_dir).unwrap();
    tessera::demo::write_stack(&d.path().join("tessera-demo/slices")).unwrap();
    tessera::demo::write_nczyx(&d.path().join("tessera-demo/demo-nczyx.npy")).unwrap();
    for path in configs() {
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains(".h5") && !cfg!(feature = "hdf5") {
            continue;
        }
        let copy = cfg_dir.join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let log = ok(tessera(&["run", &s(&copy)]));
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
    // The pyramid config: 64x256x256 in 64^3 chunks gives levels 0..2.
    let top = meta(&s(&d.path().join("tessera-demo/pyramid.zarr/2")));
    assert_eq!(top.shape, vec![16, 64, 64]);
    assert!(!d.path().join("tessera-demo/pyramid.zarr/3").exists());
}

#[test]
fn a_bad_config_is_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.toml");
    std::fs::write(
        &p,
        "[convert]\ninput = \"x\"\noutput = \"y.zarr\"\ncodecs = \"zstd\"\n",
    )
    .unwrap();
    fails_with(tessera(&["run", &s(&p)]), &["bad.toml", "codecs"]);
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
            let out = std::process::Command::new("bash")
                .arg("-n")
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
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
