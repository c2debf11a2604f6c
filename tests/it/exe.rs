//! `navis-auth` as a child process built from the code under test.
//!
//! The process is this test binary itself, run again with only [`child_process`] selected, which
//! calls `navis_auth::run::main`, the whole of the `navis-auth` binary's `main`. Not
//! `CARGO_BIN_EXE_navis-auth`: that is one path per target dir (`target/debug/navis-auth`), and a
//! build of another checkout sharing the target dir (`CARGO_TARGET_DIR`, git worktrees) replaces
//! it while these tests run. A replica from a checkout with another Redis key layout then refuses
//! every token this one creates as unknown. `/proc/self/exe` is the code these tests were built
//! from, even after a rebuild replaced the file.

use std::process::{Command, Output};

/// The environment variable that carries a child's `navis-auth` arguments, [`SEP`]-separated.
const CHILD_ARGS: &str = "NAVIS_IT_CHILD_ARGS";
const SEP: char = '\x1f';
/// What the test harness prints on stdout before it runs the one selected function.
const HARNESS_HEADER: &[u8] = b"\nrunning 1 test\n";

/// The body of a `navis-auth` child process, not a test: [`navis_auth`] runs this test binary
/// again with only this function selected and the arguments in [`CHILD_ARGS`]. Anywhere else it
/// returns at once.
#[test]
#[ignore = "the body of a navis-auth child process (exe::navis_auth runs it)"]
fn child_process() {
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    // No arguments is the empty string; otherwise every one, empty ones included.
    let args = (!args.is_empty())
        .then(|| args.split(SEP))
        .into_iter()
        .flatten();
    let argv = std::iter::once("navis-auth").chain(args);
    std::process::exit(i32::from(navis_auth::run::main(argv)));
}

/// A command that runs `navis-auth ARGS` from the code under test, with nothing from the
/// developer's `NAVIS_AUTH_*` environment. Its stdout starts with the harness's
/// [`HARNESS_HEADER`]: read it through [`output`], or discard it.
pub fn navis_auth<S: AsRef<str>>(args: &[S]) -> Command {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    assert!(args.iter().all(|a| !a.contains(SEP)), "{args:?}");
    // Linux: the running executable even if a rebuild has replaced its file since.
    let exe = if cfg!(target_os = "linux") {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().expect("current exe")
    };
    let mut cmd = Command::new(exe);
    for (k, _) in std::env::vars() {
        if k.starts_with("NAVIS_AUTH_") || k.starts_with("RUST_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["exe::child_process", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads=1", "--quiet"])
        .env(CHILD_ARGS, args.join(&SEP.to_string()));
    cmd
}

/// Runs `cmd` (from [`navis_auth`]) to the end; its stdout without the harness's header.
pub fn output(mut cmd: Command) -> Output {
    let mut out = cmd.output().expect("run navis-auth");
    if out.stdout.starts_with(HARNESS_HEADER) {
        out.stdout.drain(..HARNESS_HEADER.len());
    }
    out
}
