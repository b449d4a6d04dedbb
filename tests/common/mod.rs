//! Helpers shared by the integration tests: building image stacks with known pixels, running
//! the real `tessera` binary (alone or under `mpirun`), and reading outputs back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{ArrayD, Axis, IxDyn};
use tessera::io::{self, images, Address, Block, DType};

/// The binary under test: cargo's, or `TESSERA_BIN` (a test binary carried to another machine,
/// such as the GPU machine of scripts/gpu-check.sh, with the tessera binary beside it).
pub static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("TESSERA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tessera").to_string())
});

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random slice of `shape` ((Y, X) or (C, Y, X)) and `dtype`, with values spread over the
/// type's range (negative ones for signed types, fractions for floats).
pub fn random_slice(rng: &mut Rng, shape: &[usize], dtype: DType) -> Block {
    let n: usize = shape.iter().product();
    let raw: Vec<u64> = (0..n).map(|_| rng.next()).collect();
    let s = IxDyn(shape);
    match dtype {
        DType::U8 => {
            Block::U8(ArrayD::from_shape_vec(s, raw.iter().map(|&v| v as u8).collect()).unwrap())
        }
        DType::U16 => {
            Block::U16(ArrayD::from_shape_vec(s, raw.iter().map(|&v| v as u16).collect()).unwrap())
        }
        DType::U32 => {
            Block::U32(ArrayD::from_shape_vec(s, raw.iter().map(|&v| v as u32).collect()).unwrap())
        }
        DType::I16 => {
            Block::I16(ArrayD::from_shape_vec(s, raw.iter().map(|&v| v as i16).collect()).unwrap())
        }
        DType::I32 => {
            Block::I32(ArrayD::from_shape_vec(s, raw.iter().map(|&v| v as i32).collect()).unwrap())
        }
        DType::F32 => Block::F32(
            ArrayD::from_shape_vec(
                s,
                raw.iter()
                    .map(|&v| (v % 100_000) as f32 / 7.0 - 5000.0)
                    .collect(),
            )
            .unwrap(),
        ),
        other => panic!("no TIFF writer for {other}"),
    }
}

/// Writes `n` random slices as `<dir>/<name>_<index>.tif` (indices from `indices`) and returns
/// them in index order.
pub fn write_stack(
    dir: &Path,
    name: &str,
    indices: &[u64],
    shape: &[usize],
    dtype: DType,
    seed: u64,
) -> Vec<Block> {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(seed);
    indices
        .iter()
        .map(|i| {
            let slice = random_slice(&mut rng, shape, dtype);
            images::write_tiff(&dir.join(format!("{name}_{i:03}.tif")), &slice).unwrap();
            slice
        })
        .collect()
}

/// [`write_stack`] with the indices `0..count`.
pub fn write_slices(
    dir: &Path,
    name: &str,
    count: u64,
    shape: &[usize],
    dtype: DType,
    seed: u64,
) -> Vec<Block> {
    write_stack(
        dir,
        name,
        &(0..count).collect::<Vec<_>>(),
        shape,
        dtype,
        seed,
    )
}

/// `count` uint16 slices `s_<i>` of `shape` (from `seed`) in `<dir>/slices`, which it returns:
/// the stack most convert runs start from.
pub fn u16_slices(dir: &Path, count: u64, shape: &[usize], seed: u64) -> PathBuf {
    let slices = dir.join("slices");
    write_slices(&slices, "s", count, shape, DType::U16, seed);
    slices
}

/// The straightforward reference: stack slices along `axis` (0 for Z-first, 1 for CZYX).
pub fn reference_stack(slices: &[Block], axis: usize) -> Block {
    fn stack<T: Clone>(arrays: Vec<ArrayD<T>>, axis: usize) -> ArrayD<T> {
        let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
        ndarray::stack(Axis(axis), &views).unwrap()
    }
    macro_rules! go {
        ($($v:ident),*) => {
            match &slices[0] {
                $(Block::$v(_) => Block::$v(stack(
                    slices.iter().map(|b| match b { Block::$v(a) => a.clone(), _ => panic!("mixed dtypes") }).collect(),
                    axis,
                )),)*
            }
        };
    }
    go!(U8, U16, U32, U64, I8, I16, I32, I64, F32, F64)
}

