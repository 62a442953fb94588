//! The configuration's tests: whole files in, runtime values or the exact problems (message,
//! key path, line, order) out.

use std::time::Duration;

use http::HeaderName;
use rustls::pki_types::CertificateDer;

use super::*;
use crate::domain::{Phase, Prices};

const BASE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
const PROMPT_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/prompts/support-v4.txt");
/// Appended to cases that are not about upstreams, after their last line.
const UPSTREAM: &str = "\n[upstreams.openai]\nbase_url = \"https://api.openai.com\"\n";

fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    Config::parse(text, Path::new(BASE_DIR))
}

/// `text` yields exactly the `expected` problems, in order; each is a prefix of one.
fn check(text: &str, expected: &[&str]) {
    let got: Vec<String> = match parse(text) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    };
    let matches =
        got.len() == expected.len() && got.iter().zip(expected).all(|(g, e)| g.starts_with(e));
    assert!(
        matches,
        "for:\n{text}\nexpected {expected:#?}\ngot {got:#?}"
    );
}

/// A route `r` whose line 3 is `top` and whose `rest` starts on line 7.
fn route(top: &str, rest: &str) -> String {
    format!(
        "[routes.r]\nmodel = \"r\"\n{top}\n[routes.r.stable]\nupstream = \"openai\"\n\
         model = \"gpt-4o-2024-08-06\"\n{rest}{UPSTREAM}"
    )
}

const CONTRACT_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 10485760
upstream_timeout_secs = 300

[admin]
listen = "127.0.0.1:8081"
token_env = "UNDERSTUDY_ADMIN_TOKEN"   # required for every mutating call

[store]
path = "data/understudy.db"             # embedded default; created on first start

[upstreams.openai]
base_url = "https://api.openai.com"
api_key_env = "OPENAI_API_KEY"          # if set, replaces the client's credentials
default = true                          # unmatched requests go here

[upstreams.anthropic]
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"

[routes.support-bot]
model = "support-bot"                   # the alias applications send as `model`
phase = "shadow"
share = 0.05
sticky_key = "header:x-user-id"         # or "body:user"; absent = random

[routes.support-bot.stable]
label = "v3"
upstream = "openai"
model = "gpt-4o-2024-08-06"
system_prompt = "You are a concise support assistant."
params = { temperature = 0.2 }

[routes.support-bot.candidate]
label = "v4"
upstream = "openai"
model = "gpt-4o-2024-11-20"
system_prompt = "You are a concise and friendly support assistant."

[routes.support-bot.shadow]
max_inflight = 64                       # concurrent mirrored requests; past it: dropped_busy
max_rps = 20                            # mirrored requests per second; past it: dropped_budget

[routes.support-bot.scoring]
noise_floor_share = 0.02                # share of samples also re-sent to stable
weights = { lexical = 0.4, structure = 0.3, length = 0.1, refusal = 0.2 }

[routes.support-bot.rollback]
threshold = 0.80                        # quality below this rolls back
window = 200
min_samples = 30
max_error_rate = 0.05
auto = true                             # false: alert-only, rollback only by alert or admin
"#;

#[test]
fn contract_example_parses_to_expected_values() {
    let config = parse(CONTRACT_EXAMPLE).unwrap();
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(config.admin, AdminConfig::default());
    assert_eq!(
        config.store.path,
        Path::new(BASE_DIR).join("data/understudy.db")
    );
    assert_eq!(config.default_upstream, "openai");

    let openai = &config.upstreams["openai"];
    assert_eq!(openai.base_url.to_string(), "https://api.openai.com/");
    assert_eq!(openai.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert!(openai.default);
    assert_eq!(openai.api, ApiFlavor::OpenAi);
    let anthropic = &config.upstreams["anthropic"];
    assert_eq!(anthropic.api, ApiFlavor::Anthropic);
    assert!(!anthropic.default);

    let route = &config.routes["support-bot"];
    assert_eq!(route.name, "support-bot");
    assert_eq!(route.model, "support-bot");
    assert_eq!(route.phase, Phase::Shadow);
    assert_eq!(route.share, 0.05);
    assert_eq!(
        route.sticky_key,
        Some(StickyKey::Header(HeaderName::from_static("x-user-id")))
    );
    let stable = &route.stable;
    assert_eq!(stable.label.as_deref(), Some("v3"));
    assert_eq!(stable.upstream, "openai");
    assert_eq!(stable.model, "gpt-4o-2024-08-06");
    assert_eq!(
        stable.system_prompt.as_deref(),
        Some("You are a concise support assistant.")
    );
    assert_eq!(
        serde_json::Value::Object(stable.params.clone()),
        serde_json::json!({ "temperature": 0.2 })
    );
    assert_eq!(stable.prices, None);
    let candidate = route.candidate.as_ref().unwrap();
    assert_eq!(candidate.label.as_deref(), Some("v4"));
    assert_eq!(candidate.model, "gpt-4o-2024-11-20");
    assert!(candidate.params.is_empty());

    assert_eq!(
        route.shadow,
        ShadowConfig {
            max_inflight: 64,
            max_rps: 20.0,
            max_tokens_per_min: None,
            timeout: Duration::from_secs(300),
        }
    );
    assert_eq!(route.scoring, ScoringConfig::default());
    assert_eq!(route.rollback, RollbackConfig::default());
}

#[test]
fn delivered_example_config_loads() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/understudy.toml"
    ));
    let config = Config::load(path).unwrap();
    let route = &config.routes["support-bot"];
    let prompt = std::fs::read_to_string(PROMPT_FILE).unwrap();
    let candidate = route.candidate.as_ref().unwrap();
    assert_eq!(candidate.system_prompt.as_deref(), Some(prompt.trim_end()));
    assert_eq!(
        candidate.prices,
        Some(Prices {
            prompt_per_mtok: 2.5,
            completion_per_mtok: 10.0
        })
    );
    assert_eq!(route.shadow.timeout, Duration::from_secs(120));
    assert_eq!(
        config.store.path,
        Path::new(BASE_DIR).join("data/understudy.db")
    );
    assert_eq!(config.default_upstream, "openai");
}

