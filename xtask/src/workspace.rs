//! Which workspace xtask works on: the one it is run in, found at run time.
//!
//! A path compiled in (`env!("CARGO_MANIFEST_DIR")`) would be wrong for a
//! workspace copied with its `target/` (`cp -a`): cargo finds the copied
//! xtask binary fresh, does not rebuild it, and the binary would build into
//! and boot from the original. So the root is looked up when xtask starts:
//!
//! 1. `CARGO_MANIFEST_DIR` read from the environment *at run time*: `cargo
//!    run` (and so `cargo xtask`) sets it to the manifest folder of the
//!    package it runs, in the workspace it was invoked in; its parent is the
//!    workspace root;
//! 2. otherwise (the binary started by hand) the current folder and its
//!    parents, up to the first `Cargo.toml` with a `[workspace]` table.
//!
//! Either way the folder must hold a `Cargo.toml` with `[workspace]`.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Whether `dir` holds a workspace manifest.
fn is_workspace_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .map(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        .unwrap_or(false)
}

/// The first folder from `start` upwards that holds a workspace manifest.
pub fn find_upwards(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| is_workspace_root(d))
        .map(Path::to_path_buf)
}

/// The workspace root, from the run-time `CARGO_MANIFEST_DIR` (if set) or
/// the current folder.
pub fn root_from(manifest_dir: Option<&Path>, cwd: &Path) -> Result<PathBuf> {
    if let Some(m) = manifest_dir {
        if let Some(root) = find_upwards(m) {
            return Ok(root);
        }
    }
    match find_upwards(cwd) {
        Some(root) => Ok(root),
        None => bail!(
            "no Cargo.toml with [workspace] in {} or above it{}: run xtask inside the \
             workspace (cargo xtask ...)",
            cwd.display(),
            manifest_dir
                .map(|m| format!(" (nor above CARGO_MANIFEST_DIR={})", m.display()))
                .unwrap_or_default()
        ),
    }
}

/// The workspace this xtask run works on.
pub fn root() -> Result<PathBuf> {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .filter(|m| !m.is_empty())
        .map(PathBuf::from);
    let cwd = std::env::current_dir()?;
    root_from(manifest.as_deref(), &cwd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system's temp dir.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-ws-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn workspace(at: &Path) {
        std::fs::create_dir_all(at.join("xtask/src")).unwrap();
        std::fs::write(
            at.join("Cargo.toml"),
            "[workspace]\nmembers = [\"xtask\"]\n",
        )
        .unwrap();
        std::fs::write(at.join("xtask/Cargo.toml"), "[package]\nname = \"xtask\"\n").unwrap();
    }

    #[test]
    fn a_copied_workspace_finds_itself() {
        let base = scratch("copy");
        let (orig, copy) = (base.join("orig"), base.join("copy"));
        workspace(&orig);
        workspace(&copy);
        // As cargo sets it when it runs the copy's xtask: the copy, even if
        // the binary was compiled in the original.
        let r = root_from(Some(&copy.join("xtask")), &copy.join("xtask/src")).unwrap();
        assert_eq!(r, copy);
        // Started by hand from inside the copy: the current folder decides.
        assert_eq!(root_from(None, &copy.join("xtask/src")).unwrap(), copy);
        // A package manifest is not a workspace root.
        assert_eq!(find_upwards(&copy.join("xtask")), Some(copy.clone()));
        // Outside any workspace: an error that says where it looked.
        let e = root_from(None, &base).unwrap_err().to_string();
        assert!(e.contains("[workspace]"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn this_workspace_is_found_at_run_time() {
        // `cargo test` sets CARGO_MANIFEST_DIR at run time too.
        let r = root().unwrap();
        assert!(r.join("xtask").join("Cargo.toml").exists());
        assert!(r.join("hypervisor").join("Cargo.toml").exists());
    }
}