/// Reads a whole array through tessera's own readers.
pub fn read_all(address: &str) -> Block {
    let reader = io::open(&Address::parse(address).unwrap()).unwrap();
    let shape = reader.meta().shape.clone();
    reader
        .read_box(&tessera::grid::Region::whole(&shape))
        .unwrap()
}

pub fn meta(address: &str) -> io::ArrayMeta {
    io::open(&Address::parse(address).unwrap())
        .unwrap()
        .meta()
        .clone()
}

/// Runs `tessera` with `args` (single process, MPI off) and returns its output.
pub fn tessera(args: &[&str]) -> Output {
    tessera_env(args, &[])
}

/// Runs `tessera` with `args` in units of about `unit_bytes` (`TESSERA_UNIT_BYTES`): many units
/// from small data.
pub fn tessera_units(args: &[&str], unit_bytes: &str) -> Output {
    tessera_env(args, &[("TESSERA_UNIT_BYTES", unit_bytes)])
}

pub fn tessera_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(&*BIN);
    cmd.args(args)
        .env("TESSERA_MPI", "0")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tessera")
}

/// The arguments `<command's words> --input <input> --output <output> <rest>`: the start most
/// command lines share (`command` as "quilt unstitch"); the paths as the UTF-8 they are here.
pub fn io_args<'a>(
    command: &'a str,
    input: &'a (impl AsRef<Path> + ?Sized),
    output: &'a (impl AsRef<Path> + ?Sized),
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args: Vec<&str> = command.split(' ').collect();
    args.extend(["--input", utf8(input), "--output", utf8(output)]);
    args.extend_from_slice(rest);
    args
}

/// Runs `<command's words> --input <input> --output <output> <rest>` (see [`io_args`]) and
/// returns its text; the test fails with that text if it does not succeed.
pub fn run_io(
    command: &str,
    input: &(impl AsRef<Path> + ?Sized),
    output: &(impl AsRef<Path> + ?Sized),
    rest: &[&str],
) -> String {
    ok(tessera(&io_args(command, input, output, rest)))
}

/// Flags written as on a command line: `line` split at whitespace.
pub fn flags(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// [`io_args`] with the flags written as on a command line: `rest` split at whitespace.
pub fn io_line<'a>(
    command: &'a str,
    input: &'a (impl AsRef<Path> + ?Sized),
    output: &'a (impl AsRef<Path> + ?Sized),
    rest: &'a str,
) -> Vec<&'a str> {
    let mut args = io_args(command, input, output, &[]);
    args.extend(rest.split_whitespace());
    args
}

/// [`run_io`] with the flags written as on a command line: `rest` split at whitespace.
pub fn run_line(
    command: &str,
    input: &(impl AsRef<Path> + ?Sized),
    output: &(impl AsRef<Path> + ?Sized),
    rest: &str,
) -> String {
    ok(tessera(&io_line(command, input, output, rest)))
}

/// The arguments `hdr calibrate --input <input> --response <response> <rest>`.
pub fn calibrate_args<'a>(
    input: &'a (impl AsRef<Path> + ?Sized),
    response: &'a (impl AsRef<Path> + ?Sized),
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["hdr", "calibrate", "--input", utf8(input)];
    args.extend(["--response", utf8(response)]);
    args.extend_from_slice(rest);
    args
}

/// Runs `hdr calibrate --input <input> --response <response> <rest>` and returns its text; the
/// test fails with that text if it does not succeed.
pub fn run_calibrate(
    input: &(impl AsRef<Path> + ?Sized),
    response: &(impl AsRef<Path> + ?Sized),
    rest: &[&str],
) -> String {
    ok(tessera(&calibrate_args(input, response, rest)))
}

