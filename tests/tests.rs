//! Integration tests: real `tiermon` processes on loopback, spoken to over
//! the real protocols, next to real peers (node_exporter, promtool) where
//! the test script installed them.

mod agent;
mod alerting;
mod blob;
mod check;
mod dashboard;
mod discovery;
mod eviction;
#[path = "../benches/fleetsim/mod.rs"]
mod fleetsim;
mod hierarchy;
mod node_exporter;
mod scrape;
mod secondary;
mod storage;
mod up;
mod util;
#[path = "../benches/webhook/mod.rs"]
mod webhook;
