//! The dashboard in a real browser: headless Chromium driven through
//! ChromeDriver (WebDriver), against a secondary scraping the fleet
//! simulator. Every page loads without a script error; the heat map has
//! exactly one cell per simulated host; a host that goes down turns its
//! cell to "down" within one refresh. Screenshots are kept under the
//! target directory (`tmp/dashboard/`), and the heat map's render times
//! are printed. `TIERMON_DASH_HOSTS` sets the fleet's size (default 300;
//! the figures in the issue were taken with 10000) and
//! `TIERMON_DASH_INTERVAL` the scrape interval in seconds (default 2).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleetsim::{self, Fleet, Mode};
use crate::util::{Guard, Tiermon, WebDriver as Client, eventually, free_port, peer};

/// The runtime the browser client and the fleet simulator run on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script).await.unwrap_or(Value::Null)
}

async fn wait_js(c: &Client, what: &str, limit: Duration, script: &str) -> Value {
    let start = Instant::now();
    loop {
        let v = js(c, script).await;
        if !(v.is_null() || v == Value::Bool(false)) {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn shot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    if let Ok(png) = c.screenshot().await {
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// No script error, no failed request for the page's own assets, and no
/// error shown on the page.
async fn page_is_clean(c: &Client, page: &str) {
    let errors = js(c, "return window.tiermonErrors || ['app.js did not run'];").await;
    assert_eq!(errors, json!([]), "{page}: script errors");
    let failed = js(
        c,
        "return performance.getEntriesByType('resource').filter(e => e.initiatorType !== 'fetch' && e.responseStatus >= 400).map(e => e.name + ' ' + e.responseStatus);",
    )
    .await;
    assert_eq!(failed, json!([]), "{page}: failed requests");
    let shown = js(
        c,
        "return [...document.querySelectorAll('.err')].map(e => e.textContent.trim()).filter(t => t);",
    )
    .await;
    assert_eq!(shown, json!([]), "{page}: errors on the page");
}

/// ChromeDriver on a free port and a headless Chromium session through it.
async fn browser(
    chromium: &std::path::Path,
    chromedriver: &std::path::Path,
    profile: &std::path::Path,
) -> (Guard, Client) {
    let port = free_port();
    let driver = Guard(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caps = json!({"browserName": "chrome", "goog:chromeOptions": {
        "binary": chromium,
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1400,1000", format!("--user-data-dir={}", profile.display()),
        ],
    }});
    let c = Client::start(&format!("http://127.0.0.1:{port}"), caps)
        .await
        .expect("a Chromium session");
    (driver, c)
}

/// `up` = 1 for `n` instances in `dcs` datacenters, by remote_write.
fn write_up(base: &str, n: usize, dcs: usize) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let series: Vec<_> = (0..n)
        .map(|i| {
            (
                vec![
                    ("__name__", "up".to_owned()),
                    ("datacenter", format!("dc{}", i % dcs + 1)),
                    ("instance", format!("host-{i:05}:9100")),
                    ("job", "node".to_owned()),
                ],
                t,
                1.0,
            )
        })
        .collect();
    assert!(
        crate::util::remote_write(base, &series),
        "remote_write refused"
    );
}

#[test]
fn the_heat_map_draws_ten_thousand_hosts() {
    let (Some(chromium), Some(chromedriver)) = (peer("chromium"), peer("chromedriver")) else {
        return;
    };
    let n = fleetsim::env("TIERMON_DASH_CELLS", 10_000) as usize;
    let dir = tempfile::tempdir().unwrap();
    let s = Tiermon::start(
        "primary",
        Some(&format!(
            "[primary]\ndata = \"{}\"\n",
            dir.path().join("data").display()
        )),
        &[],
    );
    write_up(&s.url(""), n, 4);
    let rt = runtime();
    rt.block_on(async {
        let (_driver, c) = browser(&chromium, &chromedriver, &dir.path().join("profile")).await;
        c.goto(&s.url("/#/fleet")).await.unwrap();
        let t = wait_js(&c, "two renders", Duration::from_secs(60), "const t = window.tiermonFleetTimings || []; return t.length >= 2 ? t : null;").await;
        let cells = js(&c, "return Number(document.querySelector('#heat').dataset.cells);").await;
        assert_eq!(cells, json!(n));
        let groups = js(&c, "return fleet.layout.filter(i => i.title !== undefined).map(i => i.title);").await;
        assert_eq!(groups, json!(["dc1", "dc2", "dc3", "dc4"]));
        eprintln!(
            "heat map of {n} cells: first render {:.1} ms (+ {:.1} ms fetching), an update {:.1} ms (+ {:.1} ms fetching)",
            t[0]["drawMs"].as_f64().unwrap(),
            t[0]["fetchMs"].as_f64().unwrap(),
            t[1]["drawMs"].as_f64().unwrap(),
            t[1]["fetchMs"].as_f64().unwrap()
        );
        page_is_clean(&c, "fleet of 10000").await;
        shot(&c, "fleet-10000").await;
        c.close().await.unwrap();
    });
}

#[test]
fn the_dashboard_in_a_real_browser() {
    let (Some(chromium), Some(chromedriver)) = (peer("chromium"), peer("chromedriver")) else {
        return;
    };
    let hosts = fleetsim::env("TIERMON_DASH_HOSTS", 300) as usize;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let fleet = rt
        .block_on(Fleet::start(hosts, 8, free_port()))
        .expect("the fleet simulator binds 127.10.0.x");
    let interval = fleetsim::env("TIERMON_DASH_INTERVAL", 2);
    let scrape = fleet.write_scrape_config(dir.path(), interval);
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: g\n    interval: 1s\n    rules:\n      - alert: HostDown\n        expr: up == 0\n        labels: {severity: critical}\n        annotations: {summary: '{{ $labels.instance }} is down'}\n",
    )
    .unwrap();
    let am = dir.path().join("alertmanager.yml");
    std::fs::write(
        &am,
        "route:\n  receiver: none\n  group_by: [alertname]\n  group_wait: 0s\nreceivers:\n  - name: none\n",
    )
    .unwrap();
    let s = Tiermon::start(
        "secondary",
        Some(&format!(
            "[secondary]\ndatacenter = \"dc1\"\nscrape_config = \"{}\"\ndata = \"{}\"\n[secondary.rules]\nfiles = [\"{}\"]\n[secondary.alertmanager]\nconfig_file = \"{}\"\n",
            scrape.display(),
            dir.path().join("data").display(),
            rules.display(),
            am.display()
        )),
        &[],
    );
    eventually(
        "every host scraped",
        Duration::from_secs(60 + 3 * interval),
        || {
            let body = crate::util::get(&s.url("/api/v1/query?query=count(up)"))?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["data"]["result"][0]["value"][1] == *hosts.to_string()).then_some(())
        },
    );
    let profile = dir.path().join("chromium-profile");
    let base = s.url("");
    rt.block_on(async {
        let (_driver, c) = browser(&chromium, &chromedriver, &profile).await;

        // The heat map: one cell per host, measured.
        c.goto(&format!("{base}/#/fleet")).await.unwrap();
        let n = wait_js(
            &c,
            "the heat map",
            Duration::from_secs(30),
            "const c = document.querySelector('#heat'); return c && Number(c.dataset.cells) > 0 ? Number(c.dataset.cells) : null;",
        )
        .await;
        assert_eq!(n, json!(hosts), "one cell per simulated host");
        let first = wait_js(&c, "a second render", Duration::from_secs(20), "const t = window.tiermonFleetTimings || []; return t.length >= 2 ? t : null;").await;
        eprintln!(
            "heat map of {hosts} cells: first render {:.1} ms (+ {:.1} ms fetching), an update {:.1} ms (+ {:.1} ms fetching)",
            first[0]["drawMs"].as_f64().unwrap(),
            first[0]["fetchMs"].as_f64().unwrap(),
            first[1]["drawMs"].as_f64().unwrap(),
            first[1]["fetchMs"].as_f64().unwrap()
        );
        page_is_clean(&c, "fleet").await;
        shot(&c, "fleet").await;

        // A host goes down: its cell says so within one refresh (5 s) of
        // the scrape that saw it.
        let victim = fleet.hosts[hosts / 2].addr.to_string();
        fleet.hosts[hosts / 2].set_mode(Mode::Error5xx);
        let down = wait_js(
            &c,
            "the cell turning down",
            Duration::from_secs(10 + 2 * interval),
            &format!("const it = fleet.layout.find(i => i.cell && i.cell.instance === '{victim}'); return it && it.cell.state === 'down' ? document.querySelector('#heat').dataset.down : null;"),
        )
        .await;
        assert_eq!(down, json!("1"));
        shot(&c, "fleet-one-down").await;
        // Hovering shows the host; clicking opens its page.
        let hovered = js(&c, &format!(
            "const it = fleet.layout.find(i => i.cell && i.cell.instance === '{victim}');
             const c = document.querySelector('#heat'), r = c.getBoundingClientRect();
             const x = r.left + it.col * 16 + 7, y = r.top + it.row * 16 + 7;
             c.dispatchEvent(new MouseEvent('mousemove', {{clientX: x, clientY: y, bubbles: true}}));
             const text = document.querySelector('#tip').textContent;
             c.dispatchEvent(new MouseEvent('click', {{clientX: x, clientY: y, bubbles: true}}));
             return text;"
        )).await;
        assert!(hovered.as_str().unwrap().contains(&victim), "{hovered}");
        assert!(hovered.as_str().unwrap().contains("down"), "{hovered}");
        let url = c.current_url().await.unwrap();
        assert!(url.contains("#/host/"), "{url}");

        // Every page loads clean.
        let pages = [
            ("host", format!("#/host/{}", fleet.hosts[0].addr)),
            ("explore", "#/explore?q=sum%20by%20(job)%20(up)&range=5m".to_owned()),
            ("alerts", "#/alerts".to_owned()),
            ("hierarchy", "#/hierarchy".to_owned()),
            ("dashboards", "#/dashboards".to_owned()),
            ("datacenter", "#/dash/datacenter".to_owned()),
        ];
        for (name, hash) in pages {
            c.goto(&format!("{base}/{hash}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2500)).await;
            page_is_clean(&c, name).await;
            shot(&c, name).await;
        }
        // Alerts as the alert manager groups them; a silence made and
        // expired from the page.
        c.goto(&format!("{base}/#/alerts")).await.unwrap();
        wait_js(&c, "the HostDown group", Duration::from_secs(15), &format!("return [...document.querySelectorAll('.group')].some(g => g.textContent.includes('alertname=HostDown') && g.textContent.includes('{victim}'));")).await;
        js(&c, &format!("document.querySelector('#sm').value = 'instance=\"{victim}\"'; document.querySelector('#sc').value = 'maintenance'; document.querySelector('#silence').click(); return true;")).await;
        let state = wait_js(&c, "the silence listed", Duration::from_secs(10), "const r = [...document.querySelectorAll('#silences tr')].find(r => r.textContent.includes('maintenance')); return r ? r.cells[0].textContent : null;").await;
        assert_eq!(state, json!("active"));
        wait_js(&c, "the alert suppressed", Duration::from_secs(15), &format!("return [...document.querySelectorAll('.group tr')].some(r => r.textContent.includes('{victim}') && r.textContent.includes('suppressed'));")).await;
        shot(&c, "alerts-silenced").await;
        js(&c, "document.querySelector('button.expire').click(); return true;").await;
        let state = wait_js(&c, "the silence expired", Duration::from_secs(10), "const r = [...document.querySelectorAll('#silences tr')].find(r => r.textContent.includes('maintenance')); return r && r.cells[0].textContent === 'expired' ? 'expired' : null;").await;
        assert_eq!(state, json!("expired"));
        page_is_clean(&c, "alerts after the silence").await;

        // The explorer's table has the query's answer; the URL is shareable.
        c.goto(&format!("{base}/#/explore?q=count(up)&range=5m")).await.unwrap();
        let cell = wait_js(&c, "the explorer's table", Duration::from_secs(10), "const t = document.querySelectorAll('#result td'); return t.length >= 2 ? t[1].textContent : null;").await;
        assert_eq!(cell, json!(hosts.to_string()));
        // The targets view lists the down host with its error.
        c.goto(&format!("{base}/#/hierarchy")).await.unwrap();
        let err = wait_js(&c, "the targets table", Duration::from_secs(10), &format!("const r = [...document.querySelectorAll('#targets tr')].find(r => r.textContent.includes('{victim}')); return r ? r.textContent : null;")).await;
        assert!(err.as_str().unwrap().contains("down"), "{err}");
        c.close().await.unwrap();
    });
    drop(s);
}

/// The dashboard at the global tier: every datacenter's hosts in the heat
/// map, grouped by datacenter; at a primary, grouped by the pair that
/// scrapes them; a primary that stops is shown as a datacenter gone dark.
#[test]
fn the_global_tier_shows_every_datacenter_and_one_gone_dark() {
    let (Some(chromium), Some(chromedriver)) = (peer("chromium"), peer("chromedriver")) else {
        return;
    };
    const HOSTS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let fleet = rt
        .block_on(Fleet::start(2 * HOSTS, 8, free_port()))
        .expect("the fleet simulator binds 127.10.0.x");
    let addr = || format!("127.0.0.1:{}", free_port());
    let (global_at, primary_at) = (addr(), [addr(), addr()]);
    let config = |name: &str, text: String| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        (text, d.join("data"))
    };
    let start = |tier: &str, listen: &str, (text, data): (String, std::path::PathBuf)| {
        Tiermon::start_at(
            tier,
            listen,
            Some(&text),
            &["--data", data.to_str().unwrap()],
        )
    };
    let global = start(
        "global",
        &global_at,
        config(
            "global",
            format!(
                "[global]\nchild_timeout = \"4s\"\nprimaries = {{ dc1 = \"http://{}\", dc2 = \"http://{}\" }}\n",
                primary_at[0], primary_at[1]
            ),
        ),
    );
    let mut primaries = Vec::new();
    let mut secondaries = Vec::new();
    for (d, at) in primary_at.iter().enumerate() {
        let dc = format!("dc{}", d + 1);
        primaries.push(start(
            "primary",
            at,
            config(
                &format!("{dc}-primary"),
                format!(
                    "[primary]\ndatacenter = \"{dc}\"\nchild_timeout = \"4s\"\nwindow_grace = \"2s\"\n[primary.push]\ndestinations = [\"http://{global_at}\"]\nmax_backoff = \"500ms\"\n"
                ),
            ),
        ));
        let scrape = dir.path().join(format!("{dc}-scrape.yml"));
        std::fs::write(
            &scrape,
            fleet.static_scrape_config(d * HOSTS..(d + 1) * HOSTS, 1),
        )
        .unwrap();
        secondaries.push(start(
            "secondary",
            "127.0.0.1:0",
            config(
                &format!("{dc}-secondary"),
                format!(
                    "[secondary]\ndatacenter = \"{dc}\"\nscrape_config = \"{}\"\n[secondary.push]\ndestinations = [\"http://{}\"]\nmax_backoff = \"500ms\"\nexternal_labels = {{ secondary = \"{dc}-pair-1\" }}\n",
                    scrape.display(),
                    primary_at[d]
                ),
            ),
        ));
    }
    // The global tier has the hosts once the first one-minute window of
    // both datacenters has closed.
    eventually(
        "every host at the global tier",
        Duration::from_secs(150),
        || {
            let body = crate::util::get(&global.url("/api/v1/query?query=count(up)"))?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["data"]["result"][0]["value"][1] == *(2 * HOSTS).to_string()).then_some(())
        },
    );
    let profile = dir.path().join("chromium-profile");
    rt.block_on(async {
        let (_driver, c) = browser(&chromium, &chromedriver, &profile).await;
        c.goto(&global.url("/#/fleet")).await.unwrap();
        let n = wait_js(&c, "the global heat map", Duration::from_secs(30), "const c = document.querySelector('#heat'); return c && Number(c.dataset.cells) > 0 ? Number(c.dataset.cells) : null;").await;
        assert_eq!(n, json!(2 * HOSTS));
        let groups = js(&c, "return fleet.layout.filter(i => i.title !== undefined).map(i => i.title);").await;
        assert_eq!(groups, json!(["dc1", "dc2"]));
        page_is_clean(&c, "global fleet").await;
        shot(&c, "global-fleet").await;
        // Nested: by datacenter, then by the pair that scrapes the hosts.
        c.goto(&global.url("/#/fleet?group=datacenter,secondary")).await.unwrap();
        let groups = wait_js(&c, "nested groups", Duration::from_secs(30), "const g = (fleet.layout || []).filter(i => i.title !== undefined).map(i => i.title); return g.length && g[0].includes('/') ? g : null;").await;
        assert_eq!(groups, json!(["dc1 / dc1-pair-1", "dc2 / dc2-pair-1"]));

        // At dc1's primary, grouped by the pair that scrapes the hosts.
        c.goto(&primaries[0].url("/#/fleet?group=secondary")).await.unwrap();
        let groups = wait_js(&c, "groups by secondary", Duration::from_secs(30), "const g = (fleet.layout || []).filter(i => i.title !== undefined).map(i => i.title); return g.length ? g : null;").await;
        assert_eq!(groups, json!(["dc1-pair-1"]));
        page_is_clean(&c, "primary fleet by secondary").await;
        shot(&c, "primary-fleet-by-secondary").await;

        // dc2's primary stops: the global tier's hierarchy page says dark.
        primaries.pop().unwrap().kill();
        c.goto(&global.url("/#/hierarchy")).await.unwrap();
        let row = wait_js(&c, "dc2 dark", Duration::from_secs(40), "const r = [...document.querySelectorAll('tr')].find(r => r.textContent.includes('primary/dc2') && r.textContent.includes('datacenter dark')); return r ? r.textContent : null;").await;
        assert!(row.as_str().unwrap().contains("primary/dc2"), "{row}");
        let dc1 = js(&c, "const r = [...document.querySelectorAll('tr')].find(r => r.textContent.includes('primary/dc1')); return r ? r.textContent : '';").await;
        assert!(dc1.as_str().unwrap().contains("reporting"), "{dc1}");
        // Each secondary once, as the global tier saw it (through its
        // primary), not again from the primary's relayed records.
        let rows = js(&c, "return [...document.querySelectorAll('tr')].filter(r => r.textContent.includes('secondary/dc1/')).map(r => r.textContent);").await;
        assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
        assert!(rows[0].as_str().unwrap().contains("primary/dc1"), "{rows}");
        page_is_clean(&c, "global hierarchy").await;
        shot(&c, "global-hierarchy-dc2-dark").await;
        c.close().await.unwrap();
    });
    drop(secondaries);
}
