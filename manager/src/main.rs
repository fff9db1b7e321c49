//! `shoal`: glue between the command line and the manager library. Errors become one clear
//! message (the whole context chain) and exit code 1.

fn main() {
    shoal_node::calm_vulkan_loader();
    if let Err(e) = shoal_manager::cli::run_cli(std::env::args_os()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
