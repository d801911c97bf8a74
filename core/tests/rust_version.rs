//! The workspace's `rust-version` is honest: every member inherits it, and
//! no package of the locked dependency graph needs a newer Rust (read from
//! `cargo metadata`, which reports each package's own `rust-version`).

use std::process::Command;

fn version(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_the_workspace_says() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The packages this host builds: offline, cargo has downloaded only
    // those (a fresh machine lacks the Windows-only ones), and they are the
    // ones whose rust-version a build here meets.
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let members: Vec<&str> = m["workspace_members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let packages = m["packages"].as_array().expect("packages");
    let ours = packages
        .iter()
        .find(|p| p["name"] == "qconform-core")
        .and_then(|p| p["rust_version"].as_str())
        .expect("qconform-core has a rust-version");
    for p in packages {
        let name = p["name"].as_str().unwrap_or("?");
        let needs = p["rust_version"].as_str();
        if members.contains(&p["id"].as_str().unwrap_or("")) {
            assert_eq!(needs, Some(ours), "{name} does not inherit rust-version");
        } else if let Some(needs) = needs {
            assert!(
                version(needs) <= version(ours),
                "{name} {} needs Rust {needs}; the workspace says {ours}: raise it or hold the dependency back",
                p["version"]
            );
        }
    }
}
