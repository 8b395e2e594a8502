//! Requests by HTTP status from application access logs (common, combined,
//! or JSON lines), following the file across rotation and truncation.
//!
//! Cardinality is bounded: a status becomes a `code` label only when it is
//! a valid HTTP status (100–599), so a log can add at most 500 series.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tiermon_config::{LogFormat, LogSource};

use crate::out::Out;

/// How often followers look for new lines.
const POLL: Duration = Duration::from_millis(500);
/// Most bytes read per poll, so a huge backlog cannot stall a thread.
const MAX_READ: usize = 8 << 20;
/// Longest line kept; longer ones are counted as parse errors.
const MAX_LINE: usize = 64 << 10;

/// Counts for one log, plus the follower's position in it.
#[derive(Debug)]
pub(crate) struct LogCounter {
    cfg: LogSource,
    counts: Mutex<Counts>,
    follower: Mutex<Follower>,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    by_code: BTreeMap<u16, u64>,
    lines: u64,
    errors: u64,
    rotations: u64,
    readable: bool,
}

#[derive(Debug, Default)]
struct Follower {
    file: Option<File>,
    id: (u64, u64),
    offset: u64,
    opened_once: bool,
    partial: Vec<u8>,
    skipping_long_line: bool,
}

impl LogCounter {
    pub(crate) fn new(cfg: LogSource) -> Self {
        Self {
            cfg,
            counts: Mutex::new(Counts::default()),
            follower: Mutex::new(Follower::default()),
        }
    }

    pub(crate) fn collect(&self, out: &mut Out) {
        let c = self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let log = self.cfg.name.as_str();
        for (code, n) in &c.by_code {
            let code_s = code.to_string();
            let class = format!("{}xx", code / 100);
            out.counter(
                "tiermon_log_requests_total",
                "Requests in the access log by HTTP status.",
                &[("log", log), ("code", &code_s), ("class", &class)],
                *n as f64,
            );
        }
        out.counter(
            "tiermon_log_lines_total",
            "Lines read from the access log.",
            &[("log", log)],
            c.lines as f64,
        );
        out.counter(
            "tiermon_log_parse_errors_total",
            "Lines of the access log without a valid HTTP status.",
            &[("log", log)],
            c.errors as f64,
        );
        out.counter(
            "tiermon_log_rotations_total",
            "Rotations and truncations of the access log followed.",
            &[("log", log)],
            c.rotations as f64,
        );
        out.gauge(
            "tiermon_log_readable",
            "Whether the access log could be opened.",
            &[("log", log)],
            if c.readable { 1.0 } else { 0.0 },
        );
    }

    /// Reads whatever is new. Blocking.
    pub(crate) fn step(&self) {
        let mut f = self.follower.lock().unwrap_or_else(|e| e.into_inner());
        let meta = std::fs::metadata(&self.cfg.path).ok();
        let mut rotated = false;
        if let (Some(m), Some(_)) = (&meta, &f.file) {
            if (m.dev(), m.ino()) != f.id {
                // Renamed away and replaced: finish the old file first.
                self.drain(&mut f);
                f.file = None;
                rotated = true;
            } else if m.len() < f.offset {
                // Truncated in place (copytruncate).
                if let Some(file) = f.file.as_mut()
                    && file.seek(SeekFrom::Start(0)).is_ok()
                {
                    f.offset = 0;
                    f.partial.clear();
                    self.counts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .rotations += 1;
                }
            }
        }
        if f.file.is_none() {
            match File::open(&self.cfg.path) {
                Ok(mut file) => {
                    let m = file.metadata().ok();
                    f.id = m.as_ref().map(|m| (m.dev(), m.ino())).unwrap_or_default();
                    let at_end = !f.opened_once && !self.cfg.from_start;
                    f.offset = if at_end {
                        file.seek(SeekFrom::End(0)).unwrap_or(0)
                    } else {
                        0
                    };
                    f.opened_once = true;
                    f.file = Some(file);
                    f.partial.clear();
                    let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
                    c.readable = true;
                    if rotated {
                        c.rotations += 1;
                    }
                }
                Err(e) => {
                    let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
                    if c.readable || !f.opened_once {
                        tracing::warn!(log = %self.cfg.name, path = %self.cfg.path.display(), error = %e, "cannot open access log");
                        f.opened_once = true;
                    }
                    c.readable = false;
                    return;
                }
            }
        }
        self.drain(&mut f);
    }