#[test]
fn defaults_fill_in() {
    let config = parse(
        "[server]\nupstream_timeout_secs = 60\n\
         [upstreams.local]\nbase_url = \"http://localhost:11434/v1/\"\n\
         [routes.r]\nmodel = \"r\"\n\
         [routes.r.stable]\nupstream = \"local\"\nmodel = \"llama3.1:8b\"\n\
         [routes.r.scoring]\nweights = { refusal = 0.5 }\n",
    )
    .unwrap();
    assert_eq!(
        config.server,
        ServerConfig {
            upstream_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        }
    );
    assert_eq!(config.admin, AdminConfig::default());
    assert_eq!(config.admin.token_env, "UNDERSTUDY_ADMIN_TOKEN");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:8081");
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.max_body_bytes, 10_485_760);
    assert_eq!(
        config.store.path,
        Path::new(BASE_DIR).join("data/understudy.db")
    );
    // The only upstream is the default even if not marked.
    assert_eq!(config.default_upstream, "local");
    let local = &config.upstreams["local"];
    assert!(local.default);
    assert_eq!(local.api_key_env, None);
    assert_eq!(local.api, ApiFlavor::OpenAi);
    assert_eq!(local.base_url.path(), "/v1");

    let route = &config.routes["r"];
    assert_eq!(route.phase, Phase::Stable);
    assert_eq!(route.share, 0.05);
    assert_eq!(route.sticky_key, None);
    assert_eq!(route.candidate, None);
    assert_eq!(route.stable.label, None);
    assert_eq!(route.stable.system_prompt, None);
    assert_eq!(route.stable.prices, None);
    assert!(route.stable.params.is_empty());
    assert_eq!(
        route.shadow,
        ShadowConfig {
            max_inflight: 64,
            max_rps: 20.0,
            max_tokens_per_min: None,
            timeout: Duration::from_secs(60),
        }
    );
    assert_eq!(
        route.scoring,
        ScoringConfig {
            noise_floor_share: 0.02,
            noise_warmup: 20,
            weights: Weights {
                lexical: 0.4,
                structure: 0.3,
                length: 0.1,
                refusal: 0.5,
                semantic: 0.0,
                judge: 0.0,
            },
            keep_worst: 20,
            keep_random: 50,
            redact_requests: false,
            semantic: None,
            judge: None,
        }
    );
    assert_eq!(
        route.rollback,
        RollbackConfig {
            threshold: 0.8,
            window: 200,
            min_samples: 30,
            max_error_rate: 0.05,
            auto: true,
        }
    );
}

#[test]
fn relative_prompt_file_is_resolved_against_base_dir() {
    let text = route(
        "phase = \"canary\"",
        "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"gpt-4o-2024-11-20\"\n\
         system_prompt_file = \"prompts/support-v4.txt\"\n",
    );
    let config = parse(&text).unwrap();
    let prompt = std::fs::read_to_string(PROMPT_FILE).unwrap();
    let candidate = config.routes["r"].candidate.clone().unwrap();
    assert_eq!(candidate.system_prompt.as_deref(), Some(prompt.trim_end()));
    // The same text from another directory does not find the file.
    let problems = Config::parse(&text, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "routes.r.candidate.system_prompt_file");
    assert_eq!(problems[0].line, Some(10));
    assert!(problems[0].message.contains("prompts/support-v4.txt"));
}

#[test]
fn valid_variants_parse() {
    for text in [
        route("phase = \"promoted\"\nshare = 1", "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"o3-2025-04-16\"\n"),
        route("sticky_key = \"body:user\"\nshare = 0", ""),
        route("", "[routes.r.rollback]\nthreshold = 1\nwindow = 1\nmin_samples = 1\nmax_error_rate = 0\n"),
        route("", "[routes.r.scoring]\nweights = { lexical = 0, structure = 0, length = 0 }\nkeep_worst = 10000\nkeep_random = 0\n"),
        route("", "[routes.r.shadow]\nmax_tokens_per_min = 100000\nmax_rps = 0.5\nmax_inflight = 1\n"),
    ] {
        check(&text, &[]);
    }
}

