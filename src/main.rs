//! The `percore` command: the whole command line of [`percore::cli`], serving the built-in
//! services (Arith, Echo, Hello).

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    percore::cli::builtin()
}
