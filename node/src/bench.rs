//! `fieldmesh bench`: measurements printed side by side with their reference.
use anyhow::Result;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Store and channel figures.
    Store {
        #[arg(long, default_value_t = 2000)]
        ingest: usize,
    },
}

pub fn run(_cmd: BenchCmd) -> Result<()> {
    anyhow::bail!("bench not written yet")
}
