//! The `shoal` binary, built inside the tests package so integration tests can run it as a
//! separate process (`CARGO_BIN_EXE_shoal`): the same code path as `manager/src/main.rs`.

fn main() {
    shoal_node::calm_vulkan_loader();
    shoal_manager::cli::main();
}
