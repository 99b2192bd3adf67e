fn main() -> std::process::ExitCode {
    quiver_node::cli::main()
}
