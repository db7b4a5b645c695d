//! `cargo xtask ci`: the steps of `.ci/run`, in the same order, with output streamed.
//!
//! Keep this list in step with `.ci/run` (which CI runs on a fresh clone and which also
//! installs the rustfmt and clippy components).

use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, workspace_root};

/// One CI step: a label and how to build its command.
struct Step {
    label: &'static str,
    command: fn() -> Command,
}

/// What `.ci/run` does for Chromium: the dashboard test drives it headless and fails
/// without it, so install it from Debian when it is missing, and fail when that fails.
const INSTALL_CHROMIUM: &str = "command -v chromium >/dev/null 2>&1 || { \
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    && command -v chromium >/dev/null 2>&1 \
    || { echo 'chromium is required by the dashboard test and could not be installed' >&2; exit 1; }";

fn steps() -> Vec<Step> {
    let mut steps = vec![
        Step {
            label: "Debian chromium (the dashboard test drives it headless)",
            command: || {
                let mut c = Command::new("bash");
                c.args(["-c", INSTALL_CHROMIUM])
                    .current_dir(workspace_root());
                c
            },
        },
        Step {
            label: "cargo fmt --all --check",
            command: || {
                let mut c = cargo();
                c.args(["fmt", "--all", "--check"]);
                c
            },
        },
        Step {
            label: "cargo clippy --workspace --all-targets -- -D warnings",
            command: || {
                let mut c = cargo();
                c.args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]);
                c
            },
        },
        Step {
            // Broken intra-doc links (a renamed variant, a moved item) fail here rather
            // than rotting silently in the rendered docs.
            label: "RUSTDOCFLAGS=\"-D warnings\" cargo doc --workspace --no-deps",
            command: || {
                let mut c = cargo();
                c.args(["doc", "--workspace", "--no-deps"])
                    .env("RUSTDOCFLAGS", "-D warnings");
                c
            },
        },
        Step {
            label: "cargo test --workspace",
            command: || {
                let mut c = cargo();
                c.args(["test", "--workspace"]);
                c
            },
        },
        Step {
            // The same offline checks of the image recipe, the manifests and the HAProxy
            // configuration that `.ci/run` makes (it installs what it needs or fails).
            label: "bash deploy/validate.sh",
            command: || {
                let mut c = Command::new("bash");
                c.arg("deploy/validate.sh").current_dir(workspace_root());
                c
            },
        },
    ];
    if workspace_root().join("conformance/run.sh").is_file() {
        steps.push(Step {
            label: "bash conformance/run.sh",
            command: || {
                let mut c = Command::new("bash");
                c.arg("conformance/run.sh").current_dir(workspace_root());
                c
            },
        });
    }
    steps
}

/// Runs every step, streaming its output; stops at the first failure and names it.
pub fn run() -> anyhow::Result<()> {
    let steps = steps();
    let total = steps.len();
    for (index, step) in steps.iter().enumerate() {
        println!("== [{}/{total}] {}", index + 1, step.label);
        let status = (step.command)()
            .status()
            .with_context(|| format!("could not start `{}`", step.label))?;
        if !status.success() {
            bail!(
                "CI step {}/{total} failed: `{}` ({status})",
                index + 1,
                step.label
            );
        }
    }
    println!("== all {total} CI steps passed");
    Ok(())
}