#[test]
fn base_url_and_api_flavor() {
    let cases = [
        (
            "https://api.openai.com",
            "",
            "https://api.openai.com/",
            ApiFlavor::OpenAi,
        ),
        (
            "https://api.anthropic.com/",
            "",
            "https://api.anthropic.com/",
            ApiFlavor::Anthropic,
        ),
        (
            "http://localhost:8000/proxy/v1//",
            "",
            "http://localhost:8000/proxy/v1",
            ApiFlavor::OpenAi,
        ),
        (
            "https://gw.example.com/anthropic",
            "",
            "https://gw.example.com/anthropic",
            ApiFlavor::OpenAi,
        ),
        (
            "https://gw.example.com/a",
            "api = \"anthropic\"",
            "https://gw.example.com/a",
            ApiFlavor::Anthropic,
        ),
        (
            "https://my-anthropic-proxy.local",
            "api = \"openai\"",
            "https://my-anthropic-proxy.local/",
            ApiFlavor::OpenAi,
        ),
    ];
    for (url, extra, expected_url, expected_api) in cases {
        let config = parse(&format!("[upstreams.u]\nbase_url = \"{url}\"\n{extra}\n")).unwrap();
        let upstream = &config.upstreams["u"];
        assert_eq!(upstream.base_url.to_string(), expected_url, "{url}");
        assert_eq!(upstream.api, expected_api, "{url}");
    }
}

#[test]
fn params_convert_to_json() {
    let text = route(
        "",
        "[routes.r.stable.params]\ntemperature = 0.2\nmax_tokens = 800\nstop = [\"\\n\\n\", \"END\"]\n\
         response_format = { type = \"json_object\" }\nlogprobs = true\n",
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        serde_json::Value::Object(config.routes["r"].stable.params.clone()),
        serde_json::json!({
            "temperature": 0.2,
            "max_tokens": 800,
            "stop": ["\n\n", "END"],
            "response_format": { "type": "json_object" },
            "logprobs": true,
        })
    );
}

#[test]
fn sticky_header_is_lower_cased() {
    let config = parse(&route("sticky_key = \"header:X-User-Id\"", "")).unwrap();
    assert_eq!(
        config.routes["r"].sticky_key,
        Some(StickyKey::Header(HeaderName::from_static("x-user-id")))
    );
}

#[test]
fn syntax_errors_stop_with_their_line() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[server]\nlisten = \"x\"\nlisten = \"y\"\n",
            &["line 3: invalid TOML: duplicate key"],
        ),
        (
            "[routes.r]\nmodel = \"r\"\n[routes.r]\n",
            &["line 3: invalid TOML: duplicate key"],
        ),
        (
            "[server]\nlisten = \n",
            &["line 2: invalid TOML: string values must be quoted"],
        ),
        (
            "[admin]\ntoken_env = \"\"\n\n[store\n",
            &["line 4: invalid TOML: unclosed table"],
        ),
    ];
    for (text, expected) in cases {
        check(text, expected);
    }
}

#[test]
fn server_admin_store_rules() {
    let cases: &[(&str, &[&str])] = &[
        ("[server]\nlisten = \"nope\"", &["line 2: server.listen: must be an address like \"127.0.0.1:8080\", got \"nope\""]),
        ("[server]\nlisten = 8080", &["line 2: server.listen: invalid type: integer `8080`, expected a string"]),
        ("[server]\nmax_body_bytes = 0", &["line 2: server.max_body_bytes: must be greater than 0, got 0"]),
        ("[server]\nmax_body_bytes = -1", &["line 2: server.max_body_bytes: invalid value: integer `-1`"]),
        (
            "[server]\nupstream_timeout_secs = 0\nconnect_timeout_secs = 0\nshutdown_grace_secs = 0",
            &[
                "line 2: server.upstream_timeout_secs: must be greater than 0, got 0",
                "line 3: server.connect_timeout_secs: must be greater than 0, got 0",
                "line 4: server.shutdown_grace_secs: must be greater than 0, got 0",
            ],
        ),
        (
            "[server]\nheader_read_timeout_secs = 0\nidle_timeout_secs = 0\nbody_timeout_secs = 0",
            &[
                "line 2: server.header_read_timeout_secs: must be greater than 0, got 0",
                "line 3: server.idle_timeout_secs: must be greater than 0, got 0",
                "line 4: server.body_timeout_secs: must be greater than 0, got 0",
            ],
        ),
        ("[server]\nmax_connections = 0", &["line 2: server.max_connections: must be between 1 and 1000000, got 0"]),
        ("[server]\nmax_concurrent_requests = -1", &["line 2: server.max_concurrent_requests: invalid value: integer `-1`"]),
        ("[server]\nworkers = 0", &["line 2: server.workers: must be between 1 and 1024, got 0"]),
        ("[server]\nworkers = 2000", &["line 2: server.workers: must be between 1 and 1024, got 2000"]),
        ("[server]\nlisten = \"127.0.0.1:1\"\nport = 1", &["line 3: server.port: unknown field `port`"]),
        ("server = 5", &["line 1: server: must be a table, got integer"]),
        ("[serverr]\nlisten = \"x\"", &["line 1: serverr: unknown key, expected one of server, admin"]),
        ("\n[admin]\nlisten = \"localhost\"", &["line 3: admin.listen: must be an address like"]),
        ("[admin]\ntoken_env = \"1TOKEN\"", &["line 2: admin.token_env: must be an environment variable name"]),
        ("[admin]\ntoken_env = \"\"", &["line 2: admin.token_env: must be an environment variable name"]),
        ("[store]\npath = \"\"", &["line 2: store.path: must not be empty"]),
        ("[store]\nurl = \"postgres://u:secret@db/x\"", &["line 2: store.url: must not contain a password: put it in the environment variable named by store.password_env"]),
        ("[store]\nurl = \"postgres://u@db/x?sslmode=on\"", &["line 2: store.url: sslmode \"on\" is not one of disable, allow, prefer, require, verify-ca, verify-full"]),
        ("[store]\nurl = \"mysql://u@db/x\"", &["line 2: store.url: must be a postgres:// or postgresql:// URL"]),
        ("[store]\npath = \"a.db\"\nurl = \"postgres://u@db/x\"", &["line 3: store.url: give either store.path (SQLite, one server) or store.url (PostgreSQL, a fleet), not both"]),
        ("[store]\npassword_env = \"PW\"", &["line 2: store.password_env: only goes with store.url"]),
        ("[store]\nurl = \"postgres://u@db/x\"\npassword_env = \"P-W\"", &["line 3: store.password_env: must be an environment variable name"]),
    ];
    for (text, expected) in cases {
        check(&format!("{text}{UPSTREAM}"), expected);
    }
}

