//! Checkpoints: every particle's state after a step, beside the output file as
//! `<output>.checkpoint`, so that a run can roll back after losing a node and `shoal run
//! --resume` can go on after losing the manager. The bytes are `common::wire`'s checkpoint
//! format; this module only writes them safely and refuses a checkpoint of another run.
//!
//! Writing is atomic: a temporary file beside it, fsync, rename over the old one, fsync of the
//! directory. A manager killed at any moment leaves the previous checkpoint or the new one,
//! never a torn one.

use crate::input::config::RunConfig;
use crate::input::fvcom::FvcomReader;
use anyhow::{anyhow, bail, Context, Result};
use shoal_common::wire::{self, Checkpoint};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A checkpoint as the schedule holds it: the state after `step`, when the output had
/// `records` time records (the file's own record, less its header).
pub use shoal_common::wire::Saved;

/// The checkpoint file of one run's output.
pub struct CheckpointFile {
    path: PathBuf,
    run_hash: u64,
}

impl CheckpointFile {
    /// `<output>.checkpoint`, for the run whose configuration and input hash to `run_hash`.
    pub fn beside(output: &Path, run_hash: u64) -> CheckpointFile {
        CheckpointFile {
            path: crate::input::config::checkpoint_path(output),
            run_hash,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `saved` atomically over the previous checkpoint.
    pub fn save(&self, saved: &Saved) -> Result<()> {
        let ctx = || format!("writing checkpoint {}", self.path.display());
        let mut c = Checkpoint {
            magic: wire::CHECKPOINT_MAGIC,
            version: wire::CHECKPOINT_VERSION,
            run_hash: self.run_hash,
            saved: saved.clone(),
        };
        c.saved.particles.sort_by_id();
        let bytes = wire::encode_checkpoint(&c).map_err(|e| anyhow!("{e}"))?;
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            // A full disk keeps nothing of the attempt: the previous checkpoint stays whole and
            // the space the attempt took is free again.
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(ctx);
        }
        crate::fault::maybe_die("checkpoint-write", saved.step);
        std::fs::rename(&tmp, &self.path).with_context(ctx)?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(ctx)?;
        crate::fault::maybe_die("checkpoint", saved.step);
        Ok(())
    }

    /// Reads the checkpoint for a run of `n` particles, refusing one of another configuration
    /// or input.
    pub fn load(&self, n: usize) -> Result<Saved> {
        let bytes = std::fs::read(&self.path).with_context(|| {
            format!(
                "reading checkpoint {} (--resume needs the checkpoint of an interrupted run)",
                self.path.display()
            )
        })?;
        let c = wire::decode_checkpoint(&bytes)
            .map_err(|e| anyhow!("{}: not a shoal checkpoint: {e}", self.path.display()))?;
        if c.run_hash != self.run_hash {
            bail!(
                "{} belongs to another configuration or input (hash {:016x}, this run's is {:016x}): resume with the run file and input files it was written for, or start afresh without --resume",
                self.path.display(),
                c.run_hash,
                self.run_hash
            );
        }
        let p = &c.saved.particles;
        if p.len() != n || p.id.iter().enumerate().any(|(i, &id)| id as usize != i) {
            bail!(
                "{}: holds {} particles, not the run's {n} each exactly once",
                self.path.display(),
                p.len()
            );
        }
        Ok(c.saved)
    }

    /// Removes the checkpoint once its run has finished.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing checkpoint {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// A hash of what decides a run's trajectories: the configuration as written, each input
/// file's name, size, first and last MiB and time axis, and the release's CSV or GeoJSON. It never reads a whole input (FVCOM
/// files run to gigabytes on a Pi's SD card) yet changes with any re-run, re-cut or re-written
/// file in practice.
pub fn run_hash(cfg: &RunConfig, reader: &FvcomReader) -> Result<u64> {
    let mut h = Fnv::new();
    h.write(cfg.source_text.as_bytes());
    for path in &cfg.files {
        let ctx = || format!("hashing input {}", path.display());
        let mut f = std::fs::File::open(path).with_context(ctx)?;
        let len = f.metadata().with_context(ctx)?.len();
        h.write(
            path.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or(b""),
        );
        h.write(&len.to_le_bytes());
        const EDGE: u64 = 1 << 20;
        let mut buf = vec![0u8; EDGE.min(len) as usize];
        f.read_exact(&mut buf).with_context(ctx)?;
        h.write(&buf);
        if len > EDGE {
            f.seek(SeekFrom::Start(len - EDGE.min(len - EDGE)))
                .with_context(ctx)?;
            let mut tail = Vec::new();
            f.read_to_end(&mut tail).with_context(ctx)?;
            h.write(&tail);
        }
    }
    for t in &reader.times {
        h.write(&t.to_bits().to_le_bytes());
    }
    // The release's and settlement's own files (small): a changed site, point or reef is
    // another run.
    let release_files = [
        cfg.release_file.as_deref(),
        cfg.polygons.as_ref().map(|p| p.file.as_path()),
        cfg.settlement.as_ref().map(|s| s.file.as_path()),
    ];
    for path in release_files.into_iter().flatten() {
        let text = std::fs::read(path).with_context(|| format!("hashing {}", path.display()))?;
        h.write(&text);
    }
    Ok(h.0)
}

/// FNV-1a, 64 bits: stable across builds and architectures, unlike std's hasher.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
