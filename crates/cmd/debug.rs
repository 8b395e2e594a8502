//! `tiermon debug`: tools for testing tiermon itself (hidden from help).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use tiermon_model::Labels;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Debug {
    /// Appends a known pattern to a storage folder until killed, printing
    /// `acked N` after batch N is committed (for crash-recovery tests).
    TsdbLoad {
        /// Storage folder.
        #[arg(long)]
        data: PathBuf,
        /// Series per batch.
        #[arg(long, default_value_t = 1000)]
        series: u32,
        /// First batch number.
        #[arg(long, default_value_t = 0)]
        from_batch: u64,
        /// Checkpoint every this many batches (0: never).
        #[arg(long, default_value_t = 50)]
        checkpoint_every: u64,
    },
}

/// The value the loader writes for series `i` in batch `b`; tests check it.
pub(crate) fn load_value(i: u32, b: u64) -> f64 {
    (u64::from(i) * 1_000_003 + b) as f64
}

pub(crate) fn run(d: Debug) -> anyhow::Result<()> {
    match d {
        Debug::TsdbLoad {
            data,
            series,
            from_batch,
            checkpoint_every,
        } => {
            let db = tiermon_tsdb::Db::open(&data, tiermon_tsdb::Options::default())
                .context("opening storage")?;
            let labels: Vec<Labels> = (0..series)
                .map(|i| {
                    Labels::from_pairs([("__name__", "load".to_owned()), ("i", i.to_string())])
                })
                .collect();
            let mut refs = Vec::with_capacity(labels.len());
            let mut out = std::io::stdout().lock();
            for b in from_batch.. {
                let mut app = db.appender();
                if refs.is_empty() {
                    for (i, l) in labels.iter().enumerate() {
                        refs.push(app.append(l, b as i64 * 1000, load_value(i as u32, b))?);
                    }
                } else {
                    for (i, &r) in refs.iter().enumerate() {
                        app.append_ref(r, b as i64 * 1000, load_value(i as u32, b));
                    }
                }
                let res = app.commit()?;
                anyhow::ensure!(
                    res.rejected.is_empty(),
                    "batch {b}: {:?}",
                    res.rejected.first()
                );
                writeln!(out, "acked {b}")?;
                out.flush()?;
                if checkpoint_every > 0 && b % checkpoint_every == checkpoint_every - 1 {
                    db.checkpoint()?;
                }
            }
            Ok(())
        }
    }
}
