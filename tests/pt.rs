//! `.pt` files end to end: commands read what torch wrote (tests/fixtures/pt, made by
//! make.py there with torch 2.15) and write files that a reader independent of tessera's
//! (Python's zipfile, which checks every record's CRC, and its pickle with torch's names
//! mapped to numpy) reads as the same values; 1, 2 and 4 ranks write the same bytes; bad
//! files are refused with one line.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pt")
        .join(name)
}

/// Reads `path[:key]` without torch or tessera and saves it as `.npy` at `out`.
const INDEPENDENT_READER: &str = r#"
import pickle, sys, zipfile
import numpy as np

path, key, out = sys.argv[1], sys.argv[2], sys.argv[3]
z = zipfile.ZipFile(path)
names = z.namelist()
folder = names[0].split("/")[0]
assert names[0] == folder + "/data.pkl", names
assert z.read(folder + "/byteorder") == b"little"
assert z.read(folder + "/version") == b"3\n"
typed = {"ByteStorage": np.uint8, "CharStorage": np.int8, "ShortStorage": np.int16,
         "IntStorage": np.int32, "LongStorage": np.int64, "FloatStorage": np.float32,
         "DoubleStorage": np.float64}

class Global:
    def __init__(self, name):
        self.name = name

def rebuild(storage, offset, size, stride, requires_grad, hooks, *rest):
    dtype = typed.get(storage[0].name) or np.dtype(rest[0].name)
    data = np.frombuffer(z.read(f"{folder}/data/{storage[1]}"), dtype=dtype)
    assert not requires_grad and len(hooks) == 0
    item = data.itemsize
    return np.lib.stride_tricks.as_strided(data[offset:], size, [s * item for s in stride]).copy()

class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in [("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3")]:
            return rebuild
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        assert module in ("torch", "torch.storage"), (module, name)
        return Global(name)
    def persistent_load(self, pid):
        tag, cls, key, location, numel = pid
        assert tag == "storage" and location == "cpu"
        return (cls, key)

value = Unpickler(z.open(folder + "/data.pkl")).load()
if key != "-":
    assert isinstance(value, dict) and list(value) == [key], value
    value = value[key]
np.save(out, value)
"#;

/// `path[:key]` read by [`INDEPENDENT_READER`], or `None` where Python with numpy is missing.
fn read_independently(path: &Path, key: Option<&str>) -> Option<tessera::io::Block> {
    let python = python_with("numpy")?;
    let out = path.with_extension("independent.npy");
    let run = std::process::Command::new(python)
        .args([
            "-c",
            INDEPENDENT_READER,
            &s(path),
            key.unwrap_or("-"),
            &s(&out),
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    Some(read_all(&s(&out)))
}

#[test]
fn crop_reads_and_writes_pt_as_the_guide_does() {
    let dir = tempfile::tempdir().unwrap();
    let from_pt = dir.path().join("cropped_patterns.pt");
    std::fs::create_dir(dir.path().join("npy")).unwrap();
    let from_npy = dir.path().join("npy/cropped_patterns.npy");
    let input = fixture("patterns.pt");
    ok(tessera(&[
        "crop",
        "--input",
        &s(&input),
        "--output",
        &s(&from_pt),
    ]));
    let npy_input = fixture("patterns.npy");
    ok(tessera(&[
        "crop",
        "--input",
        &s(&npy_input),
        "--output",
        &s(&from_npy),
    ]));
    // The input's layout kept: (N, 1, h, w); the values those of the .npy run.
    let got = read_all(&s(&from_pt));
    assert_eq!(got.shape().len(), 4);
    assert_eq!(&got.shape()[..2], &[12, 1]);
    assert_eq!(got, read_all(&s(&from_npy)));
    for side in ["_results.json", "_visualization.png", "_radii.npy"] {
        assert!(
            dir.path().join(format!("cropped_patterns{side}")).is_file(),
            "{side}"
        );
    }
    if let Some(independent) = read_independently(&from_pt, None) {
        assert_eq!(independent, got);
    }
}

#[test]
fn every_dtype_written_reads_back_independently() {
    let dir = tempfile::tempdir().unwrap();
    for (i, dtype) in tessera::io::DType::ALL.into_iter().enumerate() {
        let input = dir.path().join(format!("in{i}.npy"));
        let mut rng = Rng::new(i as u64);
        let image = tessera::with_dtype!(dtype, T => <T as tessera::io::Element>::into_block(
            ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 2, 9, 7]), |_| {
                num_traits::cast::<u64, T>(rng.below(100)).unwrap()
            })
        ));
        write_npy(&input, &image);
        for key in [None, Some("patches")] {
            let name = format!("p{i}{}.pt", key.map_or("", |_| "k"));
            let out = dir.path().join(&name);
            let address = match key {
                Some(k) => format!("{}:{k}", s(&out)),
                None => s(&out),
            };
            let npy = dir.path().join(format!("p{i}{}.npy", key.is_some()));
            for (output, positions) in [(address.clone(), "pos"), (s(&npy), "pos2")] {
                let positions = dir
                    .path()
                    .join(format!("{positions}{i}{}.npy", key.is_some()));
                ok(tessera(&[
                    "quilt",
                    "unstitch",
                    "--input",
                    &s(&input),
                    "--output",
                    &output,
                    "--window",
                    "4,4",
                    "--step",
                    "3,3",
                    "--positions",
                    &s(&positions),
                ]));
            }
            let want = read_all(&s(&npy));
            assert_eq!(read_all(&address), want, "{name}");
            if let Some(independent) = read_independently(&out, key) {
                assert_eq!(independent, want, "{name}");
            }
        }
    }
}

