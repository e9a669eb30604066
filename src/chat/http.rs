//! The HTTP/1.1 connection layer of `serve`, written for hostile clients; `httparse` parses
//! each request head, and this module owns the limits around it.
//!
//! - A body is read in small pieces up to a hard cap; a `Content-Length` over the cap is refused
//!   with 413 before a byte of the body is read, and nothing is ever allocated from the
//!   header's number (tiny_http did: one request with a huge `Content-Length` aborted the
//!   process).
//! - The request head is bounded in size, and each request must arrive whole within a deadline
//!   (slow clients cannot hold a connection forever); an idle kept-alive connection is closed.
//! - Each connection has a thread, up to a limit; a connection beyond it gets 503 with
//!   `Retry-After` at once.
//! - Chunked request bodies are refused (411): OpenAI clients send a `Content-Length`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line and headers together, in bytes.
    pub max_head: usize,
    /// Request body, in bytes.
    pub max_body: u64,
    /// Time allowed to send one request, head and body, from its first byte.
    pub request_timeout: Duration,
    /// Time a kept-alive connection may stay silent between requests.
    pub idle_timeout: Duration,
    /// Connections handled at once.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 16 << 10,
            max_body: 16 << 20,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
            connections: 64,
        }
    }
}

/// Seconds a refused client is told to wait (`Retry-After`).
pub const RETRY_AFTER_S: u32 = 1;

const MAX_HEADERS: usize = 100;

/// One request, read whole.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The target without its query string.
    pub path: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where the handler writes its one answer.
pub struct Reply<'a> {
    stream: &'a mut TcpStream,
    keep_alive: bool,
    answered: bool,
}

impl Reply<'_> {
    /// A whole answer with a JSON body.
    pub fn json(&mut self, status: u16, body: &serde_json::Value) {
        self.send(status, "application/json", &[], body.to_string().as_bytes());
    }

    /// A whole answer; a failed write only means the client left.
    pub fn send(&mut self, status: u16, content_type: &str, extra: &[(&str, &str)], body: &[u8]) {
        self.answered = true;
        if write_response(
            self.stream,
            status,
            content_type,
            extra,
            body,
            self.keep_alive,
        )
        .is_err()
        {
            self.keep_alive = false;
        }
    }

    /// Starts a chunked answer (for server-sent events) and hands out the stream to write the
    /// chunks to; the caller ends it with a zero-length chunk.
    pub fn chunked(&mut self, status: u16, content_type: &str) -> io::Result<&mut TcpStream> {
        self.answered = true;
        // Any failure part way through leaves the connection unusable.
        self.keep_alive = false;
        write!(
            self.stream,
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
            reason(status)
        )?;
        Ok(self.stream)
    }

    /// Says the chunked answer ended cleanly, so the connection can serve another request.
    pub fn chunked_done(&mut self) {
        self.keep_alive = true;
    }
}

/// Handles one request; called on the connection's thread.
pub type Handler = dyn Fn(&Request, &mut Reply) + Send + Sync;

/// Open connections: a handle to shut each down, and its thread.
type Open = Mutex<HashMap<u64, (TcpStream, JoinHandle<()>)>>;

/// A listening server; dropping it closes every connection and waits for their threads.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    open: Arc<Open>,
}

