//! The chat-completions client against a local fake server: retries, what is not retried,
//! tolerant parsing, backend profiles, the API key.

mod fake_llm;

use fake_llm::{FakeLlm, Fault};
use socratune::model::generate::SamplingRequest;
use socratune::synth::client::{ChatRequest, Client, Message, Sampling};
use socratune::synth::config::{EndpointConfig, Limits};
use socratune::synth::limiter::Limiter;
use socratune::synth::progress::{Log, Stats};
use socratune::synth::{SynthConfig, SynthError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn endpoint(url: &str, extra: &str) -> EndpointConfig {
    let cfg = SynthConfig::parse(&format!(
        "[judge]\nbase_url = \"{url}\"\nmodel = \"m\"\napi_key_env = \"SOCRATUNE_CLIENT_TEST_KEY\"\ntimeout_s = 1\nseed = 3\nmax_tokens = 50\n{extra}"
    ))
    .unwrap();
    cfg.judge.unwrap()
}

fn limits() -> Limits {
    Limits {
        max_attempts: 3,
        base_delay_ms: 5,
        max_backoff_s: 0.02,
        ..Limits::default()
    }
}

struct Harness {
    client: Client,
    stats: Arc<Stats>,
    log: Arc<Mutex<Vec<String>>>,
}

fn client_with(cfg: &EndpointConfig, limits: &Limits) -> Harness {
    let stats = Arc::new(Stats::default());
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&lines);
    let log: Log = Arc::new(move |m: &str| l.lock().unwrap().push(m.to_string()));
    let limiter = Arc::new(Limiter::new(limits.concurrency, limits.rpm));
    let client = Client::new("judge", cfg, limiter, limits, Arc::clone(&stats), log).unwrap();
    Harness {
        client,
        stats,
        log: lines,
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::new("system", "s"),
            Message::new("user", "正義とは？"),
        ],
        sampling: Sampling {
            common: SamplingRequest {
                temperature: Some(0.5),
                max_new_tokens: Some(50),
                seed: Some(3),
                ..Default::default()
            },
            ..Default::default()
        },
        schema: None,
    }
}

fn send(h: &Harness) -> Result<socratune::synth::Completion, SynthError> {
    h.client.send(&h.client.body(&request()))
}

#[test]
fn retries_429_honouring_retry_after_seconds_and_ms() {
    let srv = FakeLlm::start();
    srv.script([
        Fault::status(429, r#"{"error":{"message":"slow down"}}"#).with_header("retry-after", "1")
    ]);
    let h = client_with(&endpoint(&srv.base_url, ""), &limits());
    let t0 = Instant::now();
    let c = send(&h).unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
    assert!(c.content.contains("返答"));
    assert_eq!(srv.count(), 2);
    assert!(
        h.log.lock().unwrap()[0].contains("HTTP 429: slow down"),
        "{:?}",
        h.log.lock().unwrap()
    );

    srv.clear();
    srv.script([Fault::status(429, "{}")
        .with_header("retry-after-ms", "300")
        .with_header("retry-after", "30")]);
    let t0 = Instant::now();
    send(&h).unwrap();
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_millis(290) && e < Duration::from_secs(5),
        "{e:?}"
    );

    // An HTTP date in the past means "now".
    srv.clear();
    srv.script([
        Fault::status(503, "busy").with_header("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")
    ]);
    send(&h).unwrap();
    assert_eq!(srv.count(), 2);
}

#[test]
fn a_retry_after_beyond_the_limit_fails_clearly() {
    let srv = FakeLlm::start();
    srv.script([Fault::status(429, "{}").with_header("retry-after", "3600")]);
    let l = Limits {
        max_retry_wait_s: 5.0,
        ..limits()
    };
    let h = client_with(&endpoint(&srv.base_url, ""), &l);
    let e = send(&h).unwrap_err();
    assert!(matches!(e, SynthError::WaitTooLong { .. }), "{e}");
    assert!(e.to_string().contains("asked to wait 3600 s"), "{e}");
}

