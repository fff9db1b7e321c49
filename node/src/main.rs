//! `shoal-node`: the node agent. Joining a cluster over zenoh arrives with the distributed
//! runtime; today the binary reports the capabilities a manager will use to assign partitions.

fn main() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "shoal-node {} on {} ({} cores)",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        cores
    );
    println!(
        "This build steps partitions in-process for `shoal run`; it does not join a cluster yet."
    );
}