impl HttpServer {
    pub fn bind(addr: &str, limits: Limits, handler: Arc<Handler>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        // Request bodies of many megabytes must leave nothing resident behind them.
        crate::fsutil::large_blocks_to_the_system();
        // Polled, so that dropping the server stops accepting.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(HashMap::new()));
        let accept = {
            let (stop, open) = (stop.clone(), open.clone());
            std::thread::Builder::new()
                .name("http-accept".into())
                .spawn(move || accept_loop(listener, limits, handler, &stop, &open))?
        };
        Ok(Self {
            addr,
            stop,
            accept: Some(accept),
            open,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server is stopped (for the command, never).
    pub fn wait(mut self) {
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let open: Vec<_> = self.open.lock().unwrap().drain().collect();
        for (_, (stream, thread)) in open {
            // Wakes a thread waiting for the client.
            let _ = stream.shutdown(Shutdown::Both);
            let _ = thread.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    handler: Arc<Handler>,
    stop: &AtomicBool,
    open: &Arc<Open>,
) {
    let ids = AtomicU64::new(0);
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            // Out of file descriptors and the like: wait, do not spin.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let mut open_now = open.lock().unwrap();
        open_now.retain(|_, (_, t)| !t.is_finished());
        if open_now.len() >= limits.connections {
            drop(open_now);
            busy(stream);
            continue;
        }
        let Ok(watch) = stream.try_clone() else {
            continue;
        };
        let id = ids.fetch_add(1, Ordering::SeqCst);
        let (limits, handler) = (limits.clone(), handler.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("http-{id}"))
            .spawn(move || connection(stream, &limits, &*handler));
        if let Ok(t) = spawned {
            open_now.insert(id, (watch, t));
        }
    }
}

/// Refuses a connection beyond the limit without waiting for it.
fn busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let body = serde_json::json!({"error": {
        "message": "The server is busy: too many connections. Retry shortly.",
        "type": "server_error", "param": null, "code": "server_busy"}})
    .to_string();
    let retry = RETRY_AFTER_S.to_string();
    let _ = write_response(
        &mut stream,
        503,
        "application/json",
        &[("Retry-After", &retry)],
        body.as_bytes(),
        false,
    );
    // Reading what already arrived keeps the kernel from resetting the connection (which can
    // make the client lose the answer) without waiting for more.
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// How reading a request ended, short of a request.
#[derive(Debug)]
enum ReadError {
    /// The client closed the connection, or stayed silent too long: nothing to answer.
    Gone,
    /// Answer this and close the connection.
    Refuse(u16, String),
}

fn connection(stream: TcpStream, limits: &Limits, handler: &Handler) {
    let _ = stream.set_write_timeout(Some(limits.request_timeout));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::with_capacity(8 << 10, stream);
    loop {
        match read_request(&mut input, limits) {
            Ok((request, keep_alive)) => {
                let mut reply = Reply {
                    stream: &mut out,
                    keep_alive,
                    answered: false,
                };
                handler(&request, &mut reply);
                if !reply.answered {
                    reply.json(500, &error_body(500, "the request was not answered"));
                }
                let keep = reply.keep_alive;
                let big = request.body.len() > 1 << 20;
                drop(request);
                if big {
                    crate::fsutil::return_freed_memory();
                }
                if !keep {
                    break;
                }
            }
            Err(ReadError::Gone) => break,
            Err(ReadError::Refuse(status, message)) => {
                let retry = RETRY_AFTER_S.to_string();
                let extra: &[(&str, &str)] = if status == 503 {
                    &[("Retry-After", &retry)]
                } else {
                    &[]
                };
                let body = error_body(status, &message).to_string();
                let _ = write_response(
                    &mut out,
                    status,
                    "application/json",
                    extra,
                    body.as_bytes(),
                    false,
                );
                crate::fsutil::return_freed_memory();
                linger(&out);
                break;
            }
        }
    }
    let _ = out.shutdown(Shutdown::Both);
}

/// Closes the sending side, then reads (and drops) a bounded amount of what the client is
/// still sending, so that its unread request does not reset the connection before it reads
/// our answer.
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 8192];
    let mut left = 1usize << 20;
    let mut s = stream;
    while left > 0 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let _ = s.set_read_timeout(Some(deadline - now));
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// An OpenAI-shaped error body.
pub fn error_body(status: u16, message: &str) -> serde_json::Value {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

/// Reads one request: its head within `max_head` bytes, its body within `max_body`, all within
/// `request_timeout` of its first byte. Returns it and whether the connection may be kept.
fn read_request(
    input: &mut BufReader<TcpStream>,
    limits: &Limits,
) -> Result<(Request, bool), ReadError> {
    // Wait for the first byte with the idle timeout, then the deadline starts.
    input
        .get_ref()
        .set_read_timeout(Some(limits.idle_timeout))
        .map_err(|_| ReadError::Gone)?;
    match input.fill_buf() {
        Ok([]) | Err(_) => return Err(ReadError::Gone),
        Ok(_) => {}
    }
    let deadline = Instant::now() + limits.request_timeout;
    let head = read_head(input, limits.max_head, deadline)?;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let malformed =
        |what: String| ReadError::Refuse(400, format!("malformed request head: {what}"));
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(malformed("incomplete".into())),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::Refuse(
                431,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => return Err(malformed(e.to_string())),
    }
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(malformed("incomplete".into()));
    };
    if !target.starts_with('/') {
        return Err(malformed(format!("target {target:?} is not a path")));
    }
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| malformed(format!("header {} is not UTF-8", h.name)))?;
        headers.push((h.name.to_string(), value.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        headers,
        body: Vec::new(),
    };
    let close = request
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let keep_alive = minor == 1 && !close;
    if request.header("Transfer-Encoding").is_some() {
        return Err(ReadError::Refuse(
            411,
            "chunked request bodies are not supported: send the body with a Content-Length".into(),
        ));
    }
    let length = match request.header("Content-Length") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            ReadError::Refuse(400, format!("Content-Length is not a number: {v:?}"))
        })?,
    };
    if length > limits.max_body {
        return Err(ReadError::Refuse(
            413,
            format!(
                "the request body ({length} bytes) is larger than the limit of {} bytes",
                limits.max_body
            ),
        ));
    }
    if length > 0
        && request
            .header("Expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        let _ = input.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    request.body = read_body(input, length, deadline)?;
    Ok((request, keep_alive))
}

/// Sets the socket's timeout to what is left before `deadline`.
fn until(input: &BufReader<TcpStream>, deadline: Instant) -> Result<(), ReadError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ReadError::Refuse(
            408,
            "the request took too long to arrive".into(),
        ));
    }
    input
        .get_ref()
        .set_read_timeout(Some(left))
        .map_err(|_| ReadError::Gone)
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The request head up to and including its blank line, at most `max_head` bytes; body bytes
/// that arrived with it stay in `input`.
fn read_head(
    input: &mut BufReader<TcpStream>,
    max_head: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ReadError> {
    let mut head = Vec::new();
    loop {
        until(input, deadline)?;
        let buf = match input.fill_buf() {
            Ok([]) => return Err(ReadError::Gone),
            Ok(b) => b,
            Err(e) if timed_out(&e) => {
                return Err(ReadError::Refuse(
                    408,
                    "the request took too long to arrive".into(),
                ))
            }
            Err(_) => return Err(ReadError::Gone),
        };
        let old = head.len();
        head.extend_from_slice(buf);
        // The terminator may straddle two reads: look back three bytes.
        let end = head_end(&head, old.saturating_sub(3));
        let used = end.map_or(head.len(), |e| e) - old;
        input.consume(used);
        head.truncate(old + used);
        if head.len() > max_head {
            return Err(ReadError::Refuse(
                431,
                "the request head is too large".into(),
            ));
        }
        if end.is_some() {
            return Ok(head);
        }
    }
}

/// Where the head ends (after its `\r\n\r\n`, or the bare `\n\n` httparse also accepts).
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find_map(|i| {
        let rest = &bytes[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Exactly `length` bytes (already checked against the cap), in pieces as they arrive.
fn read_body(
    input: &mut BufReader<TcpStream>,
    length: u64,
    deadline: Instant,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    let mut piece = [0u8; 64 << 10];
    while (body.len() as u64) < length {
        until(input, deadline)?;
        let want = piece.len().min((length - body.len() as u64) as usize);
        match input.read(&mut piece[..want]) {
            // The client closed before sending what it announced: nobody to answer.
            Ok(0) => return Err(ReadError::Gone),
            Ok(n) => body.extend_from_slice(&piece[..n]),
            Err(e) if timed_out(&e) => {
                return Err(ReadError::Refuse(
                    408,
                    "the request body took too long to arrive".into(),
                ))
            }
            Err(_) => return Err(ReadError::Gone),
        }
    }
    Ok(body)
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_response(
    w: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(limits: Limits) -> HttpServer {
        let handler: Arc<Handler> = Arc::new(|rq: &Request, reply: &mut Reply| {
            let body = serde_json::json!({"path": rq.path, "bytes": rq.body.len()});
            reply.json(200, &body)
        });
        HttpServer::bind("127.0.0.1:0", limits, handler).unwrap()
    }

    /// Sends raw bytes, then reads until the server closes or 2 s pass.
    fn exchange(s: &HttpServer, raw: &[u8]) -> String {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(raw).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn keeps_alive_and_reads_bodies() {
        let s = server(Limits::default());
        let got = exchange(
            &s,
            b"POST /a?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(got.contains(r#"{"bytes":3,"path":"/a"}"#), "{got}");
        assert!(got.contains(r#"{"bytes":0,"path":"/b"}"#), "{got}");
    }

    #[test]
    fn oversize_and_malformed_requests_are_refused() {
        let limits = Limits {
            max_body: 100,
            max_head: 200,
            ..Limits::default()
        };
        let s = server(limits);
        for (raw, status) in [
            (
                &b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nab"[..],
                "413",
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "411",
            ),
            (b"GARBAGE\r\n\r\n", "400"),
            (b"no colon here HTTP/1.1\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nnocolon\r\n\r\n", "400"),
        ] {
            let got = exchange(&s, raw);
            assert!(got.starts_with(&format!("HTTP/1.1 {status}")), "{got}");
        }
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
        assert!(exchange(&s, long.as_bytes()).starts_with("HTTP/1.1 431"));
    }

    #[test]
    fn slow_requests_time_out_and_extra_connections_are_told_to_retry() {
        let limits = Limits {
            request_timeout: Duration::from_millis(300),
            connections: 1,
            ..Limits::default()
        };
        let s = server(limits);
        let mut slow = TcpStream::connect(s.addr()).unwrap();
        slow.write_all(b"POST / HTTP/1.1\r\nContent-Le").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let got = exchange(&s, b"GET / HTTP/1.1\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        assert!(got.contains("Retry-After: 1"), "{got}");
        let mut rest = String::new();
        slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = slow.read_to_string(&mut rest);
        assert!(rest.starts_with("HTTP/1.1 408"), "{rest}");
        // The slot is free again once the client hangs up (the server lingers for it).
        drop(slow);
        std::thread::sleep(Duration::from_millis(100));
        assert!(exchange(&s, b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n").contains("200 OK"));
    }
}
