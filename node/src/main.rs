//! `shoal-node`: the node agent. `shoal-node --cluster NAME` joins the cluster over zenoh (peer
//! mode, multicast scouting on the LAN, or the endpoints of `--zenoh-config FILE`) and steps the
//! partitions a manager assigns it until Ctrl-C. Without `--cluster` it reports the capabilities
//! a manager sees and which device it would step particles on and why.

fn main() {
    shoal_node::calm_vulkan_loader();
    shoal_node::cli::main(std::env::args().skip(1));
}
