//! The `quiver` CLI, built inside this package so end-to-end tests can run
//! it as a real process (`CARGO_BIN_EXE_e2e-quiver`).
fn main() -> std::process::ExitCode {
    quiver_client::cli::main()
}