#[test]
#[cfg(feature = "mpi")]
fn ranks_write_the_bytes_one_process_writes() {
    let Some(dir) = mpi_tempdir() else { return };
    let input = small_image(dir.path(), 3);
    let run = |ranks: usize| {
        let out = dir.path().join(format!("r{ranks}.pt"));
        let positions = dir.path().join(format!("r{ranks}_pos.npy"));
        let args = [
            "quilt",
            "unstitch",
            "--input",
            &s(&input),
            "--output",
            &s(&out),
            "--window",
            "16,16",
            "--step",
            "8,8",
            "--patches-per-chunk",
            "5",
            "--positions",
            &s(&positions),
        ];
        if ranks == 1 {
            ok(tessera(&args));
        } else {
            ok(tessera_mpi(ranks, &args, &[]));
        }
        std::fs::read(out).unwrap()
    };
    let one = run(1);
    assert_eq!(run(2), one, "2 ranks");
    assert_eq!(run(4), one, "4 ranks");
}

#[test]
fn bad_pt_inputs_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.npy");
    let unstitch = |input: &str| {
        tessera(&[
            "quilt",
            "unstitch",
            "--input",
            input,
            "--output",
            &s(&out),
            "--window",
            "2,2",
            "--step",
            "2,2",
        ])
    };
    fails_with(
        unstitch(&s(&fixture("legacy.pt"))),
        &["legacy.pt", "legacy torch.save file"],
    );
    fails_with(
        unstitch(&s(&fixture("ints.pt"))),
        &["ints.pt", "name the tensor"],
    );
    let missing_key = format!("{}:nope", s(&fixture("ints.pt")));
    fails_with(unstitch(&missing_key), &["no key \"nope\""]);
    let truncated = dir.path().join("t.pt");
    let bytes = std::fs::read(fixture("float32.pt")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(unstitch(&s(&truncated)), &["t.pt", "truncated"]);
    assert!(!out.exists(), "nothing written");
    // An existing .pt output is kept without --overwrite; a non-.pt file is never replaced.
    let target = dir.path().join("keep.pt");
    std::fs::write(&target, b"not a tensor").unwrap();
    let input = small_image(dir.path(), 1);
    let args = |overwrite: bool| {
        let mut a = io_line("quilt unstitch", &input, &target, "--window 8,8 --step 8,8");
        if overwrite {
            a.push("--overwrite");
        }
        tessera(&a)
    };
    fails_with(args(false), &["keep.pt", "exists"]);
    fails_with(args(true), &["keep.pt", "not a .pt file"]);
    assert_eq!(std::fs::read(&target).unwrap(), b"not a tensor");
}

#[test]
fn a_killed_run_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_image(dir.path(), 5);
    let args = |out: &Path, extra: &[&str]| {
        let output = format!("{}:patches", s(out));
        let positions = s(&out.with_extension("positions.npy"));
        let rest = "--window 16,16 --step 8,8 --patches-per-chunk 4 --positions";
        let mut a: Vec<String> = io_line("quilt unstitch", &input, &output, rest)
            .into_iter()
            .map(String::from)
            .collect();
        a.push(positions);
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    };
    let run = |a: Vec<String>, env: &[(&str, &str)]| {
        // Small units, so that a run has several to be killed between.
        let env = [env, &[("TESSERA_UNIT_BYTES", "8192")]].concat();
        tessera_env(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env)
    };
    let whole = dir.path().join("whole.pt");
    ok(run(args(&whole, &[]), &[]));
    let want = std::fs::read(&whole).unwrap();
    // Killed after two units, then killed again after finishing the archive but before
    // publishing it: each --resume takes up where the last run stopped.
    let resumed = dir.path().join("resumed.pt");
    let killed = run(args(&resumed, &[]), &[("TESSERA_ABORT_AFTER_UNITS", "2")]);
    assert!(!killed.status.success() && !resumed.exists());
    let killed = run(
        args(&resumed, &["--resume"]),
        &[("TESSERA_CRASH_AT", "finalized")],
    );
    assert!(
        !killed.status.success() && !resumed.exists(),
        "{}",
        text(&killed)
    );
    ok(run(args(&resumed, &["--resume"]), &[]));
    assert_eq!(std::fs::read(&resumed).unwrap(), want);
}

#[test]
fn convert_writes_a_stack_as_a_tensor_file() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in");
    let slices = write_slices(&input, "s", 5, &[6, 7], tessera::io::DType::U16, 2);
    let out = d.path().join("stack.pt");
    ok(tessera(&io_args("convert", &input, &out, &[])));
    assert_eq!(read_all(&s(&out)), reference_stack(&slices, 0));
    // Several stacks: one .pt each with --format pt.
    write_slices(&input, "t", 3, &[6, 7], tessera::io::DType::U16, 3);
    let dir = d.path().join("many");
    ok(tessera(&io_args(
        "convert",
        &input,
        &dir,
        &["--format", "pt"],
    )));
    assert_eq!(read_all(&s(&dir.join("s.pt"))), reference_stack(&slices, 0));
    assert_eq!(read_all(&s(&dir.join("t.pt"))).shape(), &[3, 6, 7]);
}
