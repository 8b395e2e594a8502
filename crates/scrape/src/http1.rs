//! Scrapes of plain-HTTP targets on a connection that the target's loop
//! keeps between scrapes as a bare socket.
//!
//! A pooled HTTP client keeps each idle keep-alive connection with its
//! buffers: hyper's read buffer grows to the largest page read (32 KiB for
//! a node exporter's) and its write buffer is 8 KiB, so 5,000 targets hold
//! about 55 KB each, more than 100 B per series of a 500-series target,
//! all the time, for a socket used once every 15 s. Here a scrape runs
//! hyper's HTTP/1.1 exchange over the socket and takes the socket back
//! when the answer is read ([`hyper::client::conn::http1::Connection::without_shutdown`]):
//! the buffers live for the scrape only, and the next scrape reuses the
//! same TCP connection, as Prometheus does. A request on a reused
//! connection that the target closed meanwhile is sent once more on a new
//! one (a GET, safe to repeat).
//!
//! HTTPS targets, and redirects, go through the job's general client.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::discovery::dns::HostResolver;

/// A target's connection between scrapes: the socket alone.
#[derive(Debug, Default)]
pub(crate) struct Idle(Option<TcpStream>);

/// A page, or a redirect for the caller to follow.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Status 200: the body (decoded when it came gzipped) and its type.
    Page {
        body: Vec<u8>,
        content_type: Option<HeaderValue>,
    },
    /// A redirect, to be followed by the general client.
    Redirect,
}

/// A failed exchange; `retry` when nothing came back on a reused
/// connection, which the target may have closed while it was idle.
struct Failure {
    msg: String,
    retry: bool,
}

/// GETs `url` (plain HTTP) with `headers`, on the kept connection when
/// there is one. `limit` bounds the decoded body (0: none); `follow` says
/// whether a redirect is followed (else it is an error, as any status
/// but 200).
pub(crate) async fn get(
    idle: &mut Idle,
    url: &url::Url,
    headers: &HeaderMap,
    limit: u64,
    follow: bool,
) -> Result<Answer, String> {
    let (io, reused) = match idle.0.take() {
        Some(io) => (io, true),
        None => (connect(url).await?, false),
    };
    let (status, page, keep) = match exchange(io, url, headers, limit).await {
        Ok(x) => x,
        Err(f) if reused && f.retry => exchange(connect(url).await?, url, headers, limit)
            .await
            .map_err(|f| f.msg)?,
        Err(f) => return Err(f.msg),
    };
    idle.0 = keep;
    if let Some((body, content_type)) = page {
        Ok(Answer::Page { body, content_type })
    } else if follow && status.is_redirection() {
        Ok(Answer::Redirect)
    } else {
        Err(format!("server returned HTTP status {status}"))
    }
}

/// Opens a TCP connection to `url`'s host, trying its addresses in turn.
async fn connect(url: &url::Url) -> Result<TcpStream, String> {
    let port = url.port_or_known_default().unwrap_or(80);
    let ips: Vec<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(a)) => vec![a.into()],
        Some(url::Host::Ipv6(a)) => vec![a.into()],
        Some(url::Host::Domain(d)) if HostResolver::configured().is_some() => {
            HostResolver::resolve(d).await?
        }
        Some(url::Host::Domain(d)) => tokio::net::lookup_host((d, port))
            .await
            .map_err(|e| format!("resolving {d}: {e}"))?
            .map(|a| a.ip())
            .collect(),
        None => return Err(format!("{url} names no host")),
    };
    let mut last = format!("no address for {}", url.host_str().unwrap_or_default());
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Without it, a request's last segment may wait for an ACK.
                s.set_nodelay(true)
                    .map_err(|e| format!("connecting to {addr}: {e}"))?;
                return Ok(s);
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

/// A page's body and type.
type Body = (Vec<u8>, Option<HeaderValue>);