/// The arguments `hdr synthetic --output <output> --brackets <brackets> <rest>`.
pub fn synthetic_args<'a>(
    output: &'a (impl AsRef<Path> + ?Sized),
    brackets: &'a str,
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["hdr", "synthetic", "--output", utf8(output)];
    args.extend(["--brackets", brackets]);
    args.extend_from_slice(rest);
    args
}

/// The arguments `patches --manifest <manifest> --data-root <root> --output <output> <rest>`.
pub fn manifest_args<'a>(
    manifest: &'a (impl AsRef<Path> + ?Sized),
    root: &'a (impl AsRef<Path> + ?Sized),
    output: &'a (impl AsRef<Path> + ?Sized),
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["patches", "--manifest", utf8(manifest)];
    args.extend(["--data-root", utf8(root), "--output", utf8(output)]);
    args.extend_from_slice(rest);
    args
}

/// The arguments `bench scaling --op <op> --dir <dir> <rest>`, `rest` as the words of a command
/// line (`"--ranks 1,2 --size 2"`).
pub fn scaling_args<'a>(
    op: &'a str,
    dir: &'a (impl AsRef<Path> + ?Sized),
    rest: &'a str,
) -> Vec<&'a str> {
    let mut args = vec!["bench", "scaling", "--op", op, "--dir", utf8(dir)];
    args.extend(rest.split_whitespace());
    args
}

/// `args` and `--resume`: the same command, resumed.
pub fn resumed<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut resume = args.to_vec();
    resume.push("--resume");
    resume
}

/// Writes `job` (TOML) to `path` and runs `tessera run <path>`.
pub fn run_job_file(path: &Path, job: &str) -> Output {
    std::fs::write(path, job).unwrap();
    tessera(&["run", utf8(path)])
}

/// The arguments `crop --test-mode --test-patterns <patterns> --test-size <size> --output
/// <output> <rest>`: crop on synthetic Airy patterns.
pub fn crop_test_args<'a>(
    patterns: &'a str,
    size: &'a str,
    output: &'a (impl AsRef<Path> + ?Sized),
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["crop", "--test-mode", "--test-patterns", patterns];
    args.extend(["--test-size", size, "--output", utf8(output)]);
    args.extend_from_slice(rest);
    args
}

/// Creates the directory `path` (its parent must exist) and returns it.
pub fn new_dir(path: PathBuf) -> PathBuf {
    std::fs::create_dir(&path).unwrap();
    path
}

/// A test path as the UTF-8 it is.
fn utf8(path: &(impl AsRef<Path> + ?Sized)) -> &str {
    path.as_ref().to_str().expect("test paths are UTF-8")
}

