//! `quiver-node`: a Quiver registry node, and the commands around it.
fn main() -> std::process::ExitCode {
    quiver_node_cli::main()
}
