//! The `shoal-node` binary, built inside the tests package so integration tests can start node
//! agents as separate processes (`CARGO_BIN_EXE_shoal-node`).

fn main() {
    shoal_node::calm_vulkan_loader();
    shoal_node::cli::main(std::env::args().skip(1));
}
