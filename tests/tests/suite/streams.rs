//! Streamed replies end to end: a service's parts (`reply-part`,
//! `reply-last`) reach the client as Server-Sent Events, NDJSON or joined,
//! in order and each once; a stream resumes on another replica; a stream
//! whose last part never comes ends with a `timeout` event.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use replyway_tests::{Stack, StackOptions, eventually, produce};

type TestResult = anyhow::Result<()>;

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: Option<u32>,
    event: String,
    data: String,
}

/// The events of an SSE text; the rest after the last complete one.
fn events(text: &str) -> (Vec<Event>, &str) {
    let mut events = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find("\n\n") {
        let (block, after) = (&rest[..end], &rest[end + 2..]);
        let mut event = Event {
            id: None,
            event: "message".into(),
            data: String::new(),
        };
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                event.id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event.event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v);
            }
        }
        event.data = data.join("\n");
        events.push(event);
        rest = after;
    }
    (events, rest)
}

fn sse(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request.header("accept", "text/event-stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_parts_arrive_in_order_as_events_lines_or_joined() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let body = json!({ "parts": 100, "tag": "t" }).to_string();
    let post = |accept: Option<&'static str>| {
        let mut request = stack
            .http
            .post(stack.url(0, "/echo"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        request.send()
    };

    let answer = post(Some("text/event-stream")).await?;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    let text = answer.text().await?;
    let (events, rest) = events(&text);
    assert!(
        rest.is_empty(),
        "a stream ends with a whole event: {rest:?}"
    );
    assert_eq!(events.len(), 100);
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event.id, Some(u32::try_from(n)?));
        assert_eq!(event.event, if n == 99 { "last" } else { "part" });
        let data: Value = serde_json::from_str(&event.data)?;
        assert_eq!(data, json!({ "part": n, "of": 100, "tag": "t" }));
    }

    let answer = post(Some("application/x-ndjson")).await?;
    assert_eq!(answer.headers()["content-type"], "application/x-ndjson");
    let text = answer.text().await?;
    let lines: Vec<Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 100);
    assert_eq!(
        lines[0]["body"],
        json!({ "part": 0, "of": 100, "tag": "t" })
    );
    assert_eq!(
        (lines[99]["part"].as_u64(), lines[99]["last"].as_bool()),
        (Some(99), Some(true))
    );

    // A client that takes no stream gets the parts joined once the last is there.
    let answer = post(None).await?;
    assert_eq!(answer.status(), 200);
    let joined: Value = answer.json().await?;
    let joined = joined.as_array().expect("a JSON array");
    assert_eq!(joined.len(), 100);
    assert_eq!(joined[42], json!({ "part": 42, "of": 100, "tag": "t" }));
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_resumes_on_the_other_replica_after_a_cut() -> TestResult {
    let stack = Stack::start(StackOptions {
        gateways: 2,
        ..StackOptions::default()
    })
    .await?;
    let accepted = stack
        .http
        .post(stack.url(0, "/echo"))
        .header("prefer", "respond-async")
        .header("content-type", "application/json")
        .body(json!({ "parts": 40, "part_ms": 25 }).to_string())
        .send()
        .await?;
    assert_eq!(accepted.status(), 202);
    let id = accepted.headers()["correlation-id"].to_str()?.to_owned();

    // On the first replica, until part 9; then the connection is cut.
    let first = sse(stack.http.get(stack.url(0, &format!("/v1/replies/{id}"))))
        .send()
        .await?;
    assert_eq!(first.status(), 200);
    let mut body = first.bytes_stream();
    let mut text = String::new();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|e: &Event| e.id != Some(9)) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended before part 9"))??;
        text.push_str(std::str::from_utf8(&chunk)?);
        let (complete, rest) = events(&text);
        seen.extend(complete);
        text = rest.to_owned();
    }
    drop(body);
    assert_eq!(
        seen.iter().map(|e| e.id).collect::<Vec<_>>(),
        (0..10).map(Some).collect::<Vec<_>>()
    );

    // On the other replica, after part 9: the rest, in order, once.
    let second = sse(stack.http.get(stack.url(1, &format!("/v1/replies/{id}"))))
        .header("last-event-id", "9")
        .send()
        .await?;
    assert_eq!(second.status(), 200);
    let (rest, _) = events(&second.text().await?);
    assert_eq!(
        rest.iter().map(|e| e.id).collect::<Vec<_>>(),
        (10..40).map(Some).collect::<Vec<_>>()
    );
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("last"));
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_delivered_twice_is_shown_once_and_a_stream_without_its_last_part_times_out()
-> TestResult {
    let stack = Stack::start(StackOptions {
        // GET of a stream with no pending record waits this long between parts.
        gateway: |s| s.max_poll_wait = Duration::from_secs(1),
        ..StackOptions::default()
    })
    .await?;
    let producer = stack.broker.producer()?;
    let part = |id: &'static str, n: u32, last: bool| {
        let (producer, topic) = (&producer, stack.reply_topic.clone());
        async move {
            let n = n.to_string();
            let mut headers = vec![
                ("correlation-id", id),
                ("reply-part", n.as_str()),
                ("content-type", "text/plain"),
            ];
            if last {
                headers.push(("reply-last", "true"));
            }
            produce(
                producer,
                &topic,
                Some(id),
                &headers,
                format!("p{n}").as_bytes(),
            )
            .await
        }
    };
    let url = |id: &str| stack.url(0, &format!("/v1/replies/{id}"));
    let (http, url_of) = (&stack.http, &url);
    let stored = |id: &'static str| async move {
        eventually(Duration::from_secs(15), || async {
            http.get(url_of(id))
                .send()
                .await
                .is_ok_and(|r| r.status() != 404)
        })
        .await
    };
    // Part 0, then a stream opened, then part 0 again, part 1 twice, the last.
    part("dup-1", 0, false).await?;
    assert!(stored("dup-1").await, "part 0 was not stored");
    let open = sse(stack.http.get(url("dup-1"))).send().await?;
    assert_eq!(open.status(), 200);
    part("dup-1", 0, false).await?;
    part("dup-1", 1, false).await?;
    part("dup-1", 1, false).await?;
    part("dup-1", 2, true).await?;
    let (got, _) = events(&open.text().await?);
    let shown: Vec<(Option<u32>, &str, &str)> = got
        .iter()
        .map(|e| (e.id, e.event.as_str(), e.data.as_str()))
        .collect();
    assert_eq!(
        shown,
        vec![
            (Some(0), "part", "p0"),
            (Some(1), "part", "p1"),
            (Some(2), "last", "p2")
        ]
    );
    // Joined, for a client that takes no stream.
    let joined: Value = stack.http.get(url("dup-1")).send().await?.json().await?;
    assert_eq!(joined, json!(["p0", "p1", "p2"]));

    // A service that never sends its last part: the stream ends with a
    // `timeout` event after the wait between parts.
    part("never-last", 0, false).await?;
    assert!(stored("never-last").await);
    let open = sse(stack.http.get(url("never-last"))).send().await?;
    let text = tokio::time::timeout(Duration::from_secs(10), open.text()).await??;
    let (got, _) = events(&text);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].id, got[0].data.as_str()), (Some(0), "p0"));
    assert_eq!(got[1].event, "timeout");
    assert!(got[1].data.contains("no part within"), "{}", got[1].data);
    // Without a stream: pending while the last part has not come.
    let pending = stack.http.get(url("never-last")).send().await?;
    assert_eq!(pending.status(), 202);
    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_streams_each_get_only_their_own_parts() -> TestResult {
    let stack = Stack::start(StackOptions::default()).await?;
    let streams = (0..200).map(|n| {
        let request = sse(stack.http.post(stack.url(0, "/echo")))
            .header("content-type", "application/json")
            .body(json!({ "parts": 5, "part_ms": 10, "tag": n }).to_string());
        async move {
            let text = request.send().await?.text().await?;
            anyhow::Ok((n, events(&text).0))
        }
    });
    for result in futures::future::join_all(streams).await {
        let (n, got) = result?;
        assert_eq!(got.len(), 5, "stream {n}: {got:?}");
        for (i, event) in got.iter().enumerate() {
            let data: Value = serde_json::from_str(&event.data)?;
            assert_eq!(data, json!({ "part": i, "of": 5, "tag": n }), "stream {n}");
        }
    }
    stack.shutdown().await
}
