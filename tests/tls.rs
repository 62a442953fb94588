//! Upstreams over TLS: a private CA named by `ca_file` is trusted (HTTP/1.1 and, when the
//! upstream offers it by ALPN, HTTP/2), and without it the upstream's certificate is refused
//! with a 502 that does not reveal the upstream's URL. The TLS upstream is a relay that
//! terminates TLS with certificates made at test time and forwards the bytes to the simulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use understudy_sim::Behavior;

const MODEL: &str = "sim-tls-2024-08-06";

/// A private CA (its PEM) and a certificate it issued for `localhost` and `127.0.0.1`.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn pki() -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "Understudy test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let mut leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![cert.der().clone(), ca.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

/// Terminates TLS on 127.0.0.1 and relays each connection's bytes to the plain simulator.
struct TlsRelay {
    port: u16,
    /// The ALPN protocol of each completed handshake.
    alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    task: JoinHandle<()>,
}

impl TlsRelay {
    async fn start(pki: &Pki, alpn: &[&[u8]], sim_url: &str) -> TlsRelay {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(pki.chain.clone(), PrivateKeyDer::Pkcs8(pki.key.clone_key()))
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let target: SocketAddr = sim_url.strip_prefix("http://").unwrap().parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                // Dropped with the task when the relay is: its connections end with it.
                let mut connections = JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let seen = Arc::clone(&seen);
                    connections.spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                        seen.lock().unwrap().push(alpn);
                        let mut plain = TcpStream::connect(target).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    });
                }
            }
        });
        TlsRelay {
            port,
            alpn: seen,
            task,
        }
    }

    fn negotiated(&self) -> Vec<Option<Vec<u8>>> {
        self.alpn.lock().unwrap().clone()
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One upstream per (name, base_url, ca_file), the first of them the default, and a route
/// `NAME-bot` to it. No `[upstreams.sim]`: the simulator is reached through the TLS relays only.
fn config(upstreams: &[(&'static str, String, Option<&str>)]) -> String {
    let mut config = support::config().upstream_timeout_secs(10).without_sim();
    let mut routes = String::new();
    for (i, (name, url, ca_file)) in upstreams.iter().enumerate() {
        let mut upstream = format!("base_url = \"{url}\"\n");
        if let Some(ca_file) = ca_file {
            upstream.push_str(&format!("ca_file = \"{ca_file}\"\n"));
        }
        config = config.upstream(name, &upstream);
        if i == 0 {
            config = config.default_upstream(name);
        }
        routes.push_str(&format!(
            "[routes.{name}]\nmodel = \"{name}-bot\"\n[routes.{name}.stable]\n\
             upstream = \"{name}\"\nmodel = \"{MODEL}\"\n"
        ));
    }
    config.routes(&routes)
}

/// The `model` of a chat completion, or of every chunk of a streamed one.
fn models(reply: &Reply, stream: bool) -> Vec<Value> {
    if !stream {
        return vec![reply.json()["model"].clone()];
    }
    reply
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["model"].clone())
        .collect()
}

#[tokio::test]
async fn a_private_ca_in_ca_file_is_trusted() {
    let sim = Sim::start(Behavior::default()).await;
    let pki = pki();
    let h1 = TlsRelay::start(&pki, &[], &sim.url).await;
    let h2 = TlsRelay::start(&pki, &[b"h2", b"http/1.1"], &sim.url).await;
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let ca_file = ca_file.to_str().unwrap();
    let toml = config(&[
        (
            "h1",
            format!("https://localhost:{}", h1.port),
            Some(ca_file),
        ),
        (
            "h2",
            format!("https://127.0.0.1:{}", h2.port),
            Some(ca_file),
        ),
    ]);
    let (server, _dir) = Server::start(&toml, &sim.url).await;

    for name in ["h1", "h2"] {
        let alias = format!("{name}-bot");
        for stream in [false, true] {
            let body = request_for("/v1/chat/completions", &alias, "Where is my order?", stream);
            let url = format!("{}/v1/chat/completions", server.proxy);
            let reply = post(&url, &body, &[]).await;
            assert_eq!(
                reply.status,
                200,
                "{name} stream={stream}: {}",
                reply.text()
            );
            assert_eq!(reply.header("x-understudy-route"), Some(name));

            // The simulator got the release's model, through the TLS relay.
            let sent = sim.sim.take_requests();
            assert_eq!(sent.len(), 1, "{name} stream={stream}");
            assert_eq!(sent[0].path, "/v1/chat/completions");
            let got: Value = serde_json::from_slice(&sent[0].body).unwrap();
            assert_eq!(got["model"], MODEL);
            assert_eq!(got["stream"], stream);

            // The client got the answer under its alias.
            let seen = models(&reply, stream);
            assert!(seen.len() >= if stream { 3 } else { 1 }, "{name}: {seen:?}");
            assert!(
                seen.iter().all(|m| *m == alias),
                "{name} stream={stream}: {seen:?}"
            );
            assert!(!reply.text().contains(MODEL));
        }
    }
    // HTTP/2 where the upstream offered it by ALPN, HTTP/1.1 where it offered nothing.
    let (h1, h2) = (h1.negotiated(), h2.negotiated());
    assert!(!h1.is_empty() && h1.iter().all(Option::is_none), "{h1:?}");
    assert!(
        !h2.is_empty() && h2.iter().all(|p| p.as_deref() == Some(b"h2")),
        "{h2:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn without_ca_file_the_private_ca_is_refused_with_a_502() {
    let sim = Sim::start(Behavior::default()).await;
    let pki = pki();
    let relay = TlsRelay::start(&pki, &[], &sim.url).await;
    let base_url = format!("https://localhost:{}", relay.port);
    let (server, _dir) = Server::start(&config(&[("gw", base_url.clone(), None)]), &sim.url).await;

    for stream in [false, true] {
        let body = request_for("/v1/chat/completions", "gw-bot", "hello", stream);
        let reply = post(&format!("{}/v1/chat/completions", server.proxy), &body, &[]).await;
        assert_eq!(reply.status, 502, "stream={stream}: {}", reply.text());
        let err = reply.json();
        assert_eq!(err["error"]["type"], "server_error");
        assert_eq!(err["error"]["code"], "upstream_unreachable");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("upstream gw"), "{message}");
        assert!(message.contains("certificate"), "{message}");
        let text = reply.text();
        for secret in [base_url.as_str(), "localhost", &relay.port.to_string()] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    assert!(relay.negotiated().is_empty(), "a handshake completed");
    assert!(sim.sim.requests().is_empty());
    server.shutdown().await;
}