#[test]
fn server_errors_array_bodies_truncated_json_and_slow_answers_are_retried() {
    let srv = FakeLlm::start();
    srv.script([
        Fault::status(500, "internal"),
        Fault::status(503, r#"[{"error":{"code":503,"message":"The model is overloaded","status":"UNAVAILABLE"}}]"#),
        Fault::Truncated,
    ]);
    let l = Limits {
        max_attempts: 4,
        ..limits()
    };
    let h = client_with(&endpoint(&srv.base_url, ""), &l);
    let c = send(&h).unwrap();
    assert_eq!(c.finish_reason.as_deref(), Some("stop"));
    assert_eq!(srv.count(), 4);
    let log = h.log.lock().unwrap().join("\n");
    assert!(
        log.contains("The model is overloaded") && log.contains("unreadable response"),
        "{log}"
    );
    assert_eq!(socratune::synth::progress::Stats::get(&h.stats.retries), 3);

    // Slower than the 1 s timeout: abandoned, then retried.
    srv.clear();
    srv.script([Fault::Slow(Duration::from_millis(2500))]);
    let c = send(&h).unwrap();
    assert!(c.content.contains("返答"));
    assert_eq!(srv.count(), 2);
}

#[test]
fn retries_are_bounded() {
    let srv = FakeLlm::start();
    srv.script((0..10).map(|_| Fault::status(502, "bad gateway")));
    let h = client_with(&endpoint(&srv.base_url, ""), &limits());
    let e = send(&h).unwrap_err();
    assert_eq!(srv.count(), 3);
    assert!(
        matches!(e, SynthError::RetriesExhausted { attempts: 3, .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("gave up after 3 attempt(s); last error: HTTP 502: bad gateway"),
        "{e}"
    );
}

#[test]
fn connection_errors_are_retried_then_reported() {
    // A port nobody listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = client_with(
        &endpoint(&format!("http://127.0.0.1:{port}/v1"), ""),
        &limits(),
    );
    let e = send(&h).unwrap_err();
    assert!(
        matches!(e, SynthError::RetriesExhausted { attempts: 3, .. }),
        "{e}"
    );
    assert_eq!(socratune::synth::progress::Stats::get(&h.stats.requests), 3);
}

#[test]
fn client_errors_and_exhausted_quota_are_not_retried() {
    let srv = FakeLlm::start();
    let h = client_with(&endpoint(&srv.base_url, ""), &limits());
    for (code, body, want) in [
        (
            400,
            r#"{"error":{"message":"Unsupported parameter: 'seed'"}}"#,
            "HTTP 400: Unsupported parameter: 'seed'",
        ),
        (
            401,
            r#"{"error":{"message":"Incorrect API key provided"}}"#,
            "HTTP 401: Incorrect API key provided",
        ),
        (
            403,
            r#"[{"error":{"message":"permission denied"}}]"#,
            "HTTP 403: permission denied",
        ),
        (
            404,
            r#"{"error":"model 'm' not found"}"#,
            "HTTP 404: model 'm' not found",
        ),
    ] {
        srv.clear();
        srv.script([Fault::status(code, body)]);
        let e = send(&h).unwrap_err();
        assert_eq!(srv.count(), 1, "{code} must not be retried");
        assert!(e.to_string().contains(want), "{e}");
        assert!(
            e.to_string().contains(&srv.base_url),
            "names the endpoint: {e}"
        );
    }
    srv.clear();
    srv.script([Fault::status(429, r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#)]);
    let e = send(&h).unwrap_err();
    assert_eq!(srv.count(), 1);
    assert!(
        matches!(e, SynthError::Quota { .. })
            && e.to_string().contains("exceeded your current quota"),
        "{e}"
    );
    assert!(e.is_fatal());
}

#[test]
fn length_and_null_content_are_failed_calls_without_retry() {
    let srv = FakeLlm::start();
    srv.script([Fault::Length, Fault::NullContent]);
    let h = client_with(&endpoint(&srv.base_url, ""), &limits());
    let c = send(&h).unwrap();
    assert!(matches!(c.check(), Err(SynthError::Length)));
    let c = send(&h).unwrap();
    assert_eq!((c.content.as_str(), c.prompt_tokens), ("", 0));
    assert!(matches!(c.check(), Err(SynthError::EmptyReply { .. })));
    assert_eq!(srv.count(), 2);
}

#[test]
fn profiles_shape_the_body_and_the_key_goes_only_into_the_header() {
    let srv = FakeLlm::start();
    std::env::set_var("SOCRATUNE_CLIENT_TEST_KEY", "sk-client-test-0123");
    let h = client_with(
        &endpoint(
            &srv.base_url,
            "backend = \"gemini\"\nfrequency_penalty = 0.2",
        ),
        &limits(),
    );
    send(&h).unwrap();
    let h2 = client_with(&endpoint(&srv.base_url, "backend = \"openai\""), &limits());
    send(&h2).unwrap();
    let reqs = srv.requests();
    assert!(reqs[0].body.get("seed").is_none() && reqs[0].body.get("frequency_penalty").is_none());
    assert_eq!(reqs[0].body["max_tokens"], 50);
    assert_eq!(reqs[1].body["max_completion_tokens"], 50);
    assert_eq!(reqs[1].body["seed"], 3);
    for r in &reqs {
        assert_eq!(r.auth.as_deref(), Some("Bearer sk-client-test-0123"));
        assert!(!r.body.to_string().contains("sk-client-test"));
    }
    let dbg = format!("{:?}", h.client);
    assert!(
        !dbg.contains("sk-client-test") && dbg.contains("ApiKey(***)"),
        "{dbg}"
    );

    // An error body that echoes the key is redacted.
    srv.script([Fault::status(
        401,
        r#"{"error":{"message":"Incorrect API key provided: sk-client-test-0123"}}"#,
    )]);
    let e = send(&h).unwrap_err().to_string();
    assert!(
        !e.contains("sk-client-test-0123") && e.contains("[redacted]"),
        "{e}"
    );
}

#[test]
fn hosted_backends_need_the_key_variable_local_ones_do_not() {
    let mut cfg = endpoint("https://api.openai.com/v1", "");
    cfg.api_key_env = "SOCRATUNE_SURELY_UNSET_VAR".into();
    let stats = Arc::new(Stats::default());
    let log: Log = Arc::new(|_: &str| {});
    let e = Client::new(
        "judge",
        &cfg,
        Arc::new(Limiter::new(1, None)),
        &limits(),
        Arc::clone(&stats),
        log.clone(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("SOCRATUNE_SURELY_UNSET_VAR is not set"), "{e}");
    // A local server needs no key; if it turns out to want one, the error says which
    // variable was empty.
    let srv = FakeLlm::start();
    let mut cfg = endpoint(&srv.base_url, "");
    cfg.api_key_env = "SOCRATUNE_SURELY_UNSET_VAR".into();
    let client = Client::new(
        "judge",
        &cfg,
        Arc::new(Limiter::new(1, None)),
        &limits(),
        stats,
        log,
    )
    .unwrap();
    srv.script([Fault::status(401, r#"{"error":{"message":"missing key"}}"#)]);
    let e = client
        .send(&client.body(&request()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing key (no API key was sent: SOCRATUNE_SURELY_UNSET_VAR is not set)"),
        "{e}"
    );
    assert!(srv.requests()[0].auth.is_none());
}
