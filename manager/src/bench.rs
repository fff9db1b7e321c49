//! `shoal bench`: tracking speed and memory, recorded in BENCHMARKS.md.

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn bench(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
