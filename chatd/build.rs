//! Puts the git commit the binary is built from into `CHATD_COMMIT`, for
//! `chatd --version`: the environment variable of that name when set (a
//! build from a source tarball or a container without `.git`), else `git
//! rev-parse --short=9 HEAD` with `-dirty` when the tree has changes, else
//! "unknown".

#![allow(clippy::print_stdout)] // a build script talks to cargo on stdout

use std::path::Path;
use std::process::Command;

/// Has cargo run this script again when `path` changes, if it exists.
fn watch(path: &Path) -> bool {
    let exists = path.exists();
    if exists {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    exists
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=CHATD_COMMIT");
    let commit = match std::env::var("CHATD_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => match git(&["rev-parse", "--short=9", "HEAD"]).filter(|c| !c.is_empty()) {
            Some(c) => {
                let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty { format!("{c}-dirty") } else { c }
            }
            None => "unknown".to_string(),
        },
    };
    println!("cargo:rustc-env=CHATD_COMMIT={commit}");
    // A new commit moves HEAD or the branch it names; watch what exists.
    let git_dir = git(&["rev-parse", "--git-dir"]).map(std::path::PathBuf::from);
    let mut watched = false;
    if let Some(dir) = git_dir {
        let head = dir.join("HEAD");
        if watch(&head) {
            watched = true;
            if let Ok(h) = std::fs::read_to_string(&head)
                && let Some(r) = h.strip_prefix("ref: ")
            {
                watch(&dir.join(r.trim()));
            }
            watch(&dir.join("packed-refs"));
            watch(&dir.join("index"));
        }
    }
    if !watched {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