/// Limits the address space of `cmd`'s process to `bytes` (so that the memory a plan may take
/// is the same on every machine).
pub fn limit_address_space(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` (a checking script, a shell), asserts that it succeeded and returns its output;
/// a failure shows `what` with the status, stdout and stderr.
#[track_caller]
pub fn succeeds(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().expect("run the command");
    assert!(out.status.success(), "{what}:\n{}", text(&out));
    out
}

/// Asserts success and returns stdout + stderr.
#[track_caller]
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "tessera failed:\n{}", text(&out));
    text(&out)
}

/// Asserts a failure with one `error:` line containing every `needle`, and returns stderr.
#[track_caller]
pub fn fails_with(out: Output, needles: &[&str]) -> String {
    let all = text(&out);
    assert!(!out.status.success(), "tessera should have failed:\n{all}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{all}");
    for n in needles {
        assert!(errors[0].contains(n), "error line lacks {n:?}:\n{all}");
    }
    stderr
}

/// `mpirun`, if this machine has it. Missing MPI fails the test when `TESSERA_REQUIRE_MPI=1`
/// (CI sets it), else the test is skipped with a message.
pub fn mpirun() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("mpirun"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("TESSERA_REQUIRE_MPI").as_deref() != Ok("1"),
            "mpirun not found but TESSERA_REQUIRE_MPI=1"
        );
        eprintln!("skipping: mpirun not found (install Open MPI with scripts/setup.sh)");
    }
    found
}

/// A temporary directory for a test that needs `mpirun`, or `None` (the test skipped, see
/// [`mpirun`]) where this machine has none.
pub fn mpi_tempdir() -> Option<tempfile::TempDir> {
    mpirun()?;
    Some(tempfile::tempdir().unwrap())
}

/// Runs `tessera` under `mpirun -n ranks`.
pub fn tessera_mpi(ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    mpi_command(ranks, args, env).output().expect("run mpirun")
}

/// Runs `tessera` under `mpirun -n ranks` on `nodes`.
pub fn tessera_mpi_on(nodes: Nodes, ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    mpi_command_on(nodes, ranks, args, env)
        .output()
        .expect("run mpirun")
}

/// The `mpirun -n ranks tessera ...` command, to run or spawn.
pub fn mpi_command(ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Command {
    mpi_command_on(Nodes::One, ranks, args, env)
}

/// Where the ranks of an MPI test run: this machine as one node, or two nodes emulated on it
/// (see [`emulated_nodes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nodes {
    One,
    Two,
}

/// The emulated nodes' host names.
pub const NODE_NAMES: [&str; 2] = ["nodeA", "nodeB"];

/// Each rank count of `ranks` on one node, then each count above 1 on two emulated nodes
/// (half the ranks on each, rounded up) where this machine can emulate them.
pub fn placements(ranks: &[usize]) -> Vec<(usize, Nodes)> {
    let mut all: Vec<(usize, Nodes)> = ranks.iter().map(|&r| (r, Nodes::One)).collect();
    if emulated_nodes().is_some() {
        all.extend(ranks.iter().filter(|&&r| r > 1).map(|&r| (r, Nodes::Two)));
    }
    all
}

/// The rsh agent through which `mpirun` starts its daemon on `nodeA` and `nodeB`: it runs the
/// daemon in a new UTS namespace named after the host (../shared/notes/stack.md), so one
/// machine looks like two nodes to MPI and to tessera (host names, node-local ranks, the CPUs
/// each node's ranks share). `None`, with the reason printed, where that is not permitted
/// (no `unshare`, no CAP_SYS_ADMIN), unless `TESSERA_REQUIRE_MPI=1` makes it a failure.
pub fn emulated_nodes() -> Option<&'static Path> {
    static AGENT: std::sync::LazyLock<std::result::Result<PathBuf, String>> =
        std::sync::LazyLock::new(write_node_agent);
    match &*AGENT {
        Ok(agent) => Some(agent),
        Err(why) => {
            assert!(
                std::env::var("TESSERA_REQUIRE_MPI").as_deref() != Ok("1"),
                "two emulated nodes unavailable but TESSERA_REQUIRE_MPI=1: {why}"
            );
            eprintln!("skipping the two-node cases: {why}");
            None
        }
    }
}

