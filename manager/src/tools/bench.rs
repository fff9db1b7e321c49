//! `shoal bench`: tracking speed and memory, recorded in BENCHMARKS.md. The dense case times the
//! kernel alone on an in-memory synthetic mesh (no I/O); the sparse case times a whole run,
//! NetCDF reading and trajectory writing included, on a synthetic file written first.

use crate::input::config::RunConfig;
use crate::run::{run, RunOptions};
use crate::tools::synth::{self, Flow, SynthOptions};
use anyhow::{Context, Result};
use shoal_common::kernel::{Integrator, StepContext, StepParams, VerticalMixing};
use shoal_common::rng::{draw, unit_open, Stream};
use shoal_common::simd::{self, Kernel};
use shoal_common::{status, FieldLevel, Mesh, MeshInput, Particles, RawSlice, Window};
use shoal_node::Partition;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// dense, sparse, behaviour (larval behaviour against passive particles), fabric (with
    /// transport), scale (a mesh too big for a Pi, direct against four node processes),
    /// transport (TCP against QUIC with mutual TLS),
    /// checkpoint, gpu or all (all: dense and sparse).
    #[arg(long, default_value = "all")]
    pub case: String,
    /// Particles in the dense case.
    #[arg(long, default_value_t = 1_000_000)]
    pub particles: usize,
    /// Approximate elements in the dense case.
    #[arg(long, default_value_t = 100_000)]
    pub elements: usize,
    #[arg(long, default_value_t = 20)]
    pub layers: usize,
    /// Steps timed per configuration in the dense case.
    #[arg(long, default_value_t = 20)]
    pub steps: u32,
    /// Thread counts to try, comma separated (default 1 and every core).
    #[arg(long)]
    pub threads: Option<String>,
    /// Where the sparse case writes its input and output.
    #[arg(long, default_value = "target/bench")]
    pub dir: PathBuf,
    /// Kernel variants to time side by side in the dense and sparse cases, comma separated
    /// (scalar, sse2, avx2, neon, simd; default: every one this CPU runs).
    #[arg(long)]
    pub kernels: Option<String>,
}

