//! Starting and stopping real processes for the tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `tiermon` binary under test: cargo's, or `TIERMON_BIN` (to time a
/// release build with the same tests).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("TIERMON_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tiermon").to_owned())
    })
}

/// `tiermon query --server <base> <args>`: its standard output; fails the
/// test, with the error, when it fails.
pub fn query_cli(base: &str, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(["query", "--server", base])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A running `tiermon` server; killed (SIGKILL) when dropped.
pub struct Tiermon {
    child: Child,
    pub addr: SocketAddr,
    /// Holds the config file for as long as the process runs.
    _dir: tempfile::TempDir,
}

impl Tiermon {
    /// Starts `tiermon <subcommand> --listen 127.0.0.1:0 [--config FILE]
    /// <extra>` and waits for its "listening" log line.
    pub fn start(subcommand: &str, config: Option<&str>, extra: &[&str]) -> Self {
        Self::start_at(subcommand, "127.0.0.1:0", config, extra)
    }

    /// As [`Self::start`], listening on `listen` (to restart a server on
    /// its address).
    pub fn start_at(subcommand: &str, listen: &str, config: Option<&str>, extra: &[&str]) -> Self {
        Self::start_env(subcommand, listen, config, extra, &[])
    }

    /// As [`Self::start_at`], with these environment variables set.
    pub fn start_env(
        subcommand: &str,
        listen: &str,
        config: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg(subcommand).args(["--listen", listen]).args(extra);
        cmd.envs(env.iter().copied());
        if let Some(text) = config {
            let path = dir.path().join("tiermon.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd
            .env("TIERMON_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let name = format!("{subcommand} {listen}");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("tiermon {subcommand} did not report its address");
            });
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Tiermon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Finds `name` on PATH (and in /usr/sbin, /usr/bin). When it is missing,
/// the test fails if the test script promised the peers
/// (TIERMON_REQUIRE_PEERS=1) and is skipped with a message otherwise.
pub fn peer(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/bin", "/usr/sbin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("TIERMON_REQUIRE_PEERS").as_deref() != Ok("1"),
            "{name} is required (TIERMON_REQUIRE_PEERS=1) but not installed; scripts/test.sh installs it"
        );
        eprintln!(
            "SKIPPED: {name} is not installed; run scripts/test.sh to install the test peers"
        );
    }
    found
}

/// A free loopback port (bound, then released: another process could take
/// it, which the caller's start-up check would notice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET `url` and return the body, blocking.
pub fn get(url: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { reqwest::get(url).await.ok()?.text().await.ok() })
}

/// The value of the first sample named `name` whose labels include
/// `labels`, in Prometheus text.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let fams =
        tiermon_exposition::parse_families(text.as_bytes(), tiermon_exposition::Format::Prometheus)
            .ok()?;
    fams.iter()
        .flat_map(|f| &f.samples)
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(n, v)| s.labels.iter().any(|(ln, lv)| ln == n && lv == v))
        })
        .map(|s| s.value)
}

/// All samples named `name`.
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let fams =
        tiermon_exposition::parse_families(text.as_bytes(), tiermon_exposition::Format::Prometheus)
            .unwrap();
    fams.into_iter()
        .flat_map(|f| f.samples)
        .filter(|s| s.name == name)
        .map(|s| (s.labels, s.value))
        .collect()
}

/// Runs `cmd` with `input` on its standard input; returns its output.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A TCP proxy the test can cut, as a network partition would: while cut,
/// open connections are shut down and new ones are closed at once.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Forwards connections on a new loopback port to `target`.
    pub fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, k) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(down) = conn else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = down.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(up) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let mut open = k.lock().unwrap();
                for s in [&down, &up] {
                    if let Ok(s) = s.try_clone() {
                        open.push(s);
                    }
                }
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, cut, conns }
    }

    /// Partitions: nothing gets through until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Heals the partition.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An HTTP server that records the JSON bodies POSTed to it (a webhook
/// receiver, or an Alertmanager-compatible sink) and answers 200.
pub struct Hook {
    pub url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    pub fn start() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        crate::webhook::serve(l, move |body| {
            if let Ok(v) = serde_json::from_slice(body) {
                g.lock().unwrap().push(v);
            }
        });
        Hook { url, got }
    }

    /// Everything received so far.
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until a body satisfies `f`; returns it.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(what, limit, || self.all().into_iter().find(|v| f(v)))
    }
}

/// A WebDriver session (W3C protocol over HTTP, as ChromeDriver speaks
/// it): just the commands the dashboard test needs.
pub struct WebDriver {
    http: reqwest::Client,
    base: String,
}

impl WebDriver {
    /// A new session at the WebDriver server `server` with `capabilities`
    /// (the `alwaysMatch` object).
    pub async fn start(server: &str, capabilities: serde_json::Value) -> Result<Self, String> {
        let http = reqwest::Client::new();
        let body = serde_json::json!({"capabilities": {"alwaysMatch": capabilities}});
        let v = Self::call(
            &http,
            reqwest::Method::POST,
            &format!("{server}/session"),
            Some(body),
        )
        .await?;
        let id = v["sessionId"].as_str().ok_or("no session id")?.to_owned();
        Ok(Self {
            http,
            base: format!("{server}/session/{id}"),
        })
    }

    async fn call(
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let mut r = http.request(method, url);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].to_string())
        }
    }

    async fn cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        Self::call(&self.http, method, &format!("{}{path}", self.base), body).await
    }

    pub async fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd(
            reqwest::Method::POST,
            "/url",
            Some(serde_json::json!({"url": url})),
        )
        .await
        .map(drop)
    }

    pub async fn current_url(&self) -> Result<String, String> {
        Ok(self
            .cmd(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or("")
            .to_owned())
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub async fn execute(&self, script: &str) -> Result<serde_json::Value, String> {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(serde_json::json!({"script": script, "args": []})),
        )
        .await
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await?;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .map_err(|e| e.to_string())
    }

    pub async fn close(self) -> Result<(), String> {
        self.cmd(reqwest::Method::DELETE, "", None).await.map(drop)
    }
}

/// Prometheus remote_write of `series` — (labels, timestamp ms, value),
/// one sample each — to `base`; whether it was acknowledged (2xx).
/// One sample to remote-write: labels, timestamp (ms), value.
pub type Point<'a> = (Vec<(&'a str, String)>, i64, f64);

pub fn remote_write(base: &str, series: &[Point<'_>]) -> bool {
    use prost::Message;
    use tiermon_proto::prometheus as pb;
    let req = pb::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, t, v)| pb::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| pb::Label {
                        name: n.to_string(),
                        value: v.clone(),
                    })
                    .collect(),
                samples: vec![pb::Sample {
                    value: *v,
                    timestamp: *t,
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/write"))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .timeout(Duration::from_secs(10))
            .body(body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
}
