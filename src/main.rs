//! The `wafer` binary: hands the command line to `wafer::cli` and turns an error into one line
//! on stderr and a non-zero exit.
#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = wafer::cli::run(&args) {
        eprintln!("wafer: {e}");
        std::process::exit(1);
    }
}
