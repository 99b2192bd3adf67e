//! `quiver`: the command-line client of a Quiver registry.
fn main() -> std::process::ExitCode {
    quiver_client::cli::main()
}
