//! `grove-fn-wat IN.wat OUT.wasm`: compiles a function written in the WebAssembly text format.
//!
//! build.sh uses it for the WAT example, so that building the examples needs nothing beyond cargo
//! (no wabt or wasm-tools install). It writes OUT only when the bytes change, which keeps the build
//! idempotent for tools that watch modification times.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: grove-fn-wat IN.wat OUT.wasm");
        return ExitCode::from(2);
    };
    // wat::parse_file reports the file, line and column of a syntax error.
    let bytes = match wat::parse_file(input) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("grove-fn-wat: {error}");
            return ExitCode::FAILURE;
        }
    };
    if std::fs::read(output).ok().as_deref() == Some(bytes.as_slice()) {
        return ExitCode::SUCCESS;
    }
    if let Err(error) = std::fs::write(output, &bytes) {
        eprintln!("grove-fn-wat: cannot write {}: {error}", output.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
