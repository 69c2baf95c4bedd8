//! Guarantees of the security model that each need a test of their own: the
//! JWT checks a token must pass, who a rate limit counts and how far a burst
//! reaches, an unsigned id answered without asking Redis, and the TLS
//! versions and ALPN protocols the API port speaks.

use std::process::{Command, Stdio};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use replyway_gateway::auth::{AuthConfig, JwtConfig, RouteAuth};
use replyway_gateway::ratelimit::RateLimitConfig;
use replyway_gateway::routes::RouteConfig;
use replyway_shared::correlation::Signer;
use replyway_shared::record::new_correlation_id;
use replyway_tests::probe::{self, spawn_gateway};
use replyway_tests::tls::{certificates, key_pair};
use replyway_tests::{Stack, StackOptions, eventually};

type TestResult = anyhow::Result<()>;

const SECRET: &str = "correlation secret of the test deployment, 32+ bytes";
const HS_SECRET: &str = "hs256 secret of the test issuer, 32+ bytes";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "replyway-test";

fn route(topic: &str, path: &str, auth: RouteAuth, scopes: &[&str]) -> RouteConfig {
    RouteConfig {
        path: path.into(),
        topic: topic.into(),
        timeout: Duration::from_secs(10),
        auth,
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..RouteConfig::default()
    }
}