#[test]
fn upstream_rules() {
    let cases: &[(&str, &[&str])] = &[
        ("", &["upstreams: at least one upstream is required"]),
        ("upstreams = {}", &["line 1: upstreams: at least one upstream is required"]),
        ("upstreams = 5", &["line 1: upstreams: must be a table, got integer"]),
        ("[upstreams]\na = 5", &["line 2: upstreams.a: must be a table, got integer"]),
        ("[upstreams.a]\napi_key_env = \"A\"", &["line 1: upstreams.a.base_url: is required"]),
        ("[upstreams.a]\nbase_url = \"ftp://x\"", &["line 2: upstreams.a.base_url: must start with http:// or https://"]),
        ("[upstreams.a]\nbase_url = \"api.openai.com\"", &["line 2: upstreams.a.base_url: must start with http:// or https://"]),
        ("[upstreams.a]\nbase_url = \"https://x/v1?k=1\"", &["line 2: upstreams.a.base_url: must not have a query string"]),
        ("[upstreams.a]\nbase_url = \"http://:80/v1\"", &["line 2: upstreams.a.base_url: must have a host"]),
        ("[upstreams.a]\nbase_url = \"https://exa mple.com\"", &["line 2: upstreams.a.base_url: invalid URL"]),
        ("[upstreams.a]\nbase_url = \"https://a\"\napi_key_env = \"MY-KEY\"", &["line 3: upstreams.a.api_key_env: must be an environment variable name"]),
        ("[upstreams.a]\nbase_url = \"https://a\"\napi_key_env = \"\"", &["line 3: upstreams.a.api_key_env: must be an environment variable name"]),
        ("[upstreams.a]\nbase_url = \"https://a\"\napi = \"gemini\"", &["line 3: upstreams.a.api: unknown variant `gemini`, expected `openai` or `anthropic`"]),
        ("[upstreams.a]\nbase_url = \"https://a\"\ndefault = \"yes\"", &["line 3: upstreams.a.default: invalid type: string \"yes\", expected a boolean"]),
        (
            "[upstreams.a]\nbase_url = \"https://a\"\n[upstreams.b]\nbase_url = \"https://b\"",
            &["line 1: upstreams: no upstream has default = true"],
        ),
        (
            "[upstreams.a]\nbase_url = \"https://a\"\ndefault = true\n\
             [upstreams.b]\nbase_url = \"https://b\"\ndefault = true\n\
             [upstreams.c]\nbase_url = \"https://c\"",
            &[
                "line 3: upstreams.a.default: only one upstream can have default = true, but a, b do",
                "line 6: upstreams.b.default: only one upstream can have default = true, but a, b do",
            ],
        ),
    ];
    for (text, expected) in cases {
        check(text, expected);
    }
}

/// A self-signed certificate in PEM, and its DER.
fn test_cert(name: &str) -> (String, CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    (certified.cert.pem(), certified.cert.der().clone())
}

#[test]
fn ca_file_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, _) = test_cert("ca.test");
    let key_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
    let unended = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n";
    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    // (base_url, file contents (None: no file), expected problem after the file's path)
    let cases: &[(&str, Option<&str>, &str)] = &[
        (
            "https://gw",
            None,
            "cannot read CA file {FILE}: No such file",
        ),
        ("https://gw", Some(""), "{FILE} holds no certificate"),
        (
            "https://gw",
            Some("just text\n"),
            "{FILE} holds no certificate",
        ),
        ("https://gw", Some(&key_pem), "{FILE} holds no certificate"),
        (
            "https://gw",
            Some(unended),
            "{FILE} is not valid PEM: a section has no END line",
        ),
        (
            "https://gw",
            Some(bad_base64),
            "{FILE} is not valid PEM: base64 decode error",
        ),
        (
            "https://gw",
            Some(not_der),
            "certificate 1 of {FILE} is not a valid X.509 certificate",
        ),
        (
            "http://gw",
            Some(&ca_pem),
            "only for https upstreams, but base_url is http://",
        ),
    ];
    for (i, (url, contents, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("ca{i}.pem"));
        if let Some(contents) = contents {
            std::fs::write(&file, contents).unwrap();
        }
        let file = file.to_str().unwrap();
        let text = format!("\n[upstreams.gw]\nbase_url = \"{url}\"\nca_file = \"{file}\"\n");
        let expected = format!(
            "line 4: upstreams.gw.ca_file: {}",
            expected.replace("{FILE}", file)
        );
        check(&text, &[&expected]);
    }
}