    /// Reads from the current position to the end of the open file.
    fn drain(&self, f: &mut Follower) {
        let Some(file) = f.file.as_mut() else { return };
        let mut buf = Vec::new();
        let n = match file.take(MAX_READ as u64).read_to_end(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(log = %self.cfg.name, error = %e, "reading access log");
                return;
            }
        };
        f.offset += n as u64;
        let mut counts = Counts::default();
        let mut rest: &[u8] = &buf;
        while let Some(i) = memchr_newline(rest) {
            let (line, tail) = rest.split_at(i);
            rest = &tail[1..];
            if f.skipping_long_line {
                f.skipping_long_line = false;
                f.partial.clear();
                continue;
            }
            if f.partial.is_empty() {
                self.count_line(line, &mut counts);
            } else {
                f.partial.extend_from_slice(line);
                let whole = std::mem::take(&mut f.partial);
                self.count_line(&whole, &mut counts);
            }
        }
        if !f.skipping_long_line {
            f.partial.extend_from_slice(rest);
            if f.partial.len() > MAX_LINE {
                f.partial.clear();
                f.skipping_long_line = true;
                counts.errors += 1;
            }
        }
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (code, n) in counts.by_code {
            *c.by_code.entry(code).or_default() += n;
        }
        c.lines += counts.lines;
        c.errors += counts.errors;
    }

    fn count_line(&self, line: &[u8], c: &mut Counts) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        c.lines += 1;
        let status = match self.cfg.format {
            LogFormat::Common | LogFormat::Combined => clf_status(line),
            LogFormat::Json => {
                json_status(line, self.cfg.status_field.as_deref().unwrap_or("status"))
            }
        };
        match status.filter(|s| (100..=599).contains(s)) {
            Some(s) => *c.by_code.entry(s).or_default() += 1,
            None => c.errors += 1,
        }
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// The status of a common/combined log line: the token after the quoted
/// request, which may itself contain escaped quotes.
fn clf_status(line: &[u8]) -> Option<u16> {
    let open = line.iter().position(|&c| c == b'"')?;
    let mut i = open + 1;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b'"' => break,
            _ => i += 1,
        }
    }
    let rest = std::str::from_utf8(line.get(i + 1..)?).ok()?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The status of a JSON line at a dotted field path; a number or a string.
fn json_status(line: &[u8], field: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let mut cur = &v;
    for part in field.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Follows the log until aborted.
pub(crate) async fn follow(log: Arc<LogCounter>) {
    loop {
        let l = log.clone();
        if tokio::task::spawn_blocking(move || l.step()).await.is_err() {
            tracing::error!(log = %log.cfg.name, "access log follower failed");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn counter(
        path: &std::path::Path,
        format: LogFormat,
        field: Option<&str>,
        from_start: bool,
    ) -> LogCounter {
        LogCounter::new(LogSource {
            name: "web".into(),
            path: path.to_owned(),
            format,
            status_field: field.map(Into::into),
            from_start,
        })
    }

    fn codes(l: &LogCounter) -> (BTreeMap<u16, u64>, u64, u64, u64) {
        let c = l.counts.lock().unwrap();
        (c.by_code.clone(), c.lines, c.errors, c.rotations)
    }

    fn append(path: &std::path::Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn status_extraction() {
        assert_eq!(
            clf_status(
                br#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326"#
            ),
            Some(200)
        );
        assert_eq!(
            clf_status(br#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /x?q=\"a b\" HTTP/1.1" 503 0 "http://ref/" "curl/8""#),
            Some(503)
        );
        assert_eq!(clf_status(b"garbage"), None);
        assert_eq!(json_status(br#"{"status":404}"#, "status"), Some(404));
        assert_eq!(
            json_status(br#"{"response":{"status":"502"}}"#, "response.status"),
            Some(502)
        );
        assert_eq!(json_status(br#"{"status":true}"#, "status"), None);
        assert_eq!(json_status(b"{not json", "status"), None);
    }

    #[test]
    fn counts_new_lines_only_and_survives_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let line = |code: u16| {
            format!("1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] \"GET / HTTP/1.1\" {code} 1\n")
        };
        append(&path, &line(200));
        let l = counter(&path, LogFormat::Common, None, false);
        l.step();
        assert_eq!(
            codes(&l).1,
            0,
            "existing content is skipped unless from_start"
        );
        append(&path, &(line(200) + &line(500)));
        // A partial line waits for its newline.
        append(&path, "1.2.3.4 - - [x] \"GET / HTTP/1.1\" 50");
        l.step();
        append(&path, "2 1\nnot a log line\n");
        l.step();
        let (by, lines, errors, _) = codes(&l);
        assert_eq!(by, BTreeMap::from([(200, 1), (500, 1), (502, 1)]));
        assert_eq!((lines, errors), (4, 1));

        // Rotation by rename: lines written to the old file before the
        // switch still count, then the new file is read from its start.
        append(&path, &line(201));
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        append(&path, &line(404));
        l.step();
        let (by, _, _, rotations) = codes(&l);
        assert_eq!(
            (by.get(&201), by.get(&404), rotations),
            (Some(&1), Some(&1), 1)
        );

        // copytruncate.
        std::fs::write(&path, "").unwrap();
        l.step();
        append(&path, &line(503));
        l.step();
        let (by, _, _, rotations) = codes(&l);
        assert_eq!((by.get(&503), rotations), (Some(&1), 2));
    }

    #[test]
    fn json_lines_from_start_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.jsonl");
        let l = counter(&path, LogFormat::Json, Some("res.status"), true);
        l.step();
        let mut o = Out::default();
        l.collect(&mut o);
        let fams = o.into_families();
        let readable = fams
            .iter()
            .find(|f| f.name == "tiermon_log_readable")
            .unwrap();
        assert_eq!(readable.samples[0].value, 0.0);
        append(
            &path,
            "{\"res\":{\"status\":200}}\n{\"res\":{\"status\":999}}\n",
        );
        l.step();
        let (by, lines, errors, _) = codes(&l);
        assert_eq!((by, lines, errors), (BTreeMap::from([(200, 1)]), 2, 1));
    }
}