/// The kernel variants to time, each set for this process in turn by the caller.
fn kernel_list(args: &BenchArgs) -> Result<Vec<Kernel>> {
    match &args.kernels {
        None => Ok(Kernel::all_available()),
        Some(s) => s
            .split(',')
            .map(|k| Kernel::parse(k.trim()).map_err(|e| anyhow::anyhow!("--kernels: {e}")))
            .collect(),
    }
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A synthetic mesh and two field levels, built in memory.
pub fn dense_setup(
    elements: usize,
    layers: usize,
) -> Result<(SynthOptions, Mesh, Vec<FieldLevel>)> {
    let side = ((elements as f64 / 2.0).sqrt()).round().max(2.0) as usize;
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: side,
        ny: side,
        dx: 100.0,
        layers,
        period: 6.0 * 3600.0,
        ..Default::default()
    };
    let g = o.grid();
    let nn = g.x.len();
    let per_node = |col: Vec<f32>| -> Vec<f32> { (0..nn).flat_map(|_| col.clone()).collect() };
    let input = MeshInput {
        x: g.x.clone(),
        y: g.y.clone(),
        h: vec![o.depth as f32; nn],
        nv: g
            .nv
            .iter()
            .map(|t| [t[0] as i64, t[1] as i64, t[2] as i64])
            .collect(),
        siglay: per_node(o.siglay()),
        siglev: per_node(o.siglev()),
        n_layers: layers,
        ..Default::default()
    };
    let (mesh, _) = Mesh::build(input).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ne = mesh.n_elements();
    let siglay = o.siglay();
    let levels = [0.0, 3600.0]
        .iter()
        .map(|&t| {
            let mut raw = RawSlice {
                time: t,
                u: vec![0.0; ne * layers],
                v: vec![0.0; ne * layers],
                ww: Some(vec![0.0; ne * layers]),
                zeta: vec![0.0; nn],
                temp: None,
                kh: None,
                salinity: None,
                wet: None,
            };
            for (k, &sigma) in siglay.iter().enumerate().take(layers) {
                for e in 0..ne {
                    let (u, v) = o.velocity(g.xc[e], g.yc[e], sigma as f64, t);
                    // A little shear so the sigma interpolation does real work.
                    let f = 1.0 + 0.2 * sigma as f64;
                    raw.u[k * ne + e] = (u * f) as f32;
                    raw.v[k * ne + e] = (v * f) as f32;
                }
            }
            FieldLevel::from_slice(&mesh, &raw).map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((o, mesh, levels))
}

/// `n` particles uniformly over the inner part of the mesh (away from the walls), in random
/// order so that the first sort matters.
pub fn dense_particles(o: &SynthOptions, mesh: &Mesh, n: usize) -> Particles {
    let (cx, cy) = o.centre();
    let half = 0.4 * o.nx as f64 * o.dx;
    let mut p = Particles::with_capacity(n);
    let mut hint = None;
    for i in 0..n {
        let b = draw(1, i as u32, 0, Stream::Release);
        let x = cx + half * (2.0 * unit_open(b[0]) - 1.0);
        let y = cy + half * (2.0 * unit_open(b[1]) - 1.0);
        let e = mesh.locate(x, y, hint).expect("inside");
        hint = Some(e);
        p.push(
            i as u32,
            x,
            y,
            -o.depth * unit_open(b[2]),
            e,
            status::ACTIVE,
            0.0,
        );
    }
    p
}

fn thread_list(args: &BenchArgs) -> Vec<usize> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    match &args.threads {
        Some(s) => s.split(',').filter_map(|t| t.trim().parse().ok()).collect(),
        None if cores > 1 => vec![1, cores],
        None => vec![1],
    }
}

fn dense(args: &BenchArgs) -> Result<()> {
    let rss0 = status_kib("VmRSS:");
    let (o, mesh, levels) = dense_setup(args.elements, args.layers)?;
    let rss_mesh = status_kib("VmRSS:");
    println!(
        "dense: {} elements, {} nodes, {} layers; mesh + 2 field levels {:.0} MiB",
        mesh.n_elements(),
        mesh.n_nodes(),
        args.layers,
        (rss_mesh.saturating_sub(rss0)) as f64 / 1024.0
    );
    let window = Window { levels: &levels };
    let params = StepParams {
        dt: 60.0,
        integrator: Integrator::Rk4,
        horizontal_kh: 0.0,
        vertical_mixing: VerticalMixing::None,
        sinking_speed: 0.0,
        seed: 1,
        happiness: None,
        behaviour: None,
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("| threads | kernel | sorted | particle-steps/s | per thread | ns per particle-step and thread |");
    println!("|---|---|---|---|---|---|");
    let mut bytes_per_particle = 0.0;
    let kernels = kernel_list(args)?;
    for &threads in &thread_list(args) {
        for (kernel, sorted) in kernels
            .iter()
            .map(|&k| (k, true))
            .chain(kernels.first().map(|&k| (k, false)))
        {
            simd::set(kernel).map_err(|e| anyhow::anyhow!(e))?;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let mut part = Partition::new(dense_particles(&o, &mesh, args.particles));
            part.sort_every = if sorted { 8 } else { 0 };
            // One untimed step sorts and warms caches.
            pool.install(|| part.advance(&StepContext::new(&mesh, window, &params, 0.0, 0)));
            let t = Instant::now();
            for s in 1..=args.steps {
                pool.install(|| {
                    part.advance(&StepContext::new(
                        &mesh,
                        window,
                        &params,
                        s as f64 * 60.0,
                        s,
                    ))
                });
            }
            let secs = t.elapsed().as_secs_f64();
            let rate = args.particles as f64 * args.steps as f64 / secs;
            if sorted {
                bytes_per_particle = part.heap_bytes() as f64 / args.particles as f64;
            }
            println!(
                "| {threads} | {} | {} | {:.2} M | {:.2} M | {:.0} |",
                kernel.name(),
                if sorted { "yes" } else { "no" },
                rate / 1e6,
                rate / 1e6 / threads as f64,
                1e9 * threads as f64 / rate
            );
        }
    }
    println!("dense: {:.0} bytes per particle (state and sort buffers, by capacity); peak RSS {:.0} MiB; {cores} cores", bytes_per_particle, status_kib("VmHWM:") as f64 / 1024.0);
    Ok(())
}

/// The sparse case's input: 80 000 elements, 20 layers, 12 h hourly (written once).
fn sparse_input(args: &BenchArgs) -> Result<SynthOptions> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let input = args.dir.join("sparse_fvcom.nc");
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 200,
        ny: 200,
        dx: 100.0,
        layers: args.layers,
        duration: 12.0 * 3600.0,
        period: 6.0 * 3600.0,
        temp: false,
        ..Default::default()
    };
    if !input.exists() {
        let t = Instant::now();
        synth::write(&input, &o)?;
        println!(
            "sparse: wrote {} in {:.1} s",
            input.display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(o)
}

/// A whole run on the direct path with `threads` workers: its report, and its whole-run and
/// kernel particle-steps per second.
fn direct_run(cfg: &RunConfig, threads: usize) -> Result<(crate::run::RunReport, f64, f64)> {
    let rep = run(
        cfg,
        &RunOptions {
            quiet: true,
            threads: Some(threads),
            direct: true,
            ..Default::default()
        },
    )?;
    let whole = rep.particle_steps as f64 / rep.wall.as_secs_f64();
    let kernel = rep.particle_steps as f64 / rep.kernel.as_secs_f64();
    Ok((rep, whole, kernel))
}

fn sparse(args: &BenchArgs) -> Result<()> {
    let o = sparse_input(args)?;
    let (cx, cy) = o.centre();
    let toml = format!(
        "seed=1\n[input]\nfiles=['sparse_fvcom.nc']\n[release.generate]\ncount=100000\ncentre=[{cx},{cy}]\nradius=8000.0\nz=-5.0\n[run]\nduration='12h'\ndt='60s'\n[output]\nfile='sparse_out.nc'\ninterval='1h'\n"
    );
    let cfg_path = args.dir.join("sparse.toml");
    std::fs::write(&cfg_path, toml)?;
    let cfg = RunConfig::from_path(&cfg_path)?;
    println!("| threads | kernel | whole run (s) | whole-run particle-steps/s | per thread | kernel particle-steps/s | whole / kernel |");
    println!("|---|---|---|---|---|---|---|");
    let kernels = kernel_list(args)?;
    for &threads in &thread_list(args) {
        for &k in &kernels {
            simd::set(k).map_err(|e| anyhow::anyhow!(e))?;
            let (rep, whole, kernel) = direct_run(&cfg, threads)?;
            println!(
                "| {threads} | {} | {:.2} | {:.2} M | {:.2} M | {:.2} M | {:.2} |",
                k.name(),
                rep.wall.as_secs_f64(),
                whole / 1e6,
                whole / 1e6 / threads as f64,
                kernel / 1e6,
                whole / kernel
            );
        }
    }
    println!("sparse: 80 000 elements, {} layers, 100 000 particles, 720 steps of 60 s; peak RSS {:.0} MiB", args.layers, status_kib("VmHWM:") as f64 / 1024.0);
    Ok(())
}

/// The sparse case with larval behaviour switched on (diel migration, mortality, settlement on
/// three reefs, competent from release) against the same run with passive particles.
fn behaviour(args: &BenchArgs) -> Result<()> {
    let o = sparse_input(args)?;
    let (cx, cy) = o.centre();
    use crate::tools::demo::{collection, square};
    std::fs::write(
        args.dir.join("behaviour_reefs.geojson"),
        collection(&[
            square("north", (cx, cy + 7000.0), 600.0),
            square("west", (cx - 7000.0, cy), 600.0),
            square("centre", (cx, cy), 300.0),
        ]),
    )?;
    let base = format!(
        "seed=1
[input]
files=['sparse_fvcom.nc']
[release.generate]
count=100000
centre=[{cx},{cy}]
radius=8000.0
z=-5.0
[run]
duration='12h'
dt='60s'
[output]
file='behaviour_out.nc'
interval='1h'
"
    );
    let larval = format!(
        "{base}[behaviour]
mortality_per_day=0.1
[behaviour.migration]
day_depth=[8.0, 12.0]
night_depth=2.0
swim_speed=0.003
latitude=44.6
longitude=-63.6
[settlement]
polygons='behaviour_reefs.geojson'
competency=['0h', '12h']
probability_per_hour=0.2
"
    );
    println!("| case | threads | whole run (s) | whole-run particle-steps/s | kernel particle-steps/s | settled | dead |");
    println!("|---|---|---|---|---|---|---|");
    let mut rates = Vec::new();
    for (name, toml) in [("passive", base), ("larval", larval)] {
        let cfg_path = args.dir.join(format!("behaviour_{name}.toml"));
        std::fs::write(&cfg_path, toml)?;
        let cfg = RunConfig::from_path(&cfg_path)?;
        for &threads in &thread_list(args) {
            let (rep, whole, kernel) = direct_run(&cfg, threads)?;
            rates.push((name, threads, kernel));
            println!(
                "| {name} | {threads} | {:.2} | {:.2} M | {:.2} M | {} | {} |",
                rep.wall.as_secs_f64(),
                whole / 1e6,
                kernel / 1e6,
                rep.last.settled,
                rep.last.dead
            );
        }
    }
    for &(_, threads, passive) in rates.iter().filter(|r| r.0 == "passive") {
        if let Some(&(_, _, larval)) = rates.iter().find(|r| r.0 == "larval" && r.1 == threads) {
            println!(
                "behaviour: {threads} threads, larval kernel at {:.1} % of passive",
                100.0 * larval / passive
            );
        }
    }
    Ok(())
}

/// Waits for `child` and returns whether it succeeded, and its peak resident memory (KiB) as
/// the kernel accounted it (`wait4`'s `ru_maxrss`).
fn wait_rss(child: &mut std::process::Child) -> Result<(bool, u64)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, with pointers to live locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    anyhow::ensure!(pid > 0, "waiting for process {}", child.id());
    Ok((
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        usage.ru_maxrss as u64,
    ))
}

/// A mesh whose whole run needs more than 1.5 GB, on the direct path in one process and over
/// four separate `shoal-node` processes on loopback: each process's peak resident memory and
/// the speed of both.
fn scale(args: &BenchArgs) -> Result<()> {
    let dir = args.dir.join("scale");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 440,
        ny: 440,
        dx: 50.0,
        layers: 40,
        duration: 2.0 * 3600.0,
        period: 6.0 * 3600.0,
        temp: false,
        ..Default::default()
    };
    let input = dir.join("scale_fvcom.nc");
    if !input.exists() {
        let t = Instant::now();
        synth::write(&input, &o)?;
        println!(
            "scale: wrote {} in {:.1} s",
            input.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let (cx, cy) = o.centre();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let json5 = |name: &str, listen: &str, connect: &str| -> Result<PathBuf> {
        let connect = if connect.is_empty() {
            String::new()
        } else {
            format!("connect: {{ endpoints: [\"{connect}\"] }},")
        };
        let p = dir.join(name);
        std::fs::write(&p, format!("{{ mode: \"peer\", listen: {{ endpoints: [\"{listen}\"] }}, {connect} scouting: {{ multicast: {{ enabled: false }} }} }}"))?;
        Ok(p)
    };
    json5("manager.json5", &endpoint, "")?;
    let node_cfg = json5("node.json5", "tcp/127.0.0.1:0", &endpoint)?;
    let toml = |out: &str, cluster: &str| {
        format!(
            "seed=1\n[input]\nfiles=['scale_fvcom.nc']\n[release.generate]\ncount=200000\ncentre=[{cx},{cy}]\nradius=9000.0\nz=-5.0\n[run]\nduration='2h'\ndt='60s'\n[diffusion]\nhorizontal_kh=1.0\n[output]\nfile='{out}'\ninterval='1h'\n{cluster}"
        )
    };
    std::fs::write(dir.join("direct.toml"), toml("direct.nc", ""))?;
    std::fs::write(
        dir.join("nodes.toml"),
        toml(
            "nodes.nc",
            "[cluster]\nnodes=4\nwait_seconds=120\nzenoh_config='manager.json5'\n",
        ),
    )?;
    let exe = std::env::current_exe()?;
    let node_exe = exe.with_file_name("shoal-node");
    anyhow::ensure!(
        node_exe.exists(),
        "{} not found: build it with `cargo build --release`",
        node_exe.display()
    );
    let t = Instant::now();
    let mut direct = std::process::Command::new(&exe)
        .args(["run", "--direct", "--quiet", "direct.toml"])
        .current_dir(&dir)
        .spawn()?;
    let (ok, direct_rss) = wait_rss(&mut direct)?;
    anyhow::ensure!(ok, "the direct run failed");
    let direct_s = t.elapsed().as_secs_f64();
    let cluster = format!("scale-{}", std::process::id());
    let mut nodes = Vec::new();
    for k in 0..4 {
        nodes.push(
            std::process::Command::new(&node_exe)
                .args(["--cluster", &cluster, "--name", &format!("n{k}"), "--quiet"])
                .arg("--zenoh-config")
                .arg(&node_cfg)
                .stdin(std::process::Stdio::null())
                .spawn()?,
        );
    }
    let t = Instant::now();
    let mut manager = std::process::Command::new(&exe)
        .args(["run", "--quiet", "nodes.toml", "--cluster", &cluster])
        .current_dir(&dir)
        .spawn()?;
    let (ok, manager_rss) = wait_rss(&mut manager)?;
    let nodes_s = t.elapsed().as_secs_f64();
    let mut node_rss = Vec::new();
    for n in &mut nodes {
        // SAFETY: SIGINT to our own child, which leaves cleanly on it.
        unsafe { libc::kill(n.id() as i32, libc::SIGINT) };
        node_rss.push(wait_rss(n)?.1);
    }
    anyhow::ensure!(ok, "the run over four node processes failed");
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "scale: {} elements, {} layers, 200 000 particles, 120 steps of 60 s",
        2 * o.nx * o.ny,
        o.layers
    );
    println!("| process | peak RSS | share of --direct | wall (s) |\n|---|---|---|---|");
    println!(
        "| --direct (one process) | {:.0} MiB | 1.00 | {direct_s:.1} |",
        mib(direct_rss)
    );
    println!(
        "| manager, 4 nodes | {:.0} MiB | {:.2} | {nodes_s:.1} |",
        mib(manager_rss),
        manager_rss as f64 / direct_rss as f64
    );
    for (k, r) in node_rss.iter().enumerate() {
        println!(
            "| node n{k} | {:.0} MiB | {:.2} | |",
            mib(*r),
            *r as f64 / direct_rss as f64
        );
    }
    Ok(())
}

/// The GPU path against the CPU path on the dense mesh, and the fixed costs of a step.
#[cfg(feature = "gpu")]
fn gpu(args: &BenchArgs) -> Result<()> {
    use shoal_node::gpu::{GpuContext, GpuPartition};
    let ctx = GpuContext::new().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (o, mesh, levels) = dense_setup(args.elements, args.layers)?;
    let window = Window { levels: &levels };
    let params = StepParams {
        dt: 60.0,
        integrator: Integrator::Rk4,
        horizontal_kh: 0.0,
        vertical_mixing: VerticalMixing::None,
        sinking_speed: 0.0,
        seed: 1,
        happiness: None,
        behaviour: None,
    };
    println!(
        "gpu: adapter {}; {} elements, {} layers, {} particles, {} steps",
        ctx.describe(),
        mesh.n_elements(),
        args.layers,
        args.particles,
        args.steps
    );
    let mut cpu = Partition::new(dense_particles(&o, &mesh, args.particles));
    let mut gpu = GpuPartition::new(
        ctx.clone(),
        &mesh,
        cpu.particles.clone(),
        Default::default(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    cpu.advance(&StepContext::new(&mesh, window, &params, 0.0, 0));
    gpu.step(&StepContext::new(&mesh, window, &params, 0.0, 0))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    for s in 1..=args.steps {
        cpu.advance(&StepContext::new(
            &mesh,
            window,
            &params,
            s as f64 * 60.0,
            s,
        ));
    }
    let cpu_rate = args.particles as f64 * args.steps as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for s in 1..=args.steps {
        gpu.step(&StepContext::new(
            &mesh,
            window,
            &params,
            s as f64 * 60.0,
            s,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let gpu_rate = args.particles as f64 * args.steps as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    gpu.download(&mesh).map_err(|e| anyhow::anyhow!("{e}"))?;
    let readback = t.elapsed().as_secs_f64();
    // Fixed cost of a step: one particle, same mesh and fields.
    let mut one = GpuPartition::new(
        ctx.clone(),
        &mesh,
        dense_particles(&o, &mesh, 1),
        Default::default(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    one.step(&StepContext::new(&mesh, window, &params, 0.0, 0))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    for s in 1..=50 {
        one.step(&StepContext::new(
            &mesh,
            window,
            &params,
            s as f64 * 60.0,
            s,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let overhead = t.elapsed().as_secs_f64() / 50.0;
    // The happiest particle: temperature interpolated at every particle's end of step, the
    // reductions by atomics and the second dispatch for the argmax.
    let mut warm = levels.clone();
    let siglay = o.siglay();
    let nl = mesh.vertical.n_layers;
    let o_ref = &o;
    for l in &mut warm {
        l.temp = Some(
            (0..mesh.n_nodes())
                .flat_map(|n| {
                    let x = mesh.x[n];
                    let siglay = &siglay;
                    siglay
                        .iter()
                        .map(move |s| o_ref.temperature(x, *s as f64) as f32)
                })
                .collect(),
        );
        debug_assert_eq!(l.temp.as_ref().map(Vec::len), Some(mesh.n_nodes() * nl));
    }
    let window = Window { levels: &warm };
    let happy = StepParams {
        happiness: Some(shoal_common::kernel::Happiness {
            preferred_temperature: 15.0,
            tolerance: 1.5,
            threshold: 0.9,
        }),
        ..params.clone()
    };
    let needs = shoal_node::gpu::Needs::of(&happy);
    let mut cpu = Partition::new(dense_particles(&o, &mesh, args.particles));
    let mut gpu = GpuPartition::new(ctx.clone(), &mesh, cpu.particles.clone(), needs)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    cpu.advance(&StepContext::new(&mesh, window, &happy, 0.0, 0));
    gpu.step(&StepContext::new(&mesh, window, &happy, 0.0, 0))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    for s in 1..=args.steps {
        cpu.advance(&StepContext::new(&mesh, window, &happy, s as f64 * 60.0, s));
    }
    let cpu_happy = args.particles as f64 * args.steps as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for s in 1..=args.steps {
        gpu.step(&StepContext::new(&mesh, window, &happy, s as f64 * 60.0, s))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let gpu_happy = args.particles as f64 * args.steps as f64 / t.elapsed().as_secs_f64();
    println!(
        "| path | particle-steps/s | with the happiest particle |\n|---|---|---|\n| CPU (rayon, {} threads) | {:.2} M | {:.2} M |\n| GPU ({}) | {:.2} M | {:.2} M |",
        rayon::current_num_threads(),
        cpu_rate / 1e6,
        cpu_happy / 1e6,
        ctx.adapter.name,
        gpu_rate / 1e6,
        gpu_happy / 1e6
    );
    println!("gpu: per-step dispatch + count readback {:.3} ms; snapshot readback of {} particles {:.1} ms", overhead * 1e3, args.particles, readback * 1e3);
    Ok(())
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    match args.case.as_str() {
        "dense" => dense(args),
        "sparse" => sparse(args),
        "behaviour" => behaviour(args),
        "fabric" => {
            fabric(args)?;
            transport(args)
        }
        "transport" => transport(args),
        "checkpoint" => checkpoint(args),
        "scale" => scale(args),
        #[cfg(feature = "gpu")]
        "gpu" => gpu(args),
        "all" => {
            dense(args)?;
            sparse(args)
        }
        other => anyhow::bail!(
            "--case: `{other}` is not one of dense, sparse, behaviour, scale, fabric, transport, checkpoint, gpu, all"
        ),
    }
}

/// Checkpoints: size, write (atomic: temporary file, fsync, rename, fsync of the directory)
/// and read time for `--particles` particles, and their share of a whole run of that many
/// particles at the default cadence (one checkpoint per output time, hourly, plus the start).
fn checkpoint(args: &BenchArgs) -> Result<()> {
    use crate::output::checkpoint::{CheckpointFile, Saved};
    std::fs::create_dir_all(&args.dir)?;
    let (o, mesh, _) = dense_setup(args.elements, args.layers)?;
    let particles = dense_particles(&o, &mesh, args.particles);
    let file = CheckpointFile::beside(&args.dir.join("checkpoint_bench.nc"), 0x5eed);
    let saved = Saved {
        step: 60,
        records: 2,
        particles,
    };
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        file.save(&saved)?;
    }
    let write = t.elapsed().as_secs_f64() / reps as f64;
    let size = std::fs::metadata(file.path())?.len();
    let t = Instant::now();
    for _ in 0..reps {
        file.load(args.particles)?;
    }
    let read = t.elapsed().as_secs_f64() / reps as f64;
    file.remove()?;
    println!(
        "checkpoint: {} particles, {:.1} MB ({:.1} bytes per particle); write {:.0} ms, read {:.0} ms (mean of {reps})",
        args.particles,
        size as f64 / 1e6,
        size as f64 / args.particles as f64,
        write * 1e3,
        read * 1e3
    );
    // A whole run at the default cadence: 2 h of 60 s steps, output hourly, on the sparse mesh.
    let o = sparse_input(args)?;
    let (cx, cy) = o.centre();
    let toml = format!(
        "seed=1\n[input]\nfiles=['sparse_fvcom.nc']\n[release.generate]\ncount={}\ncentre=[{cx},{cy}]\nradius=8000.0\nz=-5.0\n[run]\nduration='2h'\ndt='60s'\n[diffusion]\nhorizontal_kh=1.0\n[output]\nfile='checkpoint_run.nc'\n",
        args.particles
    );
    let cfg_path = args.dir.join("checkpoint_run.toml");
    std::fs::write(&cfg_path, toml)?;
    let cfg = RunConfig::from_path(&cfg_path)?;
    let rep = run(
        &cfg,
        &RunOptions {
            quiet: true,
            direct: true,
            ..Default::default()
        },
    )?;
    println!(
        "checkpoint: a {}-particle run of {} steps (direct, {} threads) took {:.2} s, of which 3 checkpoints {:.2} s ({:.1} %)",
        args.particles,
        rep.steps,
        rep.threads,
        rep.wall.as_secs_f64(),
        rep.checkpoint.as_secs_f64(),
        100.0 * rep.checkpoint.as_secs_f64() / rep.wall.as_secs_f64()
    );
    Ok(())
}

/// Bytes per kind of message: count, postcard bytes, JSON bytes of the same envelopes,
/// particles carried (batches).
#[derive(Default, Clone, Copy)]
struct Traffic {
    count: u64,
    postcard: u64,
    json: u64,
    particles: u64,
}

/// A run file on the sparse case's input: `count` particles in a disc of `radius` metres.
fn fabric_config(
    args: &BenchArgs,
    (cx, cy): (f64, f64),
    name: &str,
    count: usize,
    duration: &str,
    radius: f64,
) -> Result<RunConfig> {
    let toml = format!(
        "seed=1\n[input]\nfiles=['sparse_fvcom.nc']\n[release.generate]\ncount={count}\ncentre=[{cx},{cy}]\nradius={radius}\nz=-5.0\n[run]\nduration='{duration}'\ndt='60s'\n[diffusion]\nhorizontal_kh=1.0\n[output]\nfile='{name}.nc'\ninterval='1h'\n"
    );
    let p = args.dir.join(format!("{name}.toml"));
    std::fs::write(&p, toml)?;
    RunConfig::from_path(&p)
}

/// A quiet run on `nodes` in-process nodes.
fn on_nodes(cfg: &RunConfig, nodes: usize) -> Result<crate::run::RunReport> {
    run(
        cfg,
        &RunOptions {
            quiet: true,
            nodes: Some(nodes),
            ..Default::default()
        },
    )
}

/// Bytes the loopback interface has sent since boot (`/proc/net/dev`).
fn loopback_tx_bytes() -> Result<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev").context("reading /proc/net/dev")?;
    dev.lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == "lo").then(|| rest.split_whitespace().nth(8)?.parse().ok())?
        })
        .context("/proc/net/dev: no `lo` line")
}

/// The deployed fabric's costs: the same 4-node run over loopback TCP and over QUIC with mutual
/// TLS and access control (certificates made by the fabric role's `shoal-pki`, as a converge
/// makes them), and the time a session takes to open and have its link to a peer.
fn transport(args: &BenchArgs) -> Result<()> {
    use shoal_node::net::{free_loopback_port, Fabric};
    use zenoh::Wait;
    let o = sparse_input(args)?;
    let pki = args.dir.join("pki");
    let tool = std::path::Path::new("ansible/roles/fabric/files/shoal-pki");
    if !pki.join("hosts/bench.crt").exists() {
        anyhow::ensure!(
            tool.exists(),
            "{}: not found; run the transport bench from the checkout",
            tool.display()
        );
        for step in [
            vec!["ca", &*pki.to_string_lossy(), "bench"],
            vec![
                "host",
                &*pki.to_string_lossy(),
                "bench",
                "IP:127.0.0.1,DNS:localhost",
            ],
        ] {
            let out = std::process::Command::new("sh")
                .arg(tool)
                .args(&step)
                .output()
                .with_context(|| format!("running {}", tool.display()))?;
            anyhow::ensure!(
                out.status.success(),
                "{} {}: {}",
                tool.display(),
                step[0],
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let pki = pki.canonicalize()?;
    let (ca, crt, key) = (
        pki.join("ca.crt"),
        pki.join("hosts/bench.crt"),
        pki.join("hosts/bench.key"),
    );
    let quic = format!(
        r#"{{ transport: {{ link: {{ protocols: ["quic"], tls: {{
  root_ca_certificate: "{ca}", enable_mtls: true, verify_name_on_connect: true,
  listen_private_key: "{key}", listen_certificate: "{crt}",
  connect_private_key: "{key}", connect_certificate: "{crt}" }} }} }},
  access_control: {{ enabled: true, default_permission: "deny",
    rules: [{{ id: "cluster", flows: ["egress", "ingress"], permission: "allow",
      messages: ["put", "delete", "declare_subscriber", "query", "reply", "declare_queryable",
                 "liveliness_token", "liveliness_query", "declare_liveliness_subscriber"],
      key_exprs: ["shoal/**"] }}],
    subjects: [{{ id: "hosts", cert_common_names: ["bench"], link_protocols: ["quic"] }}],
    policies: [{{ rules: ["cluster"], subjects: ["hosts"] }}] }} }}"#,
        ca = ca.display(),
        key = key.display(),
        crt = crt.display()
    );
    let transports = [
        (
            "TCP",
            args.dir.join("zenoh-tcp.json5"),
            r#"{ transport: { link: { protocols: ["tcp"] } } }"#.to_string(),
        ),
        (
            "QUIC, mutual TLS, access control",
            args.dir.join("zenoh-quic.json5"),
            quic,
        ),
    ];
    let cfg = fabric_config(args, o.centre(), "fabric_transport", 100_000, "2h", 8000.0)?;
    println!(
        "\ntransport: 100 000 particles, 4 in-process nodes on loopback, 120 steps, 80 000 elements, {} layers (best of 3)",
        args.layers
    );
    println!("| links | wall (s) | ms per step | loopback bytes per step |");
    println!("|---|---|---|---|");
    for (name, path, text) in &transports {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        let mut cfg = cfg.clone();
        cfg.cluster.zenoh_config = Some(path.canonicalize()?);
        let mut best: Option<(f64, u64, u32)> = None;
        for _ in 0..3 {
            let before = loopback_tx_bytes()?;
            let r = on_nodes(&cfg, 4)?;
            let bytes = loopback_tx_bytes()? - before;
            let wall = r.wall.as_secs_f64();
            if best.is_none_or(|(w, _, _)| wall < w) {
                best = Some((wall, bytes, r.steps));
            }
        }
        let (wall, bytes, steps) = best.expect("three runs");
        println!(
            "| {name} | {wall:.2} | {:.2} | {:.0} |",
            wall * 1e3 / steps as f64,
            bytes as f64 / steps as f64
        );
    }

    // Connection set-up: a session opens, dials a listening peer, and has its link.
    println!("\n| links | session open to link up, median (ms) | max (ms) | of |");
    println!("|---|---|---|---|");
    for (name, path, _) in &transports {
        let scheme = if name.starts_with("QUIC") {
            "quic"
        } else {
            "tcp"
        };
        let ep = format!("{scheme}/127.0.0.1:{}", free_loopback_port()?);
        let listener = Fabric {
            config_file: Some(path.clone()),
            listen: Some(vec![ep.clone()]),
            connect: vec![],
            multicast: Some(false),
        }
        .open()?;
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let s = Fabric {
                config_file: Some(path.clone()),
                listen: Some(vec![]),
                connect: vec![ep.clone()],
                multicast: Some(false),
            }
            .open()?;
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while s.info().links().wait().next().is_none() {
                anyhow::ensure!(Instant::now() < deadline, "{name}: no link within 10 s");
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
            let _ = s.close().wait();
        }
        let _ = listener.close().wait();
        times.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.1} | {:.1} | {} |",
            times[times.len() / 2],
            times[times.len() - 1],
            times.len()
        );
    }
    Ok(())
}