#[test]
fn ca_file_is_read_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (first_pem, first) = test_cert("ca-one.test");
    let (second_pem, second) = test_cert("ca-two.test");
    let bundle = format!("# internal CAs\n{first_pem}\n{second_pem}");
    std::fs::write(dir.path().join("cas.pem"), bundle).unwrap();
    let text = "[upstreams.gw]\nbase_url = \"https://gw.internal\"\nca_file = \"cas.pem\"\n";
    let config = Config::parse(text, dir.path()).unwrap();
    let ca = config.upstreams["gw"].ca_file.as_ref().unwrap();
    assert_eq!(ca.path, dir.path().join("cas.pem"));
    assert_eq!(ca.certs, [first, second]);
    let plain = parse("[upstreams.gw]\nbase_url = \"https://gw.internal\"\n").unwrap();
    assert_eq!(plain.upstreams["gw"].ca_file, None);
}

#[test]
fn route_rules() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("share = 1.5", "", &["line 3: routes.r.share: must be between 0 and 1, got 1.5"]),
        ("share = -0.1", "", &["line 3: routes.r.share: must be between 0 and 1, got -0.1"]),
        ("share = \"half\"", "", &["line 3: routes.r.share: invalid type: string \"half\", expected f64"]),
        ("phase = \"live\"", "", &["line 3: routes.r.phase: unknown phase \"live\": expected one of stable"]),
        ("phase = \"shadow\"", "", &["line 1: routes.r.candidate: phase \"shadow\" needs a candidate"]),
        ("phase = \"promoted\"", "", &["line 1: routes.r.candidate: phase \"promoted\" needs a candidate"]),
        (
            "phase = \"stable\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"gpt-4o-2024-11-20\"\n",
            &["line 3: routes.r.phase: phase is \"stable\" but a candidate is configured: set phase = \"shadow\""],
        ),
        (
            "",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"gpt-4o-2024-11-20\"\n",
            &["line 1: routes.r.phase: phase is \"stable\" but a candidate is configured"],
        ),
        ("sticky_key = \"cookie:x\"", "", &["line 3: routes.r.sticky_key: must be \"header:NAME\" or \"body:FIELD\", got \"cookie:x\""]),
        ("sticky_key = \"header:bad header\"", "", &["line 3: routes.r.sticky_key: \"bad header\" is not a valid header name"]),
        ("sticky_key = \"header:\"", "", &["line 3: routes.r.sticky_key: \"\" is not a valid header name"]),
        ("sticky_key = \"body:\"", "", &["line 3: routes.r.sticky_key: \"body:\" needs a field name"]),
        ("modle = \"r2\"", "", &["line 3: routes.r.modle: unknown field `modle`"]),
        ("stable = 5", "", &["line 4: invalid TOML: duplicate key"]),
        // A bad top-level key does not hide a problem in a sub-table.
        ("shar = 0.5", "[routes.r.shadow]\nmax_rps = 0\n", &[
            "line 3: routes.r.shar: unknown field `shar`",
            "line 8: routes.r.shadow.max_rps: must be greater than 0, got 0",
        ]),
        // Releases, tested on the candidate (its table starts on line 7).
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"nope\"\nmodel = \"gpt-4o-latest\"\n",
            &[
                "line 8: routes.r.candidate.upstream: unknown upstream \"nope\" (configured: openai)",
                "line 9: routes.r.candidate.model: \"gpt-4o-latest\" is not pinned: use a dated version",
            ],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nlabel = \"v4\"\n",
            &[
                "line 7: routes.r.candidate.upstream: is required",
                "line 7: routes.r.candidate.model: is required",
            ],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"\"\n",
            &["line 9: routes.r.candidate.model: must not be empty"],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"claude-3-5-sonnet-LATEST\"\n",
            &["line 9: routes.r.candidate.model: \"claude-3-5-sonnet-LATEST\" is not pinned"],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
             system_prompt = \"a\"\nsystem_prompt_file = \"prompts/support-v4.txt\"\n",
            &["line 11: routes.r.candidate.system_prompt_file: cannot be combined with system_prompt"],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
             system_prompt_file = \"prompts/missing.txt\"\n",
            &["line 10: routes.r.candidate.system_prompt_file: cannot read prompt file"],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
             params = { model = \"x\", stream = true, messages = [], when = 1979-05-27, temperature = 0.2 }\n",
            &[
                "line 10: routes.r.candidate.params.messages: is set by the proxy",
                "line 10: routes.r.candidate.params.model: is set by the proxy",
                "line 10: routes.r.candidate.params.stream: is set by the proxy",
                "line 10: routes.r.candidate.params.when: TOML dates and times cannot be sent as JSON",
            ],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
             params = { logit_bias = { x = nan } }\n",
            &["line 10: routes.r.candidate.params.logit_bias: nan and inf cannot be sent as JSON"],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
             params = \"temperature=0\"\n",
            &["line 10: routes.r.candidate.params: invalid type: string \"temperature=0\""],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
             prices = { prompt_per_mtok = -1, completion_per_mtok = 1 }\n",
            &["line 10: routes.r.candidate.prices.prompt_per_mtok: must be a number >= 0, got -1"],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
             prices = { prompt_per_mtok = 1 }\n",
            &["line 10: routes.r.candidate.prices: missing field `completion_per_mtok`"],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\n\
             prices = { prompt_per_mtok = 1, completion_per_mtok = 1, currency = \"EUR\" }\n",
            &["line 10: routes.r.candidate.prices.currency: unknown field `currency`"],
        ),
        (
            "phase = \"shadow\"",
            "[routes.r.candidate]\nupstream = \"openai\"\nmodel = \"m-2024-01-01\"\ntemperature = 0.2\n",
            &["line 10: routes.r.candidate.temperature: unknown field `temperature`"],
        ),
        (
            "phase = \"shadow\"\ncandidate = 5",
            "",
            &["line 4: routes.r.candidate: must be a table, got integer"],
        ),
        // Shadow limits.
        (
            "",
            "[routes.r.shadow]\nmax_inflight = 0\nmax_rps = 0\nmax_tokens_per_min = 0\ntimeout_secs = 0\n",
            &[
                "line 8: routes.r.shadow.max_inflight: must be at least 1, got 0",
                "line 9: routes.r.shadow.max_rps: must be greater than 0, got 0",
                "line 10: routes.r.shadow.max_tokens_per_min: must be greater than 0",
                "line 11: routes.r.shadow.timeout_secs: must be greater than 0, got 0",
            ],
        ),
        ("", "[routes.r.shadow]\nmax_rps = inf\n", &["line 8: routes.r.shadow.max_rps: must be greater than 0, got inf"]),
        ("", "[routes.r.shadow]\nmax_inflight = -3\n", &["line 8: routes.r.shadow.max_inflight: invalid value: integer `-3`"]),
        // Scoring.
        (
            "",
            "[routes.r.scoring]\nnoise_floor_share = 2\nkeep_worst = 10001\nkeep_random = 20000\n",
            &[
                "line 8: routes.r.scoring.noise_floor_share: must be between 0 and 1, got 2",
                "line 9: routes.r.scoring.keep_worst: must be at most 10000, got 10001",
                "line 10: routes.r.scoring.keep_random: must be at most 10000, got 20000",
            ],
        ),
        (
            "",
            "[routes.r.scoring]\nweights = { lexical = -1, structure = 0, length = 0, refusal = 0 }\n",
            &["line 8: routes.r.scoring.weights.lexical: must be a number >= 0, got -1"],
        ),
        (
            "",
            "[routes.r.scoring]\nweights = { lexical = 0, structure = 0, length = 0, refusal = 0 }\n",
            &["line 8: routes.r.scoring.weights: at least one weight must be greater than 0"],
        ),
        (
            "",
            "[routes.r.scoring]\nredact_requests = true\nweights = { lexicon = 1 }\n",
            &["line 9: routes.r.scoring.weights.lexicon: unknown field `lexicon`"],
        ),
        // Rollback.
        (
            "",
            "[routes.r.rollback]\nthreshold = 0\nwindow = 0\nmin_samples = 0\nmax_error_rate = 1.5\n",
            &[
                "line 8: routes.r.rollback.threshold: must be greater than 0 and at most 1, got 0",
                "line 9: routes.r.rollback.window: must be at least 1, got 0",
                "line 10: routes.r.rollback.min_samples: must be between 1 and window",
                "line 11: routes.r.rollback.max_error_rate: must be between 0 and 1, got 1.5",
            ],
        ),
        ("", "[routes.r.rollback]\nthreshold = 1.01\n", &["line 8: routes.r.rollback.threshold: must be greater than 0 and at most 1"]),
        ("", "[routes.r.rollback]\nwindow = 10\nmin_samples = 11\n", &["line 9: routes.r.rollback.min_samples: must be between 1 and window (10), got 11"]),
        ("", "[routes.r.rollback]\nmax_error_rate = -0.5\n", &["line 8: routes.r.rollback.max_error_rate: must be between 0 and 1, got -0.5"]),
        ("", "[routes.r.rollback]\ntreshold = 0.5\n", &["line 8: routes.r.rollback.treshold: unknown field `treshold`, expected one of `threshold`"]),
        ("", "[routes.r.rollback]\nauto = \"yes\"\n", &["line 8: routes.r.rollback.auto: invalid type: string \"yes\", expected a boolean"]),
        ("", "[routes.r.rollback]\nwindow = 2.5\n", &["line 8: routes.r.rollback.window: invalid type: floating point `2.5`"]),
        ("", "[routes.r]\n", &["line 7: invalid TOML: duplicate key"]),
    ];
    for (top, rest, expected) in cases {
        check(&route(top, rest), expected);
    }
}

