//! `tiermon check`: validate exposition text and configuration, with
//! promtool's contract (exit 0 when valid, 1 with the error otherwise).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tiermon_exposition::Format;

#[derive(Debug, Subcommand)]
pub(crate) enum Check {
    /// Read exposition text on standard input; exit 0 when it is valid.
    Metrics {
        /// prometheus (text format 0.0.4) or openmetrics.
        #[arg(long, default_value = "prometheus", value_parser = ["prometheus", "openmetrics"])]
        format: String,
    },
    /// Check Prometheus rule files, like `promtool check rules`.
    Rules {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check an Alertmanager configuration file, like `amtool check-config`.
    Alertmanager {
        /// The file.
        file: PathBuf,
    },
    /// Load and validate a configuration file.
    Config {
        /// The file (TOML or YAML).
        file: PathBuf,
    },
}

pub(crate) fn run(c: Check) -> ExitCode {
    match c {
        Check::Metrics { format } => {
            let format = Format::from_name(&format).unwrap_or_default();
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                eprintln!("error: reading standard input: {e}");
                return ExitCode::FAILURE;
            }
            match tiermon_exposition::parse_families(&buf, format) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "error: invalid {} exposition: {e}",
                        if format == Format::OpenMetrics {
                            "OpenMetrics"
                        } else {
                            "Prometheus text"
                        }
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Check::Rules { files } => {
            let mut failed = false;
            for f in files {
                match tiermon_rules::RuleFile::load(&f) {
                    Ok(r) => {
                        let rules: usize = r.groups.iter().map(|g| g.rules.len()).sum();
                        println!("Checking {}\n  SUCCESS: {rules} rules found", f.display());
                    }
                    Err(e) => {
                        failed = true;
                        eprintln!("Checking {}\n  FAILED:", f.display());
                        for p in &e.problems {
                            eprintln!("{p}");
                        }
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Check::Alertmanager { file } => match tiermon_alertmanager::Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: valid ({} receivers, {} inhibition rules)",
                    file.display(),
                    c.receivers.len(),
                    c.inhibit_rules.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Check::Config { file } => match tiermon_config::load(Some(&file), std::env::vars()) {
            Ok(_) => {
                println!("{}: valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
