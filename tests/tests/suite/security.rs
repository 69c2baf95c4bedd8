//! Security: signed correlation ids, authentication, reply confidentiality,
//! rate limits and TLS, end to end.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::Headers;

use replyway_shared::correlation::Signer;
use replyway_shared::requester::{Requester, RequesterOptions};
use replyway_tests::probe::spawn_gateway;
use replyway_tests::tls::{certificates, key_pair};
use replyway_tests::{Stack, StackOptions, eventually, produce};

type TestResult = anyhow::Result<()>;

const SECRET: &str = "correlation secret of the test deployment, 32+ bytes";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_replies_to_ids_this_deployment_issued_are_stored() -> TestResult {
    let stack = Stack::start(StackOptions {
        dead_letters: true,
        gateway: |g| g.correlation_secret = Some(SECRET.into()),
        collector: |c| c.correlation_secret = Some(SECRET.into()),
        ..StackOptions::default()
    })
    .await?;
    let signer = Signer::new("test", SECRET)?;

    // Issued ids are signed, and their replies arrive.
    let r = stack
        .http
        .post(stack.url(0, "/echo"))
        .body("signed")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let id = r.headers()["correlation-id"].to_str()?.to_owned();
    assert!(signer.verify(&id), "{id} is not signed");
    assert_eq!(r.text().await?, "signed");

    // Replies planted under ids no gateway issued: rejected and dead-lettered.
    let stats = stack.collector_stats.clone();
    let malformed_before = stats.malformed.load(Ordering::Relaxed);
    let unsigned = replyway_shared::record::new_correlation_id();
    let forged = format!("{}.{}", &id[..36], "0".repeat(32));
    let producer = stack.broker.producer()?;
    for planted in [&unsigned, &forged] {
        produce(
            &producer,
            &stack.reply_topic,
            Some(planted),
            &[],
            b"planted",
        )
        .await?;
    }
    let rejected = eventually(Duration::from_secs(15), || async {
        stats.malformed.load(Ordering::Relaxed) >= malformed_before + 2
    })
    .await;
    assert!(rejected, "planted replies were not rejected");
    let letters = stack
        .read_topic(
            stack.dead_letter_topic.as_deref().unwrap_or_default(),
            Duration::from_secs(20),
            |r| r.len() >= 2,
        )
        .await?;
    for letter in &letters {
        let reason = letter
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "replyway-dead-letter-reason")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_default();
        assert_eq!(reason, "unsigned_correlation_id");
        assert_eq!(letter.payload(), Some(&b"planted"[..]));
    }
    assert!(
        stack
            .redis_keys(&format!("{{{unsigned}}}:reply"))
            .await?
            .is_empty(),
        "a planted reply reached Redis"
    );
    // A gateway does not even look them up.
    for planted in [&unsigned, &forged] {
        let r = stack
            .http
            .get(stack.url(0, &format!("/v1/replies/{planted}")))
            .send()
            .await?;
        assert_eq!(r.status(), 404);
    }

    // A Requester with the deployment's secret issues ids the collector accepts.
    let requester = Requester::start(
        &stack.broker.kafka_settings(),
        &stack.gateway_settings.redis,
        RequesterOptions {
            correlation_secret: Some(SECRET.into()),
            ..RequesterOptions::new(&stack.reply_topic)
        },
    )?;
    assert!(eventually(Duration::from_secs(10), || async { requester.is_live() }).await);
    let reply = requester
        .request(&stack.echo_topic, "from a service", Duration::from_secs(10))
        .await?;
    assert_eq!(&reply.body[..], b"from a service");
    requester.stop().await;
    stack.shutdown().await
}

// ---- authentication, confidentiality, rate limits, TLS -----------------------

use replyway_gateway::auth::{ApiKeyConfig, AuthConfig, JwtConfig, RouteAuth};
use replyway_gateway::ratelimit::RateLimitConfig;
use replyway_gateway::routes::RouteConfig;
use serde_json::json;
use sha2::Digest;

