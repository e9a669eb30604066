//! `socratune serve`: an OpenAI-compatible HTTP server (`POST /v1/chat/completions`, plain or
//! streamed as server-sent events, and `GET /v1/models`).
//!
//! One worker thread owns the model and answers one request at a time; HTTP threads validate
//! requests, render prompts, send jobs over a channel and relay the text back as it comes.
//! Requests beyond what is being answered wait in the channel (and, beyond the HTTP threads,
//! in the listener's queue); none is dropped.

use super::api::{self, ApiError, ChatRequest};
use super::prompt::PromptFormat;
use super::stop::StopStrings;
use super::{reply, stop_tokens, ChatError, Result};
use crate::dataset::ChatTokenizer;
use crate::model::generate::{SamplingParams, Stop};
use crate::model::Gemma2;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The largest request body read.
const MAX_BODY: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model id clients ask for.
    pub name: String,
    /// `host:port`; port 0 picks a free one.
    pub addr: String,
    /// How a history becomes a prompt (the whole history, no prefix, by default).
    pub format: PromptFormat,
    /// HTTP threads.
    pub threads: usize,
}

/// What the worker is asked to do.
struct Job {
    prompt: Vec<u32>,
    params: SamplingParams,
    stop: Vec<String>,
    events: Sender<Event>,
}