#[test]
fn route_table_rules() {
    let stable = "upstream = \"openai\"\nmodel = \"gpt-4o-2024-08-06\"";
    let cases: Vec<(String, &[&str])> = vec![
        ("routes = []".to_owned(), &["line 1: routes: must be a table, got array"]),
        ("[routes]\nr = 1".to_owned(), &["line 2: routes.r: must be a table, got integer"]),
        ("[routes.r]\nmodel = \"r\"".to_owned(), &["line 1: routes.r.stable: is required"]),
        (
            format!("[routes.r]\nstable = {{ {} }}", stable.replace('\n', ", ")),
            &["line 1: routes.r.model: is required"],
        ),
        (
            format!("[routes.r]\nmodel = \"\"\n[routes.r.stable]\n{stable}"),
            &["line 2: routes.r.model: must not be empty"],
        ),
        (
            "[routes.r]\nmodel = \"r\"\n[routes.r.stable]\nupstream = \"azure\"\nmodel = \"gpt-4o-2024-08-06\"".to_owned(),
            &["line 4: routes.r.stable.upstream: unknown upstream \"azure\" (configured: openai)"],
        ),
        (
            format!("[routes.\"support bot\"]\nmodel = \"r\"\n[routes.\"support bot\".stable]\n{stable}"),
            &["line 1: routes.support bot: route name \"support bot\" must be non-empty and use only letters"],
        ),
        (
            format!("[routes.\"\"]\nmodel = \"r\"\n[routes.\"\".stable]\n{stable}"),
            &["line 1: routes.: route name \"\" must be non-empty"],
        ),
        (
            format!(
                "[routes.a]\nmodel = \"bot\"\n[routes.a.stable]\n{stable}\n\
                 [routes.b]\nmodel = \"bot\"\n[routes.b.stable]\n{stable}"
            ),
            &["line 7: routes.b.model: alias \"bot\" is already used by route \"a\""],
        ),
    ];
    for (text, expected) in cases {
        check(&format!("{text}{UPSTREAM}"), expected);
    }
}

