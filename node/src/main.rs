//! `shoal-node`: the node agent. Joining a cluster over zenoh arrives with the distributed
//! runtime; today the binary reports the capabilities a manager will use to assign partitions,
//! including which device it would step particles on and why (`--device auto|cpu|gpu`).

fn main() {
    let mut device = shoal_node::Device::Auto;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = match a.as_str() {
            "--device" => args.next(),
            s if s.starts_with("--device=") => Some(s["--device=".len()..].to_string()),
            "-h" | "--help" => {
                println!("usage: shoal-node [--device auto|cpu|gpu]");
                return;
            }
            other => {
                eprintln!("error: unknown argument `{other}` (try --help)");
                std::process::exit(2);
            }
        };
        match value.as_deref().map(str::parse) {
            Some(Ok(d)) => device = d,
            Some(Err(e)) => {
                eprintln!("error: --device: {e}");
                std::process::exit(2);
            }
            None => {
                eprintln!("error: --device needs a value: auto, cpu or gpu");
                std::process::exit(2);
            }
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "shoal-node {} on {} ({} cores)",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        cores
    );
    match shoal_node::choose_device(device, None) {
        Ok(choice) => println!("device: {}", choice.reason),
        Err(e) => {
            eprintln!("error: --device {device:?}: {e}");
            std::process::exit(1);
        }
    }
    println!(
        "This build steps partitions in-process for `shoal run`; it does not join a cluster yet."
    );
}