const HS_SECRET: &str = "hs256 secret of the test issuer, 32+ bytes";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "replyway-test";

fn sha256_hex(text: &str) -> String {
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

fn token(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("a token")
}

fn claims(sub: &str, scope: &str, exp_in: i64) -> serde_json::Value {
    let now =
        i64::try_from(replyway_shared::record::unix_millis(std::time::SystemTime::now()) / 1000)
            .unwrap_or(0);
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope, "exp": now + exp_in, "iat": now })
}

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

/// Whether the gateway at `base` answers its unauthenticated route within 20 s
/// (its consumer groups have joined).
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

fn secured(
    stack: &Stack,
    dir: &std::path::Path,
    rsa_pub: &str,
    ec_pub: &str,
) -> anyhow::Result<replyway_gateway::Settings> {
    // The EC key comes from a JWKS file, with a key id.
    let jwk = {
        let key = jsonwebtoken::DecodingKey::from_ec_pem(ec_pub.as_bytes())?;
        let _ = key;
        // Build the JWK from the public key's coordinates (openssl prints them).
        let text = std::process::Command::new("openssl")
            .args(["pkey", "-pubin", "-noout", "-text", "-in"])
            .arg(dir.join("ec.pub"))
            .output()?
            .stdout;
        let text = String::from_utf8(text)?;
        let hex: String = text
            .lines()
            .skip_while(|l| !l.starts_with("pub:"))
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .flat_map(|l| l.trim().split(':').map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        anyhow::ensure!(
            bytes.len() == 65 && bytes[0] == 4,
            "an uncompressed P-256 point"
        );
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({ "kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
                "x": b64(&bytes[1..33]), "y": b64(&bytes[33..65]) })
    };
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string())?;
    let mut settings = stack.gateway_settings.clone();
    settings.admin_listen = String::new();
    settings.auth = AuthConfig {
        api_keys: vec![
            ApiKeyConfig {
                id: "shop-7".into(),
                sha256: sha256_hex("key-of-shop-7"),
                scopes: vec!["orders:write".into()],
            },
            ApiKeyConfig {
                id: "reader-1".into(),
                sha256: sha256_hex("key-of-reader-1"),
                scopes: vec!["orders:read".into()],
            },
        ],
        jwt: Some(JwtConfig {
            issuer: Some(ISSUER.into()),
            audience: vec![AUDIENCE.into()],
            algorithms: vec!["HS256".into(), "RS256".into(), "ES256".into()],
            hs256_secret: Some(HS_SECRET.into()),
            public_keys_pem: vec![rsa_pub.to_owned()],
            jwks_file: Some(jwks.to_string_lossy().into_owned()),
            leeway: Duration::from_secs(0),
            ..JwtConfig::default()
        }),
        ..AuthConfig::default()
    };
    settings.routes = vec![
        route(
            &stack.echo_topic,
            "/secure/key",
            RouteAuth::ApiKey,
            &["orders:write"],
        ),
        route(
            &stack.echo_topic,
            "/secure/jwt",
            RouteAuth::Jwt,
            &["orders:write"],
        ),
        route(&stack.echo_topic, "/secure/any", RouteAuth::Any, &[]),
        route(&stack.echo_topic, "/open", RouteAuth::None, &[]),
        RouteConfig {
            rate_limit: Some(RateLimitConfig {
                requests: 3,
                per: Duration::from_secs(60),
                burst: None,
            }),
            ..route(&stack.echo_topic, "/limited", RouteAuth::Any, &[])
        },
        RouteConfig {
            rate_limit: Some(RateLimitConfig {
                requests: 2,
                per: Duration::from_secs(60),
                burst: None,
            }),
            ..route(&stack.echo_topic, "/limited-open", RouteAuth::None, &[])
        },
    ];
    Ok(settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_let_in_only_who_belongs_and_replies_go_only_to_their_owner() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let (rsa_private, rsa_public) = key_pair(dir.path(), "rsa")?;
    let (ec_private, ec_public) = key_pair(dir.path(), "ec")?;
    let (base, stop) = spawn_gateway(secured(&stack, dir.path(), &rsa_public, &ec_public)?).await?;
    let http = &stack.http;
    assert!(open_route_answers(http, &base).await);
    let post = |path: &str, auth: Option<String>| {
        let mut request = http
            .post(format!("{base}{path}"))
            .body(format!("to {path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    let challenge = |r: &reqwest::Response| {
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };

    // API keys.
    let r = post("/secure/key", None).await?;
    assert_eq!(r.status(), 401);
    assert_eq!(challenge(&r), r#"Bearer realm="replyway""#);
    let r = post("/secure/key", Some("Bearer wrong-key".into())).await?;
    assert_eq!(r.status(), 401);
    assert!(challenge(&r).contains(r#"error="invalid_token""#));
    let r = post("/secure/key", Some("Bearer key-of-reader-1".into())).await?;
    assert_eq!(r.status(), 403);
    assert!(challenge(&r).contains(r#"error="insufficient_scope", scope="orders:write""#));
    let r = post("/secure/key", Some("Bearer key-of-shop-7".into())).await?;
    assert_eq!(r.status(), 200);
    let shop_id = r.headers()["correlation-id"].to_str()?.to_owned();

    // The principal reaches the service as client-id.
    let records = stack
        .read_topic(&stack.echo_topic, Duration::from_secs(20), |r| {
            r.iter().any(|m| m.key() == Some(shop_id.as_bytes()))
        })
        .await?;
    let command = records
        .iter()
        .find(|m| m.key() == Some(shop_id.as_bytes()))
        .map(replyway_shared::Request::from_message)
        .expect("the command")?;
    assert_eq!(command.client_id.as_deref(), Some("shop-7"));

    // JWTs: HS256, RS256 (PEM), ES256 (JWKS with kid); and the ways they fail.
    let hs = jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes());
    let rs = jsonwebtoken::EncodingKey::from_rsa_pem(rsa_private.as_bytes())?;
    let es = jsonwebtoken::EncodingKey::from_ec_pem(ec_private.as_bytes())?;
    use jsonwebtoken::Algorithm::{ES256, HS256, RS256};
    let good = claims("alice", "orders:write orders:read", 300);
    for (name, t) in [
        ("HS256", token(HS256, &hs, None, &good)),
        ("RS256", token(RS256, &rs, None, &good)),
        ("ES256 via JWKS", token(ES256, &es, Some("ec-1"), &good)),
    ] {
        let r = post("/secure/jwt", Some(format!("Bearer {t}"))).await?;
        assert_eq!(r.status(), 200, "{name}");
    }
    let other_hs = jsonwebtoken::EncodingKey::from_secret(b"another secret, not the issuer's one");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://elsewhere.test");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut no_sub = good.clone();
    no_sub.as_object_mut().expect("claims").remove("sub");
    for (name, t) in [
        (
            "expired",
            token(HS256, &hs, None, &claims("alice", "orders:write", -60)),
        ),
        ("wrong issuer", token(HS256, &hs, None, &wrong_iss)),
        ("wrong audience", token(HS256, &hs, None, &wrong_aud)),
        ("no subject", token(HS256, &hs, None, &no_sub)),
        ("foreign key", token(HS256, &other_hs, None, &good)),
        ("unknown kid", token(ES256, &es, Some("ec-2"), &good)),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let r = post("/secure/jwt", Some(format!("Bearer {t}"))).await?;
        assert_eq!(r.status(), 401, "{name}");
        assert!(challenge(&r).contains("invalid_token"), "{name}");
    }
    // alg "none" is never accepted.
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(good.clone())
    );
    assert_eq!(
        post("/secure/jwt", Some(format!("Bearer {none}")))
            .await?
            .status(),
        401
    );
    let r = post(
        "/secure/jwt",
        Some(format!(
            "Bearer {}",
            token(HS256, &hs, None, &claims("bob", "orders:read", 300))
        )),
    )
    .await?;
    assert_eq!(r.status(), 403);
    // "any" takes either.
    assert_eq!(
        post("/secure/any", Some("Bearer key-of-reader-1".into()))
            .await?
            .status(),
        200
    );
    let bob = format!(
        "Bearer {}",
        token(HS256, &hs, None, &claims("bob", "", 300))
    );
    assert_eq!(post("/secure/any", Some(bob.clone())).await?.status(), 200);
    assert_eq!(post("/secure/any", None).await?.status(), 401);

    // A reply goes only to its owner: others, authenticated or not, get 404.
    let r = http
        .post(format!("{base}/secure/any"))
        .header("authorization", "Bearer key-of-shop-7")
        .header("prefer", "respond-async")
        .body("for shop-7 only")
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let id = r.headers()["correlation-id"].to_str()?.to_owned();
    let fetch = |auth: Option<&str>| {
        let mut request = http
            .get(format!("{base}/v1/replies/{id}"))
            .header("prefer", "wait=5");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    let owner = fetch(Some("Bearer key-of-shop-7")).await?;
    assert_eq!(owner.status(), 200);
    assert_eq!(owner.text().await?, "for shop-7 only");
    assert_eq!(fetch(Some("Bearer key-of-reader-1")).await?.status(), 404);
    assert_eq!(fetch(Some(&bob)).await?.status(), 404);
    assert_eq!(fetch(None).await?.status(), 404);
    assert_eq!(fetch(Some("Bearer forged")).await?.status(), 401);
    // An anonymous route's reply: anyone holding the id.
    let r = http
        .post(format!("{base}/open"))
        .header("prefer", "respond-async")
        .body("open")
        .send()
        .await?;
    let open_id = r.headers()["correlation-id"].to_str()?.to_owned();
    let r = http
        .get(format!("{base}/v1/replies/{open_id}"))
        .header("prefer", "wait=5")
        .send()
        .await?;
    assert_eq!(r.status(), 200);

    // Idempotency keys are per principal: the same key from two callers makes
    // two requests.
    let mut ids = Vec::new();
    for auth in [
        "Bearer key-of-shop-7",
        "Bearer key-of-reader-1",
        "Bearer key-of-shop-7",
    ] {
        let r = http
            .post(format!("{base}/secure/any"))
            .header("authorization", auth)
            .header("idempotency-key", "\"same-key\"")
            .body("idem")
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["correlation-id"].to_str()?.to_owned());
    }
    assert_ne!(ids[0], ids[1], "two principals shared an idempotency key");
    assert_eq!(
        ids[0], ids[2],
        "a retry of one principal was not recognised"
    );
    stop.cancel();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_are_shared_by_replicas_per_principal_and_route() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let (_, rsa_public) = key_pair(dir.path(), "rsa")?;
    let (_, ec_public) = key_pair(dir.path(), "ec")?;
    let settings = secured(&stack, dir.path(), &rsa_public, &ec_public)?;
    let (a, stop_a) = spawn_gateway(settings.clone()).await?;
    let (b, stop_b) = spawn_gateway(settings).await?;
    let http = &stack.http;
    for base in [&a, &b] {
        assert!(open_route_answers(http, base).await);
    }
    let call = |base: &str, path: &str, key: Option<&str>| {
        let mut request = http.post(format!("{base}{path}")).body("x");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        request.send()
    };
    // Three a minute for shop-7, spread over both replicas.
    for (n, base) in [&a, &b, &a].into_iter().enumerate() {
        let r = call(base, "/limited", Some("key-of-shop-7")).await?;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["ratelimit"].to_str()?.split(", ").nth(1),
            Some(format!("remaining={}", 2 - n).as_str())
        );
        assert_eq!(r.headers()["ratelimit-policy"], "3;w=60");
    }
    let r = call(&b, "/limited", Some("key-of-shop-7")).await?;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=20).contains(&retry), "retry after {retry} s");
    assert!(r.headers()["ratelimit"].to_str()?.contains("remaining=0"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // Another principal, and another route, have limits of their own.
    assert_eq!(
        call(&a, "/limited", Some("key-of-reader-1"))
            .await?
            .status(),
        200
    );
    assert_eq!(
        call(&b, "/secure/any", Some("key-of-shop-7"))
            .await?
            .status(),
        200
    );
    // Without authentication, the client's address is the caller.
    assert_eq!(call(&a, "/limited-open", None).await?.status(), 200);
    assert_eq!(call(&b, "/limited-open", None).await?.status(), 200);
    assert_eq!(call(&a, "/limited-open", None).await?.status(), 429);
    stop_a.cancel();
    stop_b.cancel();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_tls_and_bounds_headers() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = dir.path().join("ca.pem");
    certificates(dir.path())?;
    let mut settings = stack.gateway_settings.clone();
    settings.admin_listen = String::new();
    settings.tls = Some(replyway_gateway::tls::TlsConfig {
        cert_file: cert.to_string_lossy().into_owned(),
        key_file: key.to_string_lossy().into_owned(),
    });
    let (base, stop) = spawn_gateway(settings).await?;
    let https = base.replace("http://", "https://");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?)
        .build()?;
    let ok = eventually(Duration::from_secs(20), || async {
        client
            .post(format!("{https}/echo"))
            .body("over tls")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    if !ok {
        let e = client
            .post(format!("{https}/echo"))
            .body("over tls")
            .send()
            .await;
        panic!("no answer over TLS: {e:?}");
    }
    let r = client
        .post(format!("{https}/echo"))
        .body("over tls")
        .send()
        .await?;
    assert_eq!(
        r.version(),
        reqwest::Version::HTTP_2,
        "ALPN did not pick h2"
    );
    assert_eq!(r.text().await?, "over tls");
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(
        stack
            .http
            .post(format!("{base}/echo"))
            .body("plain")
            .send()
            .await
            .is_err()
    );
    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build()?;
    assert!(
        untrusting
            .get(format!("{https}/healthz"))
            .send()
            .await
            .is_err()
    );
    stop.cancel();

    // Oversized request heads are refused with 431, on the plain port too.
    let r = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("x-big", "x".repeat(20 * 1024))
        .body("big head")
        .send()
        .await?;
    assert_eq!(r.status(), 431);

    // Below hyper's own 8 KiB read buffer, the gateway measures the head itself.
    let mut settings = stack.gateway_settings.clone();
    settings.admin_listen = String::new();
    settings.max_header_bytes = 4096;
    let (small, stop) = spawn_gateway(settings).await?;
    let send = |size: usize| {
        stack
            .http
            .post(format!("{small}/echo"))
            .header("x-pad", "p".repeat(size))
            .body("small head")
            .send()
    };
    assert_eq!(send(6 * 1024).await?.status(), 431);
    let r = send(3 * 1024).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await?, "small head");
    stop.cancel();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_reach_logs_metrics_or_help() -> TestResult {
    let redis_password = "redis-password-never-shown";
    let stack = Stack::start(StackOptions {
        redis_password: Some(redis_password.into()),
        ..StackOptions::default()
    })
    .await?;
    let mut settings = stack.gateway_settings.clone();
    settings.listen = "127.0.0.1:0".into();
    settings.admin_listen = "127.0.0.1:0".into();
    settings.correlation_secret = Some(SECRET.into());
    settings.log.filter = "debug".into();
    assert!(settings.redis.url.expose().contains(redis_password));
    settings.auth = AuthConfig {
        api_keys: vec![ApiKeyConfig {
            id: "shop-7".into(),
            sha256: sha256_hex("key-of-shop-7"),
            scopes: vec![],
        }],
        jwt: Some(JwtConfig {
            issuer: Some(ISSUER.into()),
            audience: vec![AUDIENCE.into()],
            algorithms: vec!["HS256".into()],
            hs256_secret: Some(HS_SECRET.into()),
            ..JwtConfig::default()
        }),
        ..AuthConfig::default()
    };
    settings.routes = vec![route(&stack.echo_topic, "/secure/any", RouteAuth::Any, &[])];
    let mut gateway =
        replyway_tests::Proc::spawn_with_log("replyway-gateway", &settings, None, "debug")?;
    let addr = gateway
        .reported_addr("listen", Duration::from_secs(60))
        .await?;
    let admin = gateway
        .reported_addr("admin", Duration::from_secs(60))
        .await?;
    let url = format!("http://{addr}/secure/any");
    let answered = eventually(Duration::from_secs(20), || async {
        stack
            .http
            .post(&url)
            .header("authorization", "Bearer key-of-shop-7")
            .body("secret body 4111")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(answered, "{}", gateway.log());
    let refused = stack
        .http
        .post(&url)
        .header("authorization", "Bearer key-of-nobody")
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    let metrics = stack
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let help = std::process::Command::new(replyway_tests::bin_path("replyway-gateway"))
        .arg("--help")
        .env("REPLYWAY_CORRELATION_SECRET", SECRET)
        .env("REPLYWAY_REDIS__URL", settings.redis.url.expose())
        .output()?;
    let help = String::from_utf8(help.stdout)?;
    gateway.signal("TERM")?;
    assert!(gateway.wait_exit(Duration::from_secs(20)).await.is_some());
    let log = gateway.log();
    assert!(log.contains("gateway started"), "{log}");
    for (what, text) in [("log", &log), ("/metrics", &metrics), ("--help", &help)] {
        for secret in [
            SECRET,
            HS_SECRET,
            redis_password,
            "key-of-shop-7",
            "key-of-nobody",
            "secret body 4111",
        ] {
            assert!(!text.contains(secret), "{what} shows {secret:?}");
        }
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn path_parameters_cannot_reach_topic_names_or_redis_keys() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    // `/orders/{id}` has the key template `order-{param.id}`.
    let hostile = "x%7D%3A%7Bevil%2F..%2Freplyway.replies%00";
    let r = stack
        .http
        .post(stack.url(0, &format!("/orders/{hostile}")))
        .body("{}")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let id = r.headers()["correlation-id"].to_str()?.to_owned();
    assert!(replyway_shared::record::is_valid_correlation_id(&id));
    // Redis keys are made of the correlation id only.
    let keys = stack.redis_keys("*").await?;
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| !k.contains("evil")), "{keys:?}");
    // The command went to the route's own topic; the parameter is only data.
    let records = stack
        .read_topic(&stack.echo_topic, Duration::from_secs(20), |r| {
            r.iter().any(|m| {
                replyway_shared::Request::from_message(m).is_ok_and(|c| c.correlation_id == id)
            })
        })
        .await?;
    let command = records
        .iter()
        .filter_map(|m| replyway_shared::Request::from_message(m).ok())
        .find(|c| c.correlation_id == id)
        .expect("the command");
    assert_eq!(command.params["id"], "x}:{evil/../replyway.replies\0");
    assert_eq!(
        command.key.as_deref(),
        Some("order-x}:{evil/../replyway.replies\0".as_bytes())
    );
    // A malformed correlation id never reaches Redis either.
    for bad in ["a%7Bb%7D", "a%20b", &"x".repeat(129)] {
        let r = stack
            .http
            .get(stack.url(0, &format!("/v1/replies/{bad}")))
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{bad}");
    }
    stack.shutdown().await
}
