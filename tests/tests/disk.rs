//! A data disk that fills up and one that is full, on a size-limited tmpfs (mounting one needs
//! root, which the test machines and CI have; elsewhere these tests say so and pass).
//!
//! - Uploads fill the disk down to the node's reserve: the next one is refused with an error
//!   that names the free space, the reserve and the flag; every acknowledged version stays
//!   listed and downloads intact; metadata changes go on; once space is freed, uploads work.
//! - A disk that is full below the reserve (another process filled it) stops the node's
//!   consensus: the node stops serving and exits non-zero with the cause, instead of answering
//!   from frozen state; started again once space is freed, it resumes from its data dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use quiver_tests::{hash_file, quiver, write_random_file, NodeProcess};

const NODE: &str = env!("CARGO_BIN_EXE_e2e-quiver-node");
const CLI: &str = env!("CARGO_BIN_EXE_e2e-quiver");

/// A tmpfs of `size_mib` mounted on `<a fresh directory>/disk`; unmounted when dropped. The
/// node's data dir is the mount itself, so that its stderr log (written beside the data dir)
/// stays off the full disk.
struct Tmpfs {
    _root: tempfile::TempDir,
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (after saying why) when this process may not mount.
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a size-limited tmpfs needs root");
            return None;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("disk");
        std::fs::create_dir(&dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", dir.display());
        Some(Tmpfs { _root: root, dir })
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn serve(data_dir: &Path, reserve: &str) -> NodeProcess {
    let dir = data_dir.display().to_string();
    NodeProcess::spawn(
        NODE,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir,
            "--disk-reserve-bytes",
            reserve,
        ],
        data_dir,
    )
    .expect("start the node")
}

fn register(ep: &str, file: &Path) -> quiver_tests::CliRun {
    quiver_tests::register_version(CLI, ep, "reco", &[file])
}

/// Fills `path` with a file that leaves `leave_bytes` free on its filesystem.
fn fill(mount: &Path, path: &Path, leave_bytes: u64) {
    let stat = rustix::fs::statvfs(mount).expect("statvfs");
    let free = stat.f_bavail * stat.f_frsize;
    let size = free.saturating_sub(leave_bytes);
    let file = std::fs::File::create(path).expect("create the filler");
    file.set_len(0).expect("truncate");
    // Written, not sparse: tmpfs counts what is written.
    use std::io::Write;
    let mut w = std::io::BufWriter::new(file);
    let block = vec![0xa5u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        if w.write_all(&block[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = w.flush();
}

#[test]
fn uploads_stop_at_the_reserve_with_a_clear_error_lose_nothing_and_resume_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount(64) else { return };
    let outside = tempfile::tempdir().expect("tempdir");
    let data_dir = disk.path().to_path_buf();
    let node = serve(&data_dir, "24MiB");
    let ep = node.endpoint.clone();
    // Someone else's 16 MiB on the same disk, freed later.
    let filler = disk.path().join("other-data");
    write_random_file(&filler, 16 << 20, 1).expect("filler");
    quiver(CLI, &ep, &["model", "create", "reco"]).ok();

    let mut acked: Vec<(String, String)> = Vec::new();
    let mut refusal = None;
    for i in 0..8u64 {
        let file = outside.path().join(format!("weights-{i}.bin"));
        write_random_file(&file, 8 << 20, 100 + i).expect("artifact");
        let run = register(&ep, &file);
        if run.status == 0 {
            let reference = run.stdout.lines().last().unwrap_or_default().to_string();
            acked.push((reference, hash_file(&file).expect("hash")));
        } else {
            refusal = Some(run.stderr);
            break;
        }
    }
    let refusal = refusal.expect("the disk filled before 8 uploads of 8 MiB");
    assert!(
        refusal.contains("under its reserve of 24.0 MiB")
            && refusal.contains("--disk-reserve-bytes")
            && refusal.contains("uploads are refused until space is freed"),
        "{refusal}"
    );
    assert!(acked.len() >= 2, "{} versions registered", acked.len());

    // A second try is refused before any byte is taken.
    let file = outside.path().join("again.bin");
    write_random_file(&file, 1 << 20, 7).expect("artifact");
    let again = register(&ep, &file).err();
    assert!(again.contains("under its reserve"), "{again}");

    // Nothing acknowledged is lost; metadata changes go on.
    let listed = quiver(CLI, &ep, &["version", "list", "reco", "--output", "json"])
        .ok()
        .json();
    let versions = listed.as_array().expect("a JSON list").len();
    assert_eq!(versions, acked.len(), "{listed}");
    for (reference, hash) in &acked {
        let out = outside.path().join("download");
        let _ = std::fs::remove_dir_all(&out);
        quiver_tests::download_version(CLI, &ep, reference, &out).ok();
        let got = downloaded_file(&out);
        assert_eq!(&hash_file(&got).expect("hash"), hash, "{reference}");
    }
    quiver(CLI, &ep, &["alias", "set", "reco", "champion", "1"]).ok();

    // Space freed: uploads work again.
    std::fs::remove_file(&filler).expect("free space");
    let file = outside.path().join("after.bin");
    write_random_file(&file, 4 << 20, 8).expect("artifact");
    register(&ep, &file).ok();
    node.stop().expect("stop the node");
}

/// The one file a download wrote under `out`.
fn downloaded_file(out: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = walk(out);
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().expect("one file")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_node_whose_disk_is_full_stops_serving_and_exits_with_the_cause_then_resumes() {
    let Some(disk) = Tmpfs::mount(32) else { return };
    let data_dir = disk.path().to_path_buf();
    let mut node = serve(&data_dir, "0");
    let ep = node.endpoint.clone();
    quiver(CLI, &ep, &["model", "create", "before"]).ok();
    let filler = disk.path().join("other-data");
    fill(disk.path(), &filler, 0);

    let mut failed = None;
    for i in 0..2_000 {
        let run = quiver(CLI, &ep, &["model", "create", &format!("m{i}")]);
        if run.status != 0 {
            failed = Some(run.stderr);
            break;
        }
    }
    let failed = failed.expect("a metadata write fails once the disk is full");
    let status = node
        .wait_exit()
        .unwrap_or_else(|e| panic!("{e}; client saw: {failed}\nnode said: {}", node.stderr()));
    assert_ne!(status, 0, "the node exits non-zero");
    let stderr = node.stderr();
    assert!(
        stderr.contains("stopped serving: its consensus stopped"),
        "client saw: {failed}\nnode said: {stderr}"
    );
    drop(node);

    std::fs::remove_file(&filler).expect("free space");
    let node = serve(&data_dir, "0");
    let listed = quiver(CLI, &node.endpoint, &["model", "list", "--output", "json"])
        .ok()
        .json();
    let names: Vec<&str> = listed
        .as_array()
        .expect("a JSON list")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"before"), "{names:?}");
    quiver(CLI, &node.endpoint, &["model", "create", "after"]).ok();
    node.stop().expect("stop the node");
}
