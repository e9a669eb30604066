//! `socratune serve`: an OpenAI-compatible HTTP server (`POST /v1/chat/completions`, plain or
//! streamed as server-sent events, and `GET /v1/models`).
//!
//! One worker thread owns the model and answers one request at a time; connection threads
//! (`http`) read requests, validate them, render prompts, send jobs over a channel and relay
//! the text back as it comes. At most `queue` jobs wait for the model; a request beyond that
//! is refused with 503 and `Retry-After`, so a flood cannot pile up memory or latency.

use super::api::{self, ApiError, ChatRequest};
use super::http::{self, HttpServer, Limits, Reply, Request};
use super::load::{ModelSpec, PromptChoice};
use super::prompt::PromptFormat;
use super::stop::StopStrings;
use super::{reply, stop_tokens, ChatError, Result};
use crate::dataset::ChatTokenizer;
use crate::model::generate::{SamplingParams, Stop};
use crate::model::CausalLm;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A key clients must send as `Authorization: Bearer <key>`. Only its digest is kept, and
/// `Debug` shows neither.
#[derive(Clone)]
pub struct ApiKey([u8; 32]);

impl ApiKey {
    pub fn new(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Compares digests in constant time, so that timing tells nothing of the key (the
    /// digest also hides its length).
    fn accepts(&self, given: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        d.iter().zip(&self.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model id clients ask for.
    pub name: String,
    /// `host:port`; port 0 picks a free one.
    pub addr: String,
    /// How a history becomes a prompt (the whole history, no prefix, by default).
    pub format: PromptFormat,
    /// Connections handled at once; more get 503 at once.
    pub threads: usize,
    /// Requests waiting for the model, beyond the one it answers; more get 503.
    pub queue: usize,
    /// When set, every request must carry this key.
    pub api_key: Option<ApiKey>,
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

/// What the connection threads share.
struct Shared {
    name: String,
    format: PromptFormat,
    tok: Arc<ChatTokenizer>,
    context: usize,
    /// The most bytes one token stands for: text longer than `context` times this cannot
    /// fit, and is refused without tokenizing it (which costs far more memory than the text).
    token_bytes: usize,
    created: u64,
    jobs: Sender<Job>,
    /// Jobs sent and not yet finished by the worker.
    pending: Arc<AtomicUsize>,
    queue: usize,
    api_key: Option<ApiKey>,
}

/// A running server; dropping it stops it.
pub struct Server {
    http: Option<HttpServer>,
    worker: Option<JoinHandle<()>>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The longest vocabulary entry, in bytes: no token stands for more text than its entry's
/// spelling (byte-level and SentencePiece spellings are never shorter than the text).
fn max_token_bytes(tok: &ChatTokenizer) -> usize {
    tok.inner()
        .get_vocab(true)
        .keys()
        .map(|k| k.len())
        .max()
        .unwrap_or(1)
        .max(1)
}

impl Server {
    /// Binds `opts.addr` and starts answering.
    pub fn start(model: CausalLm, tok: ChatTokenizer, opts: ServeOptions) -> Result<Self> {
        let tok = Arc::new(tok);
        let stops = stop_tokens(&model.cfg, &tok);
        let context = model.cfg.max_position_embeddings;
        let (jobs, queue) = mpsc::channel::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (tok, pending) = (tok.clone(), pending.clone());
            std::thread::Builder::new()
                .name("model".into())
                .spawn(move || work(model, &tok, &stops, queue, &pending))?
        };
        let shared = Arc::new(Shared {
            name: opts.name,
            format: opts.format,
            context,
            token_bytes: max_token_bytes(&tok),
            tok,
            created: now(),
            jobs,
            pending,
            queue: opts.queue,
            api_key: opts.api_key,
        });
        let limits = Limits {
            connections: opts.threads.max(1),
            ..Limits::default()
        };
        let handler: Arc<http::Handler> =
            Arc::new(move |rq: &Request, reply: &mut Reply| handle(&shared, rq, reply));
        let http =
            HttpServer::bind(&opts.addr, limits, handler).map_err(|e| ChatError::Listen {
                addr: opts.addr.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            http: Some(http),
            worker: Some(worker),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.http.as_ref().expect("a running server").addr()
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        if let Some(h) = self.http.take() {
            h.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the connections drops the handler, which held the only job sender: the
        // worker's queue is closed then.
        self.http.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The model's side: one job at a time, each streamed back piece by piece.
fn work(
    model: CausalLm,
    tok: &ChatTokenizer,
    stops: &[u32],
    queue: Receiver<Job>,
    pending: &AtomicUsize,
) {
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
        pending.fetch_sub(1, Ordering::SeqCst);
        let _ = job.events.send(event);
    }
}

fn respond(reply: &mut Reply, e: &ApiError) {
    if e.status == 503 {
        let retry = http::RETRY_AFTER_S.to_string();
        let body = e.body().to_string();
        reply.send(
            503,
            "application/json",
            &[("Retry-After", &retry)],
            body.as_bytes(),
        );
    } else {
        reply.json(e.status, &e.body());
    }
}

fn handle(s: &Shared, rq: &Request, reply: &mut Reply) {
    if let Some(key) = &s.api_key {
        let given = rq
            .header("Authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !key.accepts(given.trim()) {
            // Never echo what was sent.
            let e = ApiError::invalid(
                None,
                "Incorrect or missing API key: send it as `Authorization: Bearer <key>`.",
            )
            .with_status(401)
            .with_code("invalid_api_key");
            return respond(reply, &e);
        }
    }
    let path = rq.path.trim_end_matches('/');
    match (rq.method.as_str(), path) {
        ("GET", "/v1/models") => reply.json(200, &api::models(&s.name, s.created)),
        ("GET", p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            if id == s.name {
                reply.json(200, &api::model(&s.name, s.created));
            } else {
                respond(reply, &not_found_model(id));
            }
        }
        ("POST", "/v1/chat/completions") => match start_job(s, &rq.body) {
            Ok((req, events)) => {
                if req.stream {
                    stream(s, reply, &req, events)
                } else {
                    whole(s, reply, events)
                }
            }
            Err(e) => respond(reply, &e),
        },
        (m, "/v1/models" | "/v1/chat/completions") => {
            let e =
                ApiError::invalid(None, format!("method {m} is not allowed here")).with_status(405);
            respond(reply, &e)
        }
        (_, p) => {
            let e = ApiError::invalid(
                None,
                format!("no such endpoint: {p} (try POST /v1/chat/completions or GET /v1/models)"),
            )
            .with_status(404)
            .with_code("not_found");
            respond(reply, &e)
        }
    }
}

fn not_found_model(id: &str) -> ApiError {
    ApiError::invalid(Some("model"), format!("The model `{id}` does not exist."))
        .with_status(404)
        .with_code("model_not_found")
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
    let context = s.context;
    let too_long = |message: String| {
        ApiError::invalid(Some("messages"), message).with_code("context_length_exceeded")
    };
    // Every turn costs at least one token, and no token stands for more than `token_bytes`
    // bytes: beyond these bounds the prompt cannot fit, whatever the tokenizer makes of it.
    if req.turns.len() >= context {
        return Err(too_long(format!(
            "This model's maximum context length is {context} tokens. However, your request has {} messages. Please send fewer messages.",
            req.turns.len()
        )));
    }
    let bytes: usize = req.turns.iter().map(|t| t.text.len()).sum::<usize>()
        + req.system.as_ref().map_or(0, String::len);
    if bytes > context * s.token_bytes {
        return Err(too_long(format!(
            "This model's maximum context length is {context} tokens. However, your messages hold {bytes} bytes of text, more than {context} tokens can. Please reduce the length of the messages."
        )));
    }
    // A request's system text replaces the served variant's.
    let mut format = std::borrow::Cow::Borrowed(&s.format);
    if req.system.is_some() {
        format.to_mut().layout.system = req.system.clone();
    }
    let prompt = format
        .render(&s.tok, &req.turns)
        .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
    let n = prompt.len();
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
    // Counted before it is sent, so that concurrent requests cannot all slip under the cap;
    // one more than `queue` because the job being answered is counted too.
    if s.pending.fetch_add(1, Ordering::SeqCst) > s.queue {
        s.pending.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::server(format!(
            "The server is busy: {} requests are waiting for the model. Retry shortly.",
            s.queue
        ))
        .with_status(503)
        .with_code("server_busy"));
    }
    let (events, rx) = mpsc::channel();
    s.jobs
        .send(Job {
            prompt,
            params: req.params.clone(),
            stop: req.stop.clone(),
            events,
        })
        .map_err(|_| {
            s.pending.fetch_sub(1, Ordering::SeqCst);
            ApiError::server("the model worker has stopped").with_status(503)
        })?;
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
fn whole(s: &Shared, reply: &mut Reply, events: Receiver<Event>) {
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
                return reply.json(200, &body);
            }
            Event::Failed(m) => return respond(reply, &ApiError::server(m)),
        }
    }
    respond(reply, &ApiError::server("the model worker stopped"))
}

/// Writes one HTTP/1.1 chunk and flushes it, so that the client sees it now.
fn chunk(w: &mut dyn Write, data: &str) -> std::io::Result<()> {
    write!(w, "{:x}\r\n{data}\r\n", data.len())?;
    w.flush()
}

/// A streamed answer: server-sent events, one `chat.completion.chunk` per piece of text, then
/// `data: [DONE]`, each chunk flushed as it comes.
fn stream(s: &Shared, reply: &mut Reply, req: &ChatRequest, events: Receiver<Event>) {
    let id = completion_id();
    let created = now();
    let usage = req.include_usage;
    let event = |v: &Value| format!("data: {v}\n\n");
    let send = |reply: &mut Reply| -> std::io::Result<()> {
        let w = reply.chunked(200, "text/event-stream; charset=utf-8")?;
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
    if send(reply).is_ok() {
        reply.chunked_done();
    }
}

/// What `socratune serve` is asked to do.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// A PEFT adapter folder; None: the base model alone.
    pub adapter: Option<PathBuf>,
    pub model: ModelSpec,
    /// Off unless asked for: clients send whole histories, which are used as they are.
    pub prompt: PromptChoice,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// The model id clients ask for; None: the adapter's run name, or the base model.
    pub name: Option<String>,
    /// Connections handled at once.
    pub threads: usize,
    /// Requests waiting for the model.
    pub queue: usize,
    /// The environment variable holding the key clients must send.
    pub api_key_env: Option<String>,
}

/// `socratune serve`: loads the model (and adapter) and serves until the process ends.
pub fn serve(args: &ServeSpec) -> Result<()> {
    use super::load::{adapter_name, load_base, prompt_format, use_adapter, RunInfo};
    let run = match &args.adapter {
        Some(dir) => RunInfo::find(dir)?,
        None => None,
    };
    let spec = &args.model;
    // Checked before the model loads, so that a mistake costs no time.
    let api_key = match &args.api_key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.trim().is_empty() => Some(ApiKey::new(k.trim())),
            _ => {
                return Err(ChatError::Invalid(format!(
                    "--api-key-env {var}: the environment variable {var} is not set or empty"
                )))
            }
        },
    };
    if !is_loopback(&args.host) {
        eprintln!(
            "warning: serving on {}, not only this machine: anyone who can reach the port can use the model{} (plain HTTP, no TLS)",
            args.host,
            if api_key.is_some() {
                " with the key"
            } else {
                "; set --api-key-env to require a key"
            }
        );
    }
    let dirs: Vec<&std::path::Path> = args.adapter.iter().map(|p| p.as_path()).collect();
    let mut loaded = load_base(spec, &dirs, &[run.as_ref()])?;
    use_adapter(&mut loaded.model, args.adapter.as_deref())?;
    // Off unless asked for: the run's own window and prefix are not applied to clients'
    // histories. Its layout (format and system text) is: it is how the model reads any prompt.
    let (mut format, variant) = prompt_format(&args.prompt, None)?;
    let run_layout = run.as_ref().map(|r| &r.variant).map(|v| &v.layout);
    if let (None, Some(layout)) = (&args.prompt.variant, run_layout) {
        format.layout.format = layout.format;
        if args.prompt.system.is_none() {
            format.layout.system = layout.system.clone();
        }
    }
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
            queue: args.queue,
            api_key,
        },
    )?;
    eprintln!(
        "serving `{name}` on http://{}/v1 (POST /v1/chat/completions, GET /v1/models)",
        server.addr()
    );
    server.wait();
    Ok(())
}

/// Whether a `--host` is reachable from this machine alone.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_compare_by_digest() {
        let k = ApiKey::new("sk-secret");
        assert!(k.accepts("sk-secret"));
        assert!(!k.accepts("sk-secreT"));
        assert!(!k.accepts(""));
        assert_eq!(format!("{k:?}"), "ApiKey(..)");
    }

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["0.0.0.0", "::", "192.168.1.2", "example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
