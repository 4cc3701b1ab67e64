//! Outside tools a test needs (promtool, prometheus): found on the PATH, or the test is skipped. Under `CI=true`
//! a missing tool fails the test instead: `.ci/run` installs them, so a skip there would hide a broken step.
#![allow(dead_code)]

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Whether this run is CI's (`CI=true`, as CI systems set it).
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `tool` if `tool --version` runs. Otherwise: under CI, a panic naming the package to install; elsewhere a
/// SKIPPED line on stderr and `None`. The line is written to the process's stderr itself, not through
/// `eprintln!`, which the test harness captures and shows only for failing tests or with `--nocapture`.
pub(crate) fn require(tool: &str, package: &str, test: &str) -> Option<String> {
    let ran = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if ran.is_ok_and(|s| s.success()) {
        return Some(tool.to_string());
    }
    let why = format!("{tool} is not installed (Debian package {package}: apt-get install -y {package})");
    if in_ci() {
        panic!("{test}: {why}; CI=true, so the check is not skipped (.ci/run installs it)");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    None
}
