//! The `navis-auth` binary: everything it does is in [`navis_auth::run`].

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(navis_auth::run::main(std::env::args_os()))
}