/// One request and its answer on `io`: the status, the page when the
/// status is 200 (the body of any other is not read), and the socket back
/// when the connection may serve the next scrape.
async fn exchange(
    io: TcpStream,
    url: &url::Url,
    headers: &HeaderMap,
    limit: u64,
) -> Result<(StatusCode, Option<Body>, Option<TcpStream>), Failure> {
    let fail = |what: &str, e: hyper::Error, retry: bool| Failure {
        msg: describe(what, &e),
        retry,
    };
    let mut req = Request::get(&url[url::Position::BeforePath..url::Position::AfterQuery])
        .header(
            HOST,
            &url[url::Position::BeforeHost..url::Position::AfterPort],
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure {
            msg: format!("request for {url}: {e}"),
            retry: false,
        })?;
    req.headers_mut()
        .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    let (mut send, conn) = http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| fail("starting the exchange", e, false))?;
    let work = async move {
        // Whatever fails before the answer's head may be a connection the
        // target closed while it was idle.
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| fail("sending the request", e, true))?;
        let (head, mut body) = resp.into_parts();
        if head.status != StatusCode::OK {
            return Ok((head, None));
        }
        let gzip = head
            .headers
            .get(CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let capacity = body_capacity(&head.headers);
        let mut page = Page::new(gzip, capacity);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| fail("reading the body", e, false))?;
            if let Ok(data) = frame.into_data() {
                page.push(&data, limit)
                    .map_err(|msg| Failure { msg, retry: false })?;
            }
        }
        let body = page
            .finish(limit)
            .map_err(|msg| Failure { msg, retry: false })?;
        let content_type = head.headers.get(CONTENT_TYPE).cloned();
        Ok((head, Some((body, content_type))))
        // `send` drops here: the connection has nothing more to do and
        // hands its socket back.
    };
    let (answer, parts) = tokio::join!(work, conn.without_shutdown());
    let (head, page) = answer?;
    let keep = match parts {
        // A body left unread, or bytes after the answer: the connection is
        // not in a known state.
        Ok(p) if p.read_buf.is_empty() && page.is_some() && keep_alive(&head) => {
            Some(p.io.into_inner())
        }
        _ => None,
    };
    Ok((head.status, page, keep))
}

/// Whether the target lets the connection serve another request.
fn keep_alive(head: &http::response::Parts) -> bool {
    let says = |token: &str| {
        head.headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    match head.version {
        Version::HTTP_11 => !says("close"),
        Version::HTTP_10 => says("keep-alive"),
        _ => false,
    }
}

/// Room for the body as its length announces, up to 16 MiB (64 KiB when
/// it does not say).
fn body_capacity(headers: &HeaderMap) -> usize {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(64 << 10, |n| n.min(16 << 20) as usize)
}

/// A body being read: kept as it comes, or gunzipped as it comes, so that
/// the size limit applies to the decoded page (as Prometheus'
/// `body_size_limit` does) without holding more than the limit.
enum Page {
    Plain(Vec<u8>),
    /// Boxed: the decoder's state is ten times the size of a `Vec`.
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
}

impl Page {
    fn new(gzip: bool, capacity: usize) -> Self {
        if gzip {
            // A gzipped page is typically a tenth of the decoded one.
            Page::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::with_capacity(
                capacity.saturating_mul(8).min(16 << 20),
            ))))
        } else {
            Page::Plain(Vec::with_capacity(capacity))
        }
    }

    fn push(&mut self, data: &[u8], limit: u64) -> Result<(), String> {
        let len = match self {
            Page::Plain(v) => {
                v.extend_from_slice(data);
                v.len()
            }
            Page::Gzip(d) => {
                d.write_all(data)
                    .and_then(|()| d.flush())
                    .map_err(|e| format!("decoding the gzipped body: {e}"))?;
                d.get_ref().len()
            }
        };
        within(len, limit)
    }

    fn finish(self, limit: u64) -> Result<Vec<u8>, String> {
        let page = match self {
            Page::Plain(v) => v,
            Page::Gzip(d) => d
                .finish()
                .map_err(|e| format!("decoding the gzipped body: {e}"))?,
        };
        within(page.len(), limit)?;
        Ok(page)
    }
}

/// Whether a page of `len` bytes is within `limit` (0: none), as
/// Prometheus' `body_size_limit` says.
pub(crate) fn within(len: usize, limit: u64) -> Result<(), String> {
    if limit > 0 && len as u64 > limit {
        return Err(format!(
            "body size limit exceeded: more than {limit} bytes (body_size_limit)"
        ));
    }
    Ok(())
}