#[test]
fn every_problem_in_every_section_is_reported() {
    let text = r#"[server]
listen = "0.0.0.0"
max_body_bytes = 0

[admin]
token_env = "admin token"

[store]
pth = "x.db"

[upstreams.openai]
base_url = "https://api.openai.com"
default = true

[upstreams.anthropic]
base_url = "api.anthropic.com"
default = true
api_key_env = "ANTHROPIC_API_KEY"

[routes.support-bot]
model = "support-bot"
phase = "canary"
share = 1.5

[routes.support-bot.stable]
upstream = "openia"
model = "gpt-4o-latest"

[routes.support-bot.candidate]
upstream = "anthropic"
model = "claude-sonnet-4-20250514"
params = { stream = true }

[routes.support-bot.rollback]
treshold = 0.5

[routes.faq]
model = "support-bot"
phase = "shadow"

[routes.faq.stable]
upstream = "openai"
model = "gpt-4o-mini-2024-07-18"

[routes.faq.scoring]
keep_worst = 100000
"#;
    check(
        text,
        &[
            "line 2: server.listen: must be an address",
            "line 3: server.max_body_bytes: must be greater than 0, got 0",
            "line 6: admin.token_env: must be an environment variable name",
            "line 9: store.pth: unknown field `pth`",
            "line 13: upstreams.openai.default: only one upstream can have default = true, but anthropic, openai do",
            "line 16: upstreams.anthropic.base_url: must start with http:// or https://",
            "line 17: upstreams.anthropic.default: only one upstream can have default = true, but anthropic, openai do",
            "line 23: routes.support-bot.share: must be between 0 and 1, got 1.5",
            "line 26: routes.support-bot.stable.upstream: unknown upstream \"openia\" (configured: anthropic, openai)",
            "line 27: routes.support-bot.stable.model: \"gpt-4o-latest\" is not pinned",
            "line 32: routes.support-bot.candidate.params.stream: is set by the proxy",
            "line 35: routes.support-bot.rollback.treshold: unknown field `treshold`",
            "line 37: routes.faq.candidate: phase \"shadow\" needs a candidate",
            "line 38: routes.faq.model: alias \"support-bot\" is already used by route \"support-bot\"",
            "line 46: routes.faq.scoring.keep_worst: must be at most 10000, got 100000",
        ],
    );
}

#[test]
fn error_display() {
    let with_line = ConfigError {
        key: "routes.support-bot.share".into(),
        line: Some(12),
        message: "must be between 0 and 1, got 1.5".into(),
    };
    assert_eq!(
        with_line.to_string(),
        "line 12: routes.support-bot.share: must be between 0 and 1, got 1.5"
    );
    let without_line = ConfigError {
        key: "upstreams".into(),
        line: None,
        message: "at least one upstream is required".into(),
    };
    assert_eq!(
        without_line.to_string(),
        "upstreams: at least one upstream is required"
    );
    let invalid = LoadError::Invalid {
        path: PathBuf::from("config/understudy.toml"),
        problems: vec![without_line, with_line],
    };
    assert_eq!(
        invalid.to_string(),
        "config/understudy.toml: 2 problem(s):\n  upstreams: at least one upstream is required\n  \
         line 12: routes.support-bot.share: must be between 0 and 1, got 1.5"
    );
    let missing = Config::load(Path::new("/nonexistent/understudy.toml")).unwrap_err();
    assert!(matches!(missing, LoadError::Read { .. }));
    assert!(missing
        .to_string()
        .starts_with("cannot read /nonexistent/understudy.toml: "));
}

#[test]
fn scoring_beyond_words_parses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::write(
        dir.path().join("schemas/reply.json"),
        r#"{"type": "object", "required": ["reply"]}"#,
    )
    .unwrap();
    let text = r##"