/// The fabric: bytes on the wire (postcard against the raw payload and against JSON), the
/// overhead of in-process nodes against the one-machine path, and strong scaling.
fn fabric(args: &BenchArgs) -> Result<()> {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    let o = sparse_input(args)?;
    let (cx, cy) = o.centre();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let write = |name: &str, count: usize, duration: &str, radius: f64| {
        fabric_config(args, (cx, cy), name, count, duration, radius)
    };

    // Bytes: every message encoded, seen through the tap, on a 4-node run.
    let traffic: Arc<Mutex<BTreeMap<&'static str, Traffic>>> = Default::default();
    let t2 = traffic.clone();
    shoal_node::net::set_tap(Box::new(move |env, len| {
        let json = serde_json::to_vec(env).map(|v| v.len()).unwrap_or(0);
        let particles = match &env.message {
            shoal_common::wire::Message::ParticleBatch(b) => b.len() as u64,
            _ => 0,
        };
        let mut t = t2.lock().unwrap();
        let e = t.entry(env.message.kind()).or_default();
        e.count += 1;
        e.postcard += len as u64;
        e.json += json as u64;
        e.particles += particles;
    }));
    let cfg = write("fabric_bytes", 100_000, "2h", 8000.0)?;
    let rep = on_nodes(&cfg, 4)?;
    let t = traffic.lock().unwrap().clone();
    let steps = rep.steps as f64;
    println!(
        "fabric bytes: 100 000 particles, 4 in-process nodes, {} steps, 80 000 elements, 20 layers",
        rep.steps
    );
    println!("| message | count | postcard bytes | JSON bytes | JSON / postcard |");
    println!("|---|---|---|---|---|");
    for (kind, x) in &t {
        println!(
            "| {kind} | {} | {} | {} | {:.2} |",
            x.count,
            x.postcard,
            x.json,
            x.json as f64 / x.postcard.max(1) as f64
        );
    }
    let get = |k: &str| t.get(k).copied().unwrap_or_default();
    let (batch, summary, control) = (get("particle batch"), get("step summary"), get("control"));
    // Batches after the initial hand-out (those come from the manager, one per partition).
    let raw = 4 + 3 * 8 + 4 + 1 + 8 + 4;
    let initial = 100_000u64;
    let migrated = batch.particles - initial;
    println!(
        "per step: {:.0} bytes of batches, summaries and controls ({:.0} in JSON); {:.1} migrants per step",
        (batch.postcard + summary.postcard + control.postcard) as f64 / steps,
        (batch.json + summary.json + control.json) as f64 / steps,
        migrated as f64 / steps
    );
    println!(
        "particle batches: {:.1} bytes per particle carried against {raw} of raw payload ({:.3}x); JSON {:.1} bytes ({:.2}x postcard)",
        batch.postcard as f64 / batch.particles.max(1) as f64,
        batch.postcard as f64 / (batch.particles.max(1) * raw) as f64,
        batch.json as f64 / batch.particles.max(1) as f64,
        batch.json as f64 / batch.postcard.max(1) as f64
    );

    // Overhead and scaling at 1 M particles.
    let cfg = write("fabric_1m", args.particles, "1h", 9000.0)?;
    let direct = run(
        &cfg,
        &RunOptions {
            quiet: true,
            direct: true,
            ..Default::default()
        },
    )?;
    let rate = |r: &crate::run::RunReport| r.particle_steps as f64 / r.wall.as_secs_f64();
    println!(
        "\nfabric at {} particles, {} steps, {cores} cores (threads = cores on every path):",
        args.particles, direct.steps
    );
    println!("| path | wall (s) | particle-steps/s | speed vs one machine |");
    println!("|---|---|---|---|");
    println!(
        "| one machine (--direct) | {:.2} | {:.2} M | 1.00 |",
        direct.wall.as_secs_f64(),
        rate(&direct) / 1e6
    );
    for nodes in 1..=4 {
        let r = on_nodes(&cfg, nodes)?;
        println!(
            "| {nodes} in-process nodes | {:.2} | {:.2} M | {:.3} |",
            r.wall.as_secs_f64(),
            rate(&r) / 1e6,
            direct.wall.as_secs_f64() / r.wall.as_secs_f64()
        );
    }
    Ok(())
}