/// `what` failed, with the error's causes.
fn describe(what: &str, e: &hyper::Error) -> String {
    format!("{what}: {}", crate::client::with_causes(e))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A target on loopback that answers every request with `answer`,
    /// closing each connection after `per_conn` answers; counts the
    /// connections it accepted and keeps the requests' heads.
    struct Server {
        url: url::Url,
        conns: Arc<AtomicUsize>,
        heads: Arc<parking_lot::Mutex<Vec<String>>>,
    }

    async fn serve(answer: Vec<u8>, per_conn: usize) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            url::Url::parse(&format!("http://{}/metrics?x=1", l.local_addr().unwrap())).unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (c, h) = (conns.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (answer, h) = (answer.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_conn {
                        // Read one request head.
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut b = [0u8; 1024];
                            match s.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        h.lock()
                            .push(String::from_utf8_lossy(&buf[..end]).into_owned());
                        buf.drain(..end);
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                    // Closed: as a target whose idle timeout passed.
                });
            }
        });
        Server { url, conns, heads }
    }

    fn ok(body: &[u8], extra: &str) -> Vec<u8> {
        let mut a = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        )
        .into_bytes();
        a.extend_from_slice(body);
        a
    }

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("text/plain"));
        h
    }

    async fn page(idle: &mut Idle, url: &url::Url, limit: u64) -> Result<Vec<u8>, String> {
        match get(idle, url, &headers(), limit, true).await? {
            Answer::Page { body, .. } => Ok(body),
            Answer::Redirect => Err("redirect".into()),
        }
    }

    #[tokio::test]
    async fn scrapes_reuse_one_connection_and_send_the_request_head() {
        let srv = serve(ok(b"up 1\n", ""), usize::MAX).await;
        let mut idle = Idle::default();
        for _ in 0..3 {
            assert_eq!(page(&mut idle, &srv.url, 0).await.unwrap(), b"up 1\n");
            assert!(idle.0.is_some(), "the socket is kept between scrapes");
        }
        assert_eq!(srv.conns.load(Ordering::SeqCst), 1);
        let heads = srv.heads.lock();
        assert_eq!(heads.len(), 3);
        let h = heads[0].to_ascii_lowercase();
        assert!(h.starts_with("get /metrics?x=1 http/1.1\r\n"), "{h}");
        assert!(
            h.contains(&format!(
                "host: {}\r\n",
                &srv.url[url::Position::BeforeHost..url::Position::AfterPort]
            )),
            "{h}"
        );
        assert!(h.contains("accept: text/plain\r\n"), "{h}");
    }

    #[tokio::test]
    async fn a_connection_the_target_closed_is_replaced_without_a_failed_scrape() {
        // One answer per connection, no `Connection: close`: the client
        // keeps a socket the target then closes.
        let srv = serve(ok(b"up 1\n", ""), 1).await;
        let mut idle = Idle::default();
        for _ in 0..3 {
            assert_eq!(page(&mut idle, &srv.url, 0).await.unwrap(), b"up 1\n");
            // Let the close arrive before the next scrape.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(srv.conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connection_close_and_http_1_0_are_not_kept() {
        let srv = serve(ok(b"a 1\n", "Connection: close\r\n"), 1).await;
        let mut idle = Idle::default();
        assert_eq!(page(&mut idle, &srv.url, 0).await.unwrap(), b"a 1\n");
        assert!(idle.0.is_none());
        let srv = serve(
            b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nb 1\n".to_vec(),
            1,
        )
        .await;
        assert_eq!(page(&mut idle, &srv.url, 0).await.unwrap(), b"b 1\n");
        assert!(idle.0.is_none());
    }

    #[tokio::test]
    async fn gzip_is_decoded_and_the_limit_applies_to_the_decoded_page() {
        let text = "node_load1 0.5\n".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 1000);
        let srv = serve(ok(&gz, "Content-Encoding: gzip\r\n"), usize::MAX).await;
        let mut idle = Idle::default();
        assert_eq!(page(&mut idle, &srv.url, 0).await.unwrap(), text.as_bytes());
        assert_eq!(
            page(&mut idle, &srv.url, text.len() as u64).await.unwrap(),
            text.as_bytes()
        );
        let e = page(&mut idle, &srv.url, 1000)
            .await
            .err()
            .unwrap_or_default();
        assert!(e.contains("body_size_limit") && e.contains("1000"), "{e}");
        assert!(idle.0.is_none(), "a page cut short leaves no connection");
        // Plain pages are limited too.
        let srv = serve(ok(text.as_bytes(), ""), usize::MAX).await;
        let e = page(&mut idle, &srv.url, 100)
            .await
            .err()
            .unwrap_or_default();
        assert!(e.contains("body_size_limit"), "{e}");
        // A damaged gzip stream is an error that says so.
        let srv = serve(
            ok(b"not gzip at all", "Content-Encoding: gzip\r\n"),
            usize::MAX,
        )
        .await;
        let e = page(&mut idle, &srv.url, 0).await.unwrap_err();
        assert!(e.contains("gzip"), "{e}");
    }

    #[tokio::test]
    async fn statuses_redirects_and_refused_connections_are_named() {
        let srv = serve(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom".to_vec(),
            usize::MAX,
        )
        .await;
        let mut idle = Idle::default();
        let e = page(&mut idle, &srv.url, 0).await.unwrap_err();
        assert_eq!(e, "server returned HTTP status 500 Internal Server Error");
        let srv = serve(
            b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n".to_vec(),
            usize::MAX,
        )
        .await;
        assert!(matches!(
            get(&mut idle, &srv.url, &headers(), 0, true).await,
            Ok(Answer::Redirect)
        ));
        let e = get(&mut idle, &srv.url, &headers(), 0, false)
            .await
            .unwrap_err();
        assert_eq!(e, "server returned HTTP status 302 Found");
        // Nothing listens there any more.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = url::Url::parse(&format!("http://{}/metrics", l.local_addr().unwrap())).unwrap();
        drop(l);
        let e = page(&mut idle, &url, 0).await.unwrap_err();
        assert!(e.starts_with("connecting to 127.0.0.1:"), "{e}");
    }
}