/// Writes the node agent (the same bytes from every test process: written to a temporary and
/// renamed) and checks that it names a host.
fn write_node_agent() -> std::result::Result<PathBuf, String> {
    let agent = std::env::temp_dir().join("tessera-node-agent.sh");
    let script = "#!/bin/bash\n\
        # mpirun's rsh agent for two nodes on one machine (tests/common): ssh-style options\n\
        # skipped, then the host, then the command, run in a UTS namespace named after the host\n\
        # by a shell, as ssh would (mpirun sends `PATH=... ; export PATH ; orted ...`).\n\
        while [[ \"$1\" == -* ]]; do shift; done\n\
        h=$1; shift\n\
        exec unshare --uts bash -c \"hostname $h; $*\"\n";
    let tmp = agent.with_extension(format!("tmp-{}", std::process::id()));
    let written = std::fs::write(&tmp, script)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        })
        .and_then(|()| std::fs::rename(&tmp, &agent));
    written.map_err(|e| format!("cannot write {}: {e}", agent.display()))?;
    let run = || {
        Command::new(&agent)
            .args([NODE_NAMES[1], "cat", "/proc/sys/kernel/hostname"])
            .output()
    };
    // Another thread's child may hold the just-written file open for a moment (ETXTBSY).
    let probe = run()
        .or_else(|_| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            run()
        })
        .map_err(|e| format!("{}: {e}", agent.display()))?;
    let named = String::from_utf8_lossy(&probe.stdout).trim() == NODE_NAMES[1];
    if !probe.status.success() || !named {
        return Err(format!(
            "`unshare --uts` cannot name a host here: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(agent)
}

/// The `mpirun -n ranks tessera ...` command on `nodes`, to run or spawn.
pub fn mpi_command_on(nodes: Nodes, ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = mpi_launcher(nodes, ranks, "none");
    cmd.env("RAYON_NUM_THREADS", "2")
        .env_remove("TESSERA_MPI")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.arg(&*BIN).args(args);
    cmd
}

/// `mpirun -n ranks --oversubscribe --bind-to bind` on `nodes`, allowed to run as root, with
/// no program yet.
pub fn mpi_launcher(nodes: Nodes, ranks: usize, bind: &str) -> Command {
    let mpirun = mpirun().expect("mpirun present (callers check first)");
    let mut cmd = Command::new(mpirun);
    cmd.args([
        "-n",
        &ranks.to_string(),
        "--oversubscribe",
        "--bind-to",
        bind,
    ]);
    if nodes == Nodes::Two {
        let agent = emulated_nodes().expect("emulated nodes (callers check first)");
        let per_node = ranks.div_ceil(2);
        // Every byte between the ranks over TCP on the loopback interface, as between real
        // nodes but never off this machine.
        cmd.args(["--mca", "plm_rsh_agent"])
            .arg(agent)
            .args(["--mca", "btl", "self,tcp"])
            .args(["--mca", "btl_tcp_if_include", "lo"])
            .args(["--mca", "oob_tcp_if_include", "lo"])
            .arg("--host")
            .arg(format!(
                "{}:{per_node},{}:{per_node}",
                NODE_NAMES[0], NODE_NAMES[1]
            ));
    }
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    cmd
}

/// Every file under `dir` with its bytes, by relative path (to compare outputs exactly).
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push((
                    p.strip_prefix(base).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_same_files(&tree(a), &tree(b), a, b);
}

/// Two trees' files ([`tree`]'s lists) have the same names and bytes.
#[track_caller]
fn assert_same_files(ta: &[(String, Vec<u8>)], tb: &[(String, Vec<u8>)], a: &Path, b: &Path) {
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(ta),
        names(tb),
        "file lists differ between {} and {}",
        a.display(),
        b.display()
    );
    for ((n, x), (_, y)) in ta.iter().zip(tb) {
        assert!(
            x == y,
            "{n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Writes `block` as a `.npy` through tessera's own writer.
pub fn write_npy(path: &Path, block: &Block) {
    let address = Address::Npy { path: path.into() };
    write_one_chunk(&address, block).close().unwrap();
}

/// Creates `address` as one uncompressed chunk holding `block`, written but not closed.
pub fn write_one_chunk(address: &Address, block: &Block) -> Box<dyn io::ArrayWriter> {
    let shape = block.shape();
    let spec = io::CreateSpec {
        flat_chunk_keys: false,
        shape: shape.clone(),
        dtype: block.dtype(),
        chunks: shape.clone(),
        shards: None,
        codec: io::Codec::None,
        dimension_names: None,
        attributes: serde_json::Map::new(),
    };
    let w = io::create(address, &spec, &tessera::comm::Local, false).unwrap();
    w.write_box(Some((&tessera::grid::Region::whole(&shape), block)))
        .unwrap();
    w
}

/// Every file under `dir` with its bytes, `created` taken out of patch metas (the one field
/// of `tessera patches`' outputs that differs between runs).
pub fn tree_without_created(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .map(|(name, bytes)| {
            if name.ends_with("patch_meta.json") {
                let text = String::from_utf8(bytes).unwrap();
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.contains("\"created\""))
                    .collect();
                (name, kept.join("\n").into_bytes())
            } else {
                (name, bytes)
            }
        })
        .collect()
}

#[track_caller]
pub fn assert_same_outputs(a: &Path, b: &Path) {
    assert_same_files(&tree_without_created(a), &tree_without_created(b), a, b);
}

/// The Python the tests check outputs with: `TESSERA_PYTHON`, else the venv that
/// `scripts/setup.sh --python` makes in `target/pyenv`, else `python3`.
pub fn python() -> String {
    std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
        if venv.is_file() {
            s(&venv)
        } else {
            "python3".into()
        }
    })
}

/// [`python`] when it can import `modules` (comma-separated); otherwise `None` and a skip
/// message, or a failure where `TESSERA_REQUIRE_PYTHON=1`.
pub fn python_with(modules: &str) -> Option<String> {
    python_importing(python(), modules)
}

/// `python` when it can import `modules`, as [`python_with`] says.
pub fn python_importing(python: String, modules: &str) -> Option<String> {
    let ok = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("TESSERA_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "python3 with {modules} is required (TESSERA_REQUIRE_PYTHON=1)"
        );
        eprintln!(
            "skipping: python3 cannot import {modules} (scripts/setup.sh --python installs them)"
        );
        return None;
    }
    Some(python)
}

/// `dir/in.npy`: a (2, 1, 48, 48) float32 image of whole numbers below 1000 (`seed`'s), the
/// small (N, C, Y, X) input of the fault and message tests.
pub fn small_image(dir: &Path, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    let a = ArrayD::from_shape_fn(IxDyn(&[2, 1, 48, 48]), |_| rng.below(1000) as f32);
    let p = dir.join("in.npy");
    ndarray_npy::write_npy(&p, &a).unwrap();
    p
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// A `bench scaling` CSV as one map of column to value per row (every line as wide as the
/// header).
pub fn scaling_csv(path: &std::path::Path) -> Vec<std::collections::HashMap<String, f64>> {
    let csv = std::fs::read_to_string(path).unwrap();
    let rows = tessera::bench::scaling::read_table(&csv).unwrap_or_else(|| panic!("{csv}"));
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .map(|(h, f)| (h, f.parse().unwrap()))
                .collect()
        })
        .collect()
}