[upstreams.openai]
base_url = "https://api.openai.com"
[routes.r]
model = "bot"
[routes.r.stable]
upstream = "openai"
model = "gpt-4o-2024-08-06"
[routes.r.scoring]
noise_warmup = 30
weights = { lexical = 0.4, structure = 0.3, length = 0.1, refusal = 0.2, semantic = 2.0 }
[routes.r.scoring.semantic]
upstream = "openai"
model = "text-embedding-3-small"
[routes.r.scoring.judge]
upstream = "openai"
model = "gpt-4o-mini-2024-07-18"
rubric = "Friendly and correct."
max_rps = 2
[[routes.r.checks]]
name = "reply-schema"
json_schema_file = "schemas/reply.json"
[[routes.r.checks]]
name = "no-competitor"
must_not_match = "(?i)acme corp"
[[routes.r.checks]]
name = "args"
json_schema = { type = "object" }
on = "tool_arguments"
[[routes.r.checks]]
name = "short"
max_words = 120
"##;
    let config = Config::parse(text, dir.path()).unwrap();
    let r = &config.routes["r"];
    assert_eq!(r.scoring.noise_warmup, 30);
    assert_eq!(r.scoring.weights.semantic, 2.0);
    assert_eq!(r.scoring.weights.judge, 1.0, "configured, not weighted: 1");
    let semantic = r.scoring.semantic.as_ref().unwrap();
    assert_eq!(
        (
            semantic.model.as_str(),
            semantic.max_rps,
            semantic.max_input_chars
        ),
        ("text-embedding-3-small", 20.0, 8000)
    );
    let judge = r.scoring.judge.as_ref().unwrap();
    assert_eq!(judge.rubric, "Friendly and correct.");
    assert!(judge.both_orders);
    let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["reply-schema", "no-competitor", "args", "short"]);
    assert!(matches!(
        r.checks[2].rule,
        CheckRule::JsonSchema {
            on: CheckTarget::ToolArguments,
            ..
        }
    ));
    assert_eq!(r.checks[3].rule, CheckRule::MaxWords(120));
    // Without the sections the remote scorers weigh nothing.
    let plain = parse(&route("", "")).unwrap();
    let w = plain.routes["r"].scoring.weights;
    assert_eq!((w.semantic, w.judge), (0.0, 0.0));
    assert!(plain.routes["r"].checks.is_empty());
}

#[test]
fn scoring_beyond_words_rules() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[routes.r.scoring]\nweights = { semantic = 1.0 }\n",
            &["line 8: routes.r.scoring.weights.semantic: is 1 but [routes.r.scoring.semantic] is not configured"],
        ),
        (
            "[routes.r.scoring.semantic]\nupstream = \"nope\"\nmodel = \"e\"\n",
            &["line 8: routes.r.scoring.semantic.upstream: unknown upstream \"nope\" (configured: openai)"],
        ),
        (
            "[routes.r.scoring.judge]\nupstream = \"openai\"\nmodel = \"gpt-4o-latest\"\n",
            &[
                "line 7: routes.r.scoring.judge.rubric: is required (or rubric_file)",
                "line 9: routes.r.scoring.judge.model: \"gpt-4o-latest\" is not pinned",
            ],
        ),
        (
            "[routes.r.scoring.judge]\nupstream = \"openai\"\nmodel = \"m-1\"\nrubric = \"r\"\nmax_rps = 0\nprices = { prompt_per_mtok = -1, completion_per_mtok = 1 }\n",
            &[
                "line 11: routes.r.scoring.judge.max_rps: must be greater than 0, got 0",
                "line 12: routes.r.scoring.judge.prices.prompt_per_mtok: must be a number >= 0, got -1",
            ],
        ),
        (
            "[[routes.r.checks]]\nname = \"two\"\nmust_match = \"a\"\nmax_words = 3\n",
            &["line 7: routes.r.checks.0: needs exactly one of json_schema"],
        ),
        (
            "[[routes.r.checks]]\nname = \"bad\"\nmust_match = \"(unclosed\"\n",
            &["line 9: routes.r.checks.0.must_match: is not a valid regular expression"],
        ),
        (
            "[[routes.r.checks]]\nname = \"s\"\njson_schema = { type = 12 }\n",
            &["line 9: routes.r.checks.0.json_schema: is not a valid JSON Schema"],
        ),
        (
            "[[routes.r.checks]]\nname = \"a\"\nmax_words = 3\n[[routes.r.checks]]\nname = \"a\"\nmax_words = 4\n",
            &["line 11: routes.r.checks.1.name: check \"a\" is defined twice"],
        ),
        (
            "[[routes.r.checks]]\nmax_words = 3\non = \"text\"\n",
            &[
                "line 7: routes.r.checks.0.name: is required",
            ],
        ),
        (
            "[[routes.r.checks]]\nname = \"x\"\nmax_words = 3\non = \"text\"\n",
            &["line 10: routes.r.checks.0.on: applies only to json_schema and json_schema_file"],
        ),
        (
            "[[routes.r.checks]]\nname = \"x\"\nmust_match = \"a\"\ncolour = \"red\"\n",
            &["line 10: routes.r.checks.0.colour: unknown field `colour`"],
        ),
    ];
    for (rest, expected) in cases {
        check(&route("", rest), expected);
    }
}

#[test]
fn log_format() {
    let format = |text: &str| parse(&format!("{text}{UPSTREAM}")).map(|c| c.log.format);
    assert_eq!(format(""), Ok(LogFormat::Text));
    assert_eq!(format("[log]\nformat = \"json\"\n"), Ok(LogFormat::Json));
    assert_eq!(format("[log]\nformat = \"text\"\n"), Ok(LogFormat::Text));
    check(
        &format!("[log]\nformat = \"yaml\"\nlevel = 3\n{UPSTREAM}"),
        &["line 3: log.level: unknown field `level`"],
    );
    check(
        &format!("[log]\nformat = \"yaml\"\n{UPSTREAM}"),
        &["line 2: log.format: unknown log format \"yaml\", expected one of text, json"],
    );
}
