//! The `quiver-node` binary, built inside this package so end-to-end tests
//! can start it as a real process (`CARGO_BIN_EXE_e2e-quiver-node`).
fn main() -> std::process::ExitCode {
    quiver_node_cli::main()
}
