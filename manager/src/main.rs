//! `shoal`: glue between the command line and the manager library. Errors become one clear
//! message (the whole context chain) and exit code 1; a run stopped by a signal says where it
//! stopped and exits with 128 plus the signal.

fn main() {
    shoal_node::calm_vulkan_loader();
    shoal_manager::cli::main();
}
