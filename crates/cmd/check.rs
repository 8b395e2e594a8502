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
