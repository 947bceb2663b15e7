//! `libgo`: the command line client of the libgo agent.

fn main() -> std::process::ExitCode {
    libgo::cli::main()
}
