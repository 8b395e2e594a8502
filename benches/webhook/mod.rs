//! A minimal HTTP/1.1 server for webhook receivers in tests and benches:
//! every request's body is handed to a callback and answered 200, with
//! keep-alive. Shared through `#[path]`, like the fleet simulator.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

/// Serves `l` on background threads, calling `on_body` with each body.
pub fn serve(l: TcpListener, on_body: impl Fn(&[u8]) + Send + Sync + 'static) {
    let on_body = Arc::new(on_body);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let f = on_body.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            f(&buf[end + 4..end + 4 + len]);
                            buf.drain(..end + 4 + len);
                            let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                            continue;
                        }
                    }
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
}