/// Runs the command that `args` makes for a folder at 1, 2 and 3 threads per rank
/// (`--threads`, with `env`), each time in a fresh folder `dir/run` that holds its outputs
/// (the same paths each time, for outputs that name themselves), then moved to
/// `dir/threads-T`; asserts that each of `outputs` (files or trees, named in that folder; patch
/// metas' `created` aside) has the same bytes at every count as at one thread.
#[track_caller]
pub fn assert_same_on_1_2_3_threads(
    dir: &Path,
    outputs: &[&str],
    env: &[(&str, &str)],
    args: impl Fn(&Path) -> Vec<String>,
) {
    let runs: Vec<PathBuf> = ["1", "2", "3"]
        .iter()
        .map(|t| {
            let here = new_dir(dir.join("run"));
            let mut line = args(&here);
            line.extend(["--threads".to_string(), t.to_string()]);
            ok(tessera_env(
                &line.iter().map(String::as_str).collect::<Vec<_>>(),
                env,
            ));
            let kept = dir.join(format!("threads-{t}"));
            std::fs::rename(&here, &kept).unwrap();
            kept
        })
        .collect();
    for name in outputs {
        let first = runs[0].join(name);
        assert!(first.exists(), "{} was not written", first.display());
        for other in &runs[1..] {
            let other = other.join(name);
            if first.is_dir() {
                assert_same_outputs(&first, &other);
            } else {
                assert!(
                    std::fs::read(&first).unwrap() == std::fs::read(&other).unwrap(),
                    "{name}: {} differs from one thread's",
                    other.display()
                );
            }
        }
    }
}
