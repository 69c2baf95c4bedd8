//! Commands over a WebSocket (`GET /v1/ws`), with a real client
//! (tokio-tungstenite): pipelined commands matched by id, two sockets on two
//! replicas, a socket closed mid-flight whose replies stay fetchable, and bad
//! frames answered with error frames on a socket that survives.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use replyway_tests::{Stack, StackOptions, eventually};

type TestResult = anyhow::Result<()>;
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn options(gateways: usize) -> StackOptions {
    StackOptions {
        gateways,
        gateway: |s| {
            s.websocket.enabled = true;
            s.websocket.max_in_flight = 32;
            s.websocket.max_frame_bytes = 4096;
        },
        ..StackOptions::default()
    }
}

async fn connect(stack: &Stack, i: usize) -> anyhow::Result<Socket> {
    let url = stack.url(i, "/v1/ws").replacen("http://", "ws://", 1);
    let (socket, response) = tokio_tungstenite::connect_async(url).await?;
    anyhow::ensure!(response.status() == 101, "upgrade: {}", response.status());
    Ok(socket)
}

async fn send(socket: &mut Socket, frame: &Value) -> anyhow::Result<()> {
    socket.send(Message::text(frame.to_string())).await?;
    Ok(())
}

/// The next JSON frame (pings and pongs skipped), within 20 s.
async fn next(socket: &mut Socket) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the socket closed"))??;
        match message {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Ping(_) | Message::Pong(_) => {}
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

/// Frames until the `reply` (or `error`) of every id in `ids`.
async fn answers(socket: &mut Socket, n: usize) -> anyhow::Result<HashMap<String, Vec<Value>>> {
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    let mut done = 0;
    while done < n {
        let frame = next(socket).await?;
        if frame["type"] != "accepted" {
            done += 1;
        }
        by_id
            .entry(frame["id"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(frame);
    }
    Ok(by_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_pipelined_commands_are_answered_each_by_its_id() -> TestResult {
    let stack = Stack::start(options(1)).await?;
    let mut socket = connect(&stack, 0).await?;
    let (mut sink, mut stream) = socket.split();
    // Written while the answers are read: past 32 in flight the gateway reads
    // no further frame until one is answered.
    let writer = tokio::spawn(async move {
        for n in 0..1000 {
            let frame = json!({ "id": format!("c{n}"), "route": "POST /echo",
                                "headers": { "x-request-id": format!("r{n}") },
                                "body": { "n": n } });
            sink.send(Message::text(frame.to_string())).await?;
        }
        anyhow::Ok(sink)
    });
    let mut replies = HashMap::new();
    let mut accepted = 0;
    while replies.len() < 1000 {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the socket closed"))??;
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text)?;
        match frame["type"].as_str() {
            Some("accepted") => accepted += 1,
            Some("reply") => {
                replies.insert(frame["id"].as_str().unwrap_or_default().to_owned(), frame);
            }
            _ => anyhow::bail!("unexpected frame {frame}"),
        }
    }
    assert_eq!(
        accepted, 1000,
        "every command is acknowledged once produced"
    );
    for n in 0..1000 {
        let reply = &replies[&format!("c{n}")];
        assert_eq!(reply["status"], 200, "{reply}");
        assert_eq!(
            reply["body"],
            json!({ "n": n }),
            "c{n} got another's answer"
        );
        assert!(
            reply["correlation_id"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        );
        assert_eq!(reply["headers"]["content-type"], "application/json");
    }
    let sink = writer.await??;
    socket = sink.reunite(stream)?;
    socket.close(None).await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sockets_on_two_replicas_each_get_their_own_replies() -> TestResult {
    let stack = Stack::start(options(2)).await?;
    let mut sockets = [connect(&stack, 0).await?, connect(&stack, 1).await?];
    for (s, socket) in sockets.iter_mut().enumerate() {
        for n in 0..50 {
            send(
                socket,
                &json!({ "id": format!("{s}-{n}"), "route": "POST /echo", "body": format!("socket {s} #{n}") }),
            )
            .await?;
        }
    }
    for (s, socket) in sockets.iter_mut().enumerate() {
        let by_id = answers(socket, 50).await?;
        for n in 0..50 {
            let frames = &by_id[&format!("{s}-{n}")];
            let reply = frames
                .iter()
                .find(|f| f["type"] == "reply")
                .expect("a reply");
            assert_eq!(reply["body"], format!("socket {s} #{n}"));
        }
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_closed_mid_flight_loses_no_reply() -> TestResult {
    let stack = Stack::start(options(1)).await?;
    let mut socket = connect(&stack, 0).await?;
    send(
        &mut socket,
        &json!({ "id": "slow", "route": "POST /echo", "body": { "sleep_ms": 1500, "k": 1 } }),
    )
    .await?;
    let accepted = next(&mut socket).await?;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let id = accepted["correlation_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    // The client's connection goes away without a close.
    drop(socket);
    let url = stack.url(0, &format!("/v1/replies/{id}"));
    let fetched = eventually(Duration::from_secs(15), || async {
        match stack.http.get(&url).send().await {
            Ok(r) if r.status() == 200 => r
                .json::<Value>()
                .await
                .is_ok_and(|b| b == json!({ "sleep_ms": 1500, "k": 1 })),
            _ => false,
        }
    })
    .await;
    assert!(
        fetched,
        "the reply of a dropped socket's command was not stored"
    );
    let cancelled = stack
        .metric_sum(
            &stack.gateway_admin[0],
            "replyway_gateway_cancellations_total",
            &[],
        )
        .await;
    assert_eq!(
        cancelled,
        Some(0.0),
        "a socket's commands are not cancelled"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_frames_get_error_frames_and_the_socket_survives() -> TestResult {
    let stack = Stack::start(options(1)).await?;
    let mut socket = connect(&stack, 0).await?;
    socket.send(Message::text("not json")).await?;
    let error = next(&mut socket).await?;
    assert_eq!(error["type"], "error");
    assert_eq!(error["status"], 400);
    assert_eq!(error["body"]["type"], "urn:replyway:problem:bad-request");

    send(&mut socket, &json!({ "id": "no-route", "body": 1 })).await?;
    let error = next(&mut socket).await?;
    assert_eq!(
        (error["id"].as_str(), error["type"].as_str()),
        (Some("no-route"), Some("error"))
    );

    send(
        &mut socket,
        &json!({ "id": "big", "route": "POST /echo", "body": "x".repeat(5000) }),
    )
    .await?;
    let error = next(&mut socket).await?;
    assert_eq!(error["type"], "error");
    assert_eq!(error["status"], 413);

    send(
        &mut socket,
        &json!({ "id": "nowhere", "route": "POST /nowhere" }),
    )
    .await?;
    let reply = next(&mut socket).await?;
    assert_eq!(reply["type"], "reply");
    assert_eq!(reply["status"], 404);
    assert_eq!(reply["body"]["type"], "urn:replyway:problem:no-route");

    send(
        &mut socket,
        &json!({ "id": "ok", "route": "POST /echo", "body": "still here" }),
    )
    .await?;
    let by_id = answers(&mut socket, 1).await?;
    let reply = by_id["ok"]
        .iter()
        .find(|f| f["type"] == "reply")
        .expect("a reply");
    assert_eq!(reply["body"], "still here");
    socket.close(None).await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_setting_there_is_no_websocket() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let url = stack.url(0, "/v1/ws").replacen("http://", "ws://", 1);
    let refused = tokio_tungstenite::connect_async(url).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404);
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_are_authenticated_with_the_upgrades_credentials() -> TestResult {
    use replyway_gateway::auth::{ApiKeyConfig, AuthConfig, RouteAuth};
    use replyway_gateway::routes::RouteConfig;
    use sha2::Digest;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let stack = Stack::start(StackOptions::default()).await?;
    let mut settings = stack.gateway_settings.clone();
    settings.websocket.enabled = true;
    settings.auth = AuthConfig {
        api_keys: vec![ApiKeyConfig {
            id: "shop-7".into(),
            sha256: format!("{:x}", sha2::Sha256::digest(b"key-of-shop-7")),
            scopes: Vec::new(),
        }],
        ..AuthConfig::default()
    };
    settings.routes = vec![RouteConfig {
        path: "/secure".into(),
        topic: stack.echo_topic.clone(),
        auth: RouteAuth::ApiKey,
        ..RouteConfig::default()
    }];
    let (base, stop) = replyway_tests::probe::spawn_gateway(settings).await?;
    let url = format!("{}/v1/ws", base.replacen("http://", "ws://", 1));
    let open = |key: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut request = url.into_client_request()?;
            if let Some(key) = key {
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {key}").parse()?);
            }
            anyhow::Ok(tokio_tungstenite::connect_async(request).await)
        }
    };
    let frame = json!({ "id": "f1", "route": "POST /secure", "body": "mine",
                        "headers": { "authorization": "Bearer forged" } });

    // Without credentials the socket opens, and the route refuses the frame.
    let (mut anonymous, _) = open(None).await??;
    send(&mut anonymous, &frame).await?;
    let refused = next(&mut anonymous).await?;
    assert_eq!(
        (refused["type"].as_str(), refused["status"].as_u64()),
        (Some("reply"), Some(401))
    );
    // With the key, the frame is let in (its own forged credentials ignored).
    let (mut keyed, _) = open(Some("key-of-shop-7")).await??;
    send(&mut keyed, &frame).await?;
    let by_id = answers(&mut keyed, 1).await?;
    let reply = by_id["f1"]
        .iter()
        .find(|f| f["type"] == "reply")
        .expect("a reply");
    assert_eq!(
        (reply["status"].as_u64(), reply["body"].as_str()),
        (Some(200), Some("mine"))
    );
    // Bad credentials: no socket.
    match open(Some("wrong")).await? {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    stop.cancel();
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_socket_is_kept_and_a_silent_one_closed() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateway: |s| {
            s.websocket.enabled = true;
            s.websocket.ping_interval = Duration::from_millis(200);
        },
        ..StackOptions::default()
    })
    .await?;
    // A client that reads answers the pings: after ten intervals its socket
    // still serves.
    let mut live = connect(&stack, 0).await?;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(message)) = tokio::time::timeout_at(until, live.next()).await {
        if matches!(message?, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 5, "{pings} pings in 2 s at 200 ms");
    send(
        &mut live,
        &json!({ "id": "late", "route": "POST /echo", "body": "alive" }),
    )
    .await?;
    let by_id = answers(&mut live, 1).await?;
    assert!(by_id["late"].iter().any(|f| f["body"] == "alive"));

    // A client that answers no ping (a raw connection after the upgrade,
    // read as bytes: nothing pongs) is closed after two silent intervals.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = stack.url(0, "").trim_start_matches("http://").to_owned();
    let mut raw = tokio::net::TcpStream::connect(&addr).await?;
    raw.write_all(
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let opened = tokio::time::Instant::now();
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent socket was not closed");
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 101"));
    assert!(
        opened.elapsed() >= Duration::from_millis(400),
        "closed before two intervals"
    );
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_reply_comes_as_a_frame_per_part() -> TestResult {
    let stack = Stack::start(options(1)).await?;
    let mut socket = connect(&stack, 0).await?;
    send(
        &mut socket,
        &json!({ "id": "s", "route": "POST /echo", "body": { "parts": 3, "tag": "ws" } }),
    )
    .await?;
    let accepted = next(&mut socket).await?;
    assert_eq!(accepted["type"], "accepted");
    for n in 0..3 {
        let part = next(&mut socket).await?;
        assert_eq!(
            (part["id"].as_str(), part["type"].as_str()),
            (Some("s"), Some("part"))
        );
        assert_eq!(part["part"], n);
        assert_eq!(part["last"], n == 2);
        assert_eq!(part["body"], json!({ "part": n, "of": 3, "tag": "ws" }));
        assert_eq!(part["correlation_id"], accepted["correlation_id"]);
    }
    socket.close(None).await?;
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_close_is_answered_and_a_gateway_stop_drains() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let mut settings = stack.gateway_settings.clone();
    settings.websocket.enabled = true;
    let (base, stop) = replyway_tests::probe::spawn_gateway(settings).await?;
    let url = format!("{}/v1/ws", base.replacen("http://", "ws://", 1));
    let slow = |id: &str| json!({ "id": id, "route": "POST /echo", "body": { "sleep_ms": 800, "id": id } });

    // The client closes while its command runs: the gateway answers the
    // close (a clean handshake, no reset); the reply is stored all the same.
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    send(&mut socket, &slow("closing")).await?;
    let accepted = next(&mut socket).await?;
    let id = accepted["correlation_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    socket.send(Message::Close(None)).await?;
    let mut ended = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), socket.next()).await? {
        match message {
            Ok(Message::Close(frame)) => ended = Some(Ok(frame)),
            Ok(_) => {}
            Err(e) => {
                ended = Some(Err(e.to_string()));
                break;
            }
        }
    }
    assert!(
        matches!(ended, Some(Ok(_))),
        "no close handshake: {ended:?}"
    );
    let fetched = eventually(Duration::from_secs(15), || async {
        stack
            .http
            .get(format!("{base}/v1/replies/{id}"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(fetched, "the closed socket's reply was not stored");

    // The gateway stops while a command runs: its reply comes first, then
    // the gateway's close, 1000.
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    send(&mut socket, &slow("draining")).await?;
    assert_eq!(next(&mut socket).await?["type"], "accepted");
    stop.cancel();
    let mut frames = Vec::new();
    let mut close = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(20), socket.next()).await? {
        match message? {
            Message::Text(text) => frames.push(serde_json::from_str::<Value>(&text)?),
            Message::Close(frame) => {
                close = frame;
                break;
            }
            _ => {}
        }
    }
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        (frames[0]["type"].as_str(), frames[0]["status"].as_u64()),
        (Some("reply"), Some(200))
    );
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1000));
    stack.shutdown().await
}