/// Whether the gateway at `base` answers `POST /open` within 20 s.
async fn open_route_answers(http: &reqwest::Client, base: &str) -> bool {
    eventually(Duration::from_secs(20), || async {
        http.post(format!("{base}/open"))
            .body("warm")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
}

fn now_secs() -> i64 {
    let millis = replyway_shared::record::unix_millis(std::time::SystemTime::now());
    i64::try_from(millis / 1000).unwrap_or(0)
}

/// Valid claims (principal in `client_id`, both scopes), with `changes` merged in.
fn claims(changes: &Value) -> Value {
    let now = now_secs();
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "client_id": "svc-42",
        "scope": "orders:write orders:read", "exp": now + 300, "iat": now,
    });
    if let (Some(map), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        for (k, v) in changes {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key).expect("a token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwt_nbf_leeway_scp_principal_claim_and_algorithms_are_enforced() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let (rsa_private, rsa_public) = key_pair(dir.path(), "rsa")?;
    let (ec_private, ec_public) = key_pair(dir.path(), "ec")?;
    let mut settings = stack.gateway_settings.clone();
    settings.auth = AuthConfig {
        jwt: Some(JwtConfig {
            issuer: Some(ISSUER.into()),
            audience: vec![AUDIENCE.into()],
            // RS256 is not accepted, although an RSA key is configured.
            algorithms: vec!["HS256".into(), "ES256".into()],
            hs256_secret: Some(HS_SECRET.into()),
            public_keys_pem: vec![rsa_public.clone(), ec_public],
            leeway: Duration::from_secs(20),
            principal_claim: "client_id".into(),
            ..JwtConfig::default()
        }),
        ..AuthConfig::default()
    };
    let topic = stack.echo_topic.clone();
    settings.routes = vec![
        route(
            &topic,
            "/scoped",
            RouteAuth::Jwt,
            &["orders:write", "orders:read"],
        ),
        route(&topic, "/jwt", RouteAuth::Jwt, &[]),
        route(&topic, "/open", RouteAuth::None, &[]),
    ];
    let (base, stop) = spawn_gateway(settings).await?;
    assert!(open_route_answers(&stack.http, &base).await);
    let send = |path: &str, token: String| {
        stack
            .http
            .post(format!("{base}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .body(format!("to {path}"))
            .send()
    };
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let es = EncodingKey::from_ec_pem(ec_private.as_bytes())?;
    let rs = EncodingKey::from_rsa_pem(rsa_private.as_bytes())?;
    let now = now_secs();
    let expect = |name: &'static str, status: u16, challenge: Option<&'static str>| {
        move |r: reqwest::Response| {
            assert_eq!(r.status(), status, "{name}");
            if let Some(wanted) = challenge {
                let got = r.headers()["www-authenticate"].to_str().unwrap_or_default();
                assert!(got.contains(wanted), "{name}: {got}");
            }
        }
    };

    // principal_claim: the principal is `client_id`, not `sub`.
    let r = send("/jwt", sign(Algorithm::HS256, &hs, &claims(&json!({})))).await?;
    assert_eq!(r.status(), 200);
    let id = r.headers()["correlation-id"].to_str()?.to_owned();
    let records = stack
        .read_topic(&topic, Duration::from_secs(20), |r| {
            r.iter()
                .any(|m| probe::header(m, "correlation-id").as_deref() == Some(&id))
        })
        .await?;
    let command = records
        .iter()
        .find(|m| probe::header(m, "correlation-id").as_deref() == Some(&id))
        .map(replyway_shared::Request::from_message)
        .expect("the command")?;
    assert_eq!(command.client_id.as_deref(), Some("svc-42"));
    let no_principal = claims(&json!({"client_id": null}));
    expect("sub only", 401, Some("invalid_token"))(
        send("/jwt", sign(Algorithm::HS256, &hs, &no_principal)).await?,
    );

    // Scopes from an `scp` list, from the `scope` string, or both.
    for (name, changes, status) in [
        (
            "scp list",
            json!({"scope": null, "scp": ["orders:write", "orders:read"]}),
            200,
        ),
        (
            "scope and scp",
            json!({"scope": "orders:write", "scp": ["orders:read"]}),
            200,
        ),
        (
            "scp list short of one",
            json!({"scope": null, "scp": ["orders:read"]}),
            403,
        ),
    ] {
        let r = send("/scoped", sign(Algorithm::HS256, &hs, &claims(&changes))).await?;
        let challenge =
            (status == 403).then_some(r#"error="insufficient_scope", scope="orders:write""#);
        expect(name, status, challenge)(r);
    }

    // nbf and exp, with a leeway of 20 s (the library's default is 60 s).
    for (name, changes, status) in [
        ("nbf within the leeway", json!({"nbf": now + 5}), 200),
        ("exp within the leeway", json!({"exp": now - 5}), 200),
        ("nbf far ahead", json!({"nbf": now + 300}), 401),
        ("nbf past the leeway", json!({"nbf": now + 45}), 401),
        ("exp past the leeway", json!({"exp": now - 45}), 401),
    ] {
        let r = send("/jwt", sign(Algorithm::HS256, &hs, &claims(&changes))).await?;
        let challenge = (status == 401).then_some("invalid_token");
        expect(name, status, challenge)(r);
    }

    // Only the configured algorithms.
    let good = claims(&json!({}));
    let confused = EncodingKey::from_secret(rsa_public.as_bytes());
    for (name, token, status) in [
        ("ES256", sign(Algorithm::ES256, &es, &good), 200),
        ("HS256", sign(Algorithm::HS256, &hs, &good), 200),
        (
            "RS256 with the configured RSA key",
            sign(Algorithm::RS256, &rs, &good),
            401,
        ),
        (
            "HS384 with the HS secret",
            sign(Algorithm::HS384, &hs, &good),
            401,
        ),
        (
            "HS256 keyed with the RSA public key",
            sign(Algorithm::HS256, &confused, &good),
            401,
        ),
    ] {
        let challenge = (status == 401).then_some("invalid_token");
        expect(name, status, challenge)(send("/jwt", token).await?);
    }
    stop.cancel();
    stack.shutdown().await
}

fn limited(topic: &str, path: &str, requests: u32, burst: Option<u32>) -> RouteConfig {
    RouteConfig {
        rate_limit: Some(RateLimitConfig {
            requests,
            per: Duration::from_secs(60),
            burst,
        }),
        ..route(topic, path, RouteAuth::None, &[])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_count_the_client_ip_header_address_and_allow_bursts() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let mut settings = stack.gateway_settings.clone();
    settings.client_ip_header = Some("x-forwarded-for".into());
    let topic = stack.echo_topic.clone();
    settings.routes = vec![
        limited(&topic, "/by-address", 2, None),
        // 2 a minute, 5 at once; 10 a minute, 2 at once.
        limited(&topic, "/burst-above", 2, Some(5)),
        limited(&topic, "/burst-below", 10, Some(2)),
        route(&topic, "/open", RouteAuth::None, &[]),
    ];
    let (base, stop) = spawn_gateway(settings).await?;
    assert!(open_route_answers(&stack.http, &base).await);
    let call = |path: &str, forwarded: Option<&str>| {
        let mut request = stack.http.post(format!("{base}{path}")).body("x");
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        request.send()
    };
    // Every call comes from 127.0.0.1; the proxy's header names the caller.
    let proxied = Some("203.0.113.7, 10.0.0.1");
    for _ in 0..2 {
        assert_eq!(call("/by-address", proxied).await?.status(), 200);
    }
    assert_eq!(call("/by-address", proxied).await?.status(), 429);
    // The first address of the list is the caller.
    assert_eq!(
        call("/by-address", Some("203.0.113.7")).await?.status(),
        429
    );
    // Another client behind the same proxy, and a caller without the header
    // (counted by the connection's peer), have limits of their own.
    assert_eq!(
        call("/by-address", Some("203.0.113.8, 10.0.0.1"))
            .await?
            .status(),
        200
    );
    assert_eq!(call("/by-address", None).await?.status(), 200);

    // A burst above the sustained rate, and one below it.
    for (path, burst, interval_secs) in [("/burst-above", 5, 30), ("/burst-below", 2, 6)] {
        let caller = Some(if burst == 5 {
            "198.51.100.1"
        } else {
            "198.51.100.2"
        });
        for n in 0..burst {
            let r = call(path, caller).await?;
            assert_eq!(r.status(), 200, "{path} request {n}");
            let limit = r.headers()["ratelimit"].to_str()?.to_owned();
            let parts: Vec<&str> = limit.split(", ").collect();
            assert_eq!(
                parts[..2],
                [
                    format!("limit={burst}"),
                    format!("remaining={}", burst - 1 - n)
                ],
                "{path}: {limit}"
            );
            assert_eq!(
                r.headers()["ratelimit-policy"],
                format!("{burst};w=60").as_str()
            );
        }
        let r = call(path, caller).await?;
        assert_eq!(r.status(), 429, "{path}: a request past the burst");
        let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
        assert!(
            (1..=interval_secs).contains(&retry),
            "{path}: retry after {retry} s, one request every {interval_secs} s"
        );
    }
    stop.cancel();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsigned_reply_id_is_answered_404_without_a_redis_call() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: |g| g.correlation_secret = Some(SECRET.into()),
        collector: |c| c.correlation_secret = Some(SECRET.into()),
        ..StackOptions::default()
    })
    .await?;
    let signer = Signer::new("correlation_secret", SECRET)?;
    let fetch = |id: String, prefer: Option<&'static str>| {
        let mut request = stack.http.get(stack.url(0, &format!("/v1/replies/{id}")));
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        request.send()
    };
    // A signed id nobody asked for is looked up: the count sees it.
    let before = probe::redis_commands(&stack.redis).await?;
    assert_eq!(fetch(signer.issue(), None).await?.status(), 404);
    let after = probe::redis_commands(&stack.redis).await?;
    assert!(after > before, "the probe did not see the gateway's lookup");

    let issued = signer.issue();
    let unsigned = new_correlation_id();
    let forged = format!("{}.{}", &issued[..36], "0".repeat(32));
    let before = probe::redis_commands(&stack.redis).await?;
    for id in [unsigned, forged] {
        for prefer in [None, Some("wait=5")] {
            let started = std::time::Instant::now();
            let r = fetch(id.clone(), prefer).await?;
            assert_eq!(r.status(), 404, "{id} {prefer:?}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{id} {prefer:?} waited"
            );
            let problem: Value = r.json().await?;
            assert_eq!(problem["type"], "urn:replyway:problem:unknown-reply");
            assert_eq!(problem["correlation_id"], id.as_str());
        }
    }
    let after = probe::redis_commands(&stack.redis).await?;
    assert_eq!(after, before, "unsigned ids were looked up in Redis");
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_1_2_and_1_3_each_serve_http1_and_h2_by_alpn() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    certificates(dir.path())?;
    let mut settings = stack.gateway_settings.clone();
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    settings.tls = Some(replyway_gateway::tls::TlsConfig {
        cert_file: file("cert.pem"),
        key_file: file("key.pem"),
    });
    let (base, stop) = spawn_gateway(settings).await?;
    let https = base.replace("http://", "https://");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem"))?)?;
    use reqwest::tls::Version as Tls;
    for (tls, tls_name) in [(Tls::TLS_1_2, "TLSv1.2"), (Tls::TLS_1_3, "TLSv1.3")] {
        for http1 in [true, false] {
            let mut builder = reqwest::Client::builder()
                .use_rustls_tls()
                .add_root_certificate(ca.clone())
                .min_tls_version(tls)
                .max_tls_version(tls)
                .timeout(Duration::from_secs(30));
            if http1 {
                builder = builder.http1_only();
            }
            let client = builder.build()?;
            let body = format!("over {tls_name}, http1 only: {http1}");
            let answered = eventually(Duration::from_secs(20), || async {
                client
                    .get(format!("{https}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            })
            .await;
            if !answered {
                let e = client.get(format!("{https}/healthz")).send().await;
                panic!("{tls_name}, http1 only {http1}: no answer: {e:?}");
            }
            let r = client
                .post(format!("{https}/echo"))
                .body(body.clone())
                .send()
                .await?;
            assert_eq!(r.status(), 200, "{tls_name}, http1 only {http1}");
            let wanted = if http1 {
                reqwest::Version::HTTP_11
            } else {
                reqwest::Version::HTTP_2
            };
            assert_eq!(r.version(), wanted, "{tls_name}, http1 only {http1}");
            let text = r.text().await?;
            assert_eq!(text, body);
        }
    }
    // What was negotiated, as another TLS stack (OpenSSL) sees it.
    let port = https.rsplit(':').next().unwrap_or_default().to_owned();
    let connect = format!("127.0.0.1:{port}");
    let ca_file = file("ca.pem");
    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        for alpn in ["http/1.1", "h2"] {
            let out = Command::new("openssl")
                .args([
                    "s_client", "-connect", &connect, flag, "-alpn", alpn, "-CAfile", &ca_file,
                ])
                .stdin(Stdio::null())
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!("Protocol  : {protocol}"))
                    || text.contains(&format!("New, {protocol}")),
                "{flag}: {text}"
            );
            assert!(
                text.contains(&format!("ALPN protocol: {alpn}")),
                "{flag} {alpn}: {text}"
            );
            assert!(
                text.contains("Verify return code: 0 (ok)"),
                "{flag}: {text}"
            );
        }
    }
    stop.cancel();
    stack.shutdown().await
}