/// What the worker sends back for a job.
enum Event {
    Text(String),
    Done {
        finish: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// What the HTTP threads share.
struct Shared {
    name: String,
    format: PromptFormat,
    tok: Arc<ChatTokenizer>,
    context: usize,
    created: u64,
    jobs: Sender<Job>,
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    http: Vec<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Server {
    /// Binds `opts.addr` and starts answering.
    pub fn start(model: Gemma2, tok: ChatTokenizer, opts: ServeOptions) -> Result<Self> {
        let listen = |message: String| ChatError::Listen {
            addr: opts.addr.clone(),
            message,
        };
        let http =
            Arc::new(tiny_http::Server::http(&opts.addr).map_err(|e| listen(e.to_string()))?);
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| listen("not an IP address".into()))?;
        let tok = Arc::new(tok);
        let stops = stop_tokens(&model.cfg, &tok);
        let context = model.cfg.max_position_embeddings;
        let (jobs, queue) = mpsc::channel::<Job>();
        let worker = {
            let tok = tok.clone();
            std::thread::Builder::new()
                .name("model".into())
                .spawn(move || work(model, &tok, &stops, queue))?
        };
        let shared = Arc::new(Shared {
            name: opts.name,
            format: opts.format,
            context,
            tok,
            created: now(),
            jobs,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..opts.threads.max(1) {
            let (http, shared, stop) = (http.clone(), shared.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || {
                        while !stop.load(Ordering::SeqCst) {
                            match http.recv_timeout(Duration::from_millis(100)) {
                                Ok(Some(rq)) => handle(&shared, rq),
                                Ok(None) => {}
                                Err(_) => break,
                            }
                        }
                    })?,
            );
        }
        Ok(Self {
            addr,
            stop,
            http: threads,
            worker: Some(worker),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        for t in self.http.drain(..) {
            let _ = t.join();
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.http.drain(..) {
            let _ = t.join();
        }
        // The HTTP threads held the only senders: the worker's queue is closed now.
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The model's side: one job at a time, each streamed back piece by piece.
fn work(model: Gemma2, tok: &ChatTokenizer, stops: &[u32], queue: Receiver<Job>) {
    for job in queue {
        let mut strings = StopStrings::new(&job.stop);
        let mut hit = false;
        let mut gone = false;
        let r = reply(&model, tok, &job.prompt, &job.params, stops, |piece| {
            if hit || gone {
                return ControlFlow::Break(());
            }
            let (text, stop) = strings.push(piece);
            if !text.is_empty() && job.events.send(Event::Text(text)).is_err() {
                // The client went away: stop spending time on it.
                gone = true;
            }
            hit = stop;
            if hit || gone {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let event = match r {
            Ok(r) => {
                if !hit {
                    let rest = strings.finish();
                    if !rest.is_empty() {
                        let _ = job.events.send(Event::Text(rest));
                    }
                }
                Event::Done {
                    finish: match r.stop {
                        Stop::MaxTokens if !hit => "length",
                        _ => "stop",
                    },
                    prompt_tokens: job.prompt.len(),
                    completion_tokens: r.tokens,
                }
            }
            Err(e) => Event::Failed(e.to_string()),
        };
        let _ = job.events.send(event);
    }
}

fn json_response(status: u16, body: &Value) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_data(body.to_string().into_bytes())
        .with_status_code(status)
        .with_header(
            tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("a valid header"),
        )
}

fn respond(rq: tiny_http::Request, status: u16, body: &Value) {
    // A client that went away is no error of ours.
    let _ = rq.respond(json_response(status, body));
}

fn handle(s: &Shared, mut rq: tiny_http::Request) {
    use tiny_http::Method;
    let path = rq
        .url()
        .split('?')
        .next()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    let method = rq.method().clone();
    match (method, path.as_str()) {
        (Method::Get, "/v1/models") => respond(rq, 200, &api::models(&s.name, s.created)),
        (Method::Get, p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            if id == s.name {
                respond(rq, 200, &api::model(&s.name, s.created));
            } else {
                respond(rq, 404, &not_found_model(id).body());
            }
        }
        (Method::Post, "/v1/chat/completions") => {
            let body = match read_body(&mut rq) {
                Ok(b) => b,
                Err(e) => return respond(rq, e.status, &e.body()),
            };
            match start_job(s, &body) {
                Ok((req, events)) => {
                    if req.stream {
                        stream(s, rq, &req, events)
                    } else {
                        whole(s, rq, events)
                    }
                }
                Err(e) => respond(rq, e.status, &e.body()),
            }
        }
        (_, "/v1/models" | "/v1/chat/completions") => {
            let e = ApiError::invalid(None, format!("method {} is not allowed here", rq.method()))
                .with_status(405);
            respond(rq, 405, &e.body())
        }
        (_, p) => {
            let e = ApiError::invalid(
                None,
                format!("no such endpoint: {p} (try POST /v1/chat/completions or GET /v1/models)"),
            )
            .with_status(404)
            .with_code("not_found");
            respond(rq, 404, &e.body())
        }
    }
}

fn not_found_model(id: &str) -> ApiError {
    ApiError::invalid(Some("model"), format!("The model `{id}` does not exist."))
        .with_status(404)
        .with_code("model_not_found")
}

fn read_body(rq: &mut tiny_http::Request) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    rq.as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::invalid(None, format!("cannot read the request body: {e}")))?;
    if body.len() as u64 > MAX_BODY {
        return Err(ApiError::invalid(
            None,
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
        .with_status(413));
    }
    Ok(body)
}

/// Validates a request, renders its prompt and queues it; returns the request and where the
/// text will come from.
fn start_job(s: &Shared, body: &[u8]) -> Result<(ChatRequest, Receiver<Event>), ApiError> {
    let mut req = api::parse_request(body)?;
    if let Some(m) = &req.model {
        if m != &s.name {
            return Err(not_found_model(m));
        }
    }
    let prompt = s
        .format
        .render(&s.tok, &req.turns)
        .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
    let context = s.context;
    let n = prompt.len();
    let too_long = |message: String| {
        ApiError::invalid(Some("messages"), message).with_code("context_length_exceeded")
    };
    if n >= context {
        return Err(too_long(format!(
            "This model's maximum context length is {context} tokens. However, your messages resulted in {n} tokens. Please reduce the length of the messages."
        )));
    }
    req.params.max_new_tokens = match req.max_tokens {
        Some(m) if n + m > context => {
            return Err(too_long(format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens ({n} in the messages, {m} in the completion). Please reduce the length of the messages or completion.",
                n + m
            )))
        }
        Some(m) => m,
        None => context - n,
    };
    let (events, rx) = mpsc::channel();
    s.jobs
        .send(Job {
            prompt,
            params: req.params.clone(),
            stop: req.stop.clone(),
            events,
        })
        .map_err(|_| ApiError::server("the model worker has stopped").with_status(503))?;
    Ok((req, rx))
}

fn completion_id() -> String {
    format!(
        "chatcmpl-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// A non-streamed answer: wait for the whole text.
fn whole(s: &Shared, rq: tiny_http::Request, events: Receiver<Event>) {
    let mut text = String::new();
    for e in events {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let body = api::completion(
                    &completion_id(),
                    now(),
                    &s.name,
                    &text,
                    finish,
                    api::usage(prompt_tokens, completion_tokens),
                );
                return respond(rq, 200, &body);
            }
            Event::Failed(m) => return respond(rq, 500, &ApiError::server(m).body()),
        }
    }
    respond(
        rq,
        500,
        &ApiError::server("the model worker stopped").body(),
    )
}

/// Writes one HTTP/1.1 chunk and flushes it, so that the client sees it now.
fn chunk(w: &mut dyn Write, data: &str) -> std::io::Result<()> {
    write!(w, "{:x}\r\n{data}\r\n", data.len())?;
    w.flush()
}

/// A streamed answer: server-sent events, one `chat.completion.chunk` per piece of text, then
/// `data: [DONE]`. Written by hand, chunked, because the server's own chunked writer holds
/// data back until it has 8 KiB.
fn stream(s: &Shared, rq: tiny_http::Request, req: &ChatRequest, events: Receiver<Event>) {
    let mut w = rq.into_writer();
    let id = completion_id();
    let created = now();
    let usage = req.include_usage;
    let event = |v: &Value| format!("data: {v}\n\n");
    let send = |w: &mut dyn Write| -> std::io::Result<()> {
        w.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        let first = api::chunk(
            &id,
            created,
            &s.name,
            json!({"role": "assistant", "content": ""}),
            None,
            usage,
        );
        chunk(w, &event(&first))?;
        for e in events.iter() {
            match e {
                Event::Text(t) => {
                    let c = api::chunk(&id, created, &s.name, json!({"content": t}), None, usage);
                    chunk(w, &event(&c))?;
                }
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    let c = api::chunk(&id, created, &s.name, json!({}), Some(finish), usage);
                    chunk(w, &event(&c))?;
                    if usage {
                        let u = api::usage_chunk(
                            &id,
                            created,
                            &s.name,
                            api::usage(prompt_tokens, completion_tokens),
                        );
                        chunk(w, &event(&u))?;
                    }
                    break;
                }
                Event::Failed(m) => {
                    chunk(w, &event(&ApiError::server(m).body()))?;
                    break;
                }
            }
        }
        chunk(w, "data: [DONE]\n\n")?;
        w.write_all(b"0\r\n\r\n")?;
        w.flush()
    };
    // A failed write means the client left; dropping `events` tells the worker to stop.
    let _ = send(&mut *w);
}

/// `socratune serve`: loads the model (and adapter) and serves until the process ends.
pub fn serve(args: &crate::cli::chat::ServeArgs) -> Result<()> {
    use super::load::{adapter_name, load_base, prompt_format, use_adapter, ModelSpec, RunInfo};
    let run = match &args.adapter {
        Some(dir) => RunInfo::find(dir)?,
        None => None,
    };
    let spec = ModelSpec {
        model: args.model.model.clone(),
        revision: args.model.revision.clone(),
        tokenizer: args.model.tokenizer.clone(),
        device: args.model.device.device.clone(),
        dtype: args.model.device.dtype.clone(),
    };
    let dirs: Vec<&std::path::Path> = args.adapter.iter().map(|p| p.as_path()).collect();
    let mut loaded = load_base(&spec, &dirs, &[run.as_ref()])?;
    use_adapter(&mut loaded.model, args.adapter.as_deref())?;
    // Off unless asked for: the run's own variant is not applied to clients' histories.
    let (format, variant) = prompt_format(&args.prompt, None)?;
    let name = match (&args.name, &args.adapter, &run) {
        (Some(n), _, _) => n.clone(),
        // `<run>/data/stats.json` → the run's name.
        (None, Some(_), Some(r)) => r
            .stats
            .parent()
            .and_then(|d| d.parent())
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| loaded.base.clone()),
        (None, Some(dir), None) => adapter_name(dir),
        (None, None, _) => loaded.base.clone(),
    };
    eprintln!("{}", loaded.summary);
    if let Some(dir) = &args.adapter {
        eprintln!("adapter {}", dir.display());
    }
    eprintln!(
        "prompts: {}{}",
        format.describe(),
        variant
            .map(|v| format!(" (variant {v})"))
            .unwrap_or_default()
    );
    let server = Server::start(
        loaded.model,
        loaded.tokenizer,
        ServeOptions {
            name: name.clone(),
            // An IPv6 host needs brackets before the port.
            addr: if args.host.contains(':') && !args.host.starts_with('[') {
                format!("[{}]:{}", args.host, args.port)
            } else {
                format!("{}:{}", args.host, args.port)
            },
            format,
            threads: args.threads,
        },
    )?;
    eprintln!(
        "serving `{name}` on http://{}/v1 (POST /v1/chat/completions, GET /v1/models)",
        server.addr()
    );
    server.wait();
    Ok(())
}
