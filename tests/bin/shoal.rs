//! The `shoal` binary, built inside the tests package so integration tests can run it as a
//! separate process (`CARGO_BIN_EXE_shoal`): the same code path as `manager/src/main.rs`.

fn main() {
    shoal_node::calm_vulkan_loader();
    if let Err(e) = shoal_manager::cli::run_cli(std::env::args_os()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
