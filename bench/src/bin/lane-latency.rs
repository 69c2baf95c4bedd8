//! High-lane latency under a low-lane flood, end to end: HTTP → gateway →
//! Kafka → echo → collector → Redis → HTTP, on Apache Kafka and Redis started
//! here. The echo service handles 4 commands at once, 5 ms each; 4 000
//! low-lane commands are produced at once, then 30 high-lane requests are
//! sent, one every 50 ms (so all while the flood is served), through a route
//! whose `Priority: u=0` picks the high lane. Twice: the service serving the two topics as lanes
//! (`Responder::with_lanes`), and as one lane (`Responder::new`). Prints each
//! run's latencies and how many low-lane commands were still waiting when the
//! last high-lane request was answered.
//!
//!   cargo run --release -p replyway-bench --bin lane-latency

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;

use replyway_gateway::lanes::LaneRuleConfig;
use replyway_gateway::routes::RouteConfig;
use replyway_shared::Request;
use replyway_tests::probe::spawn_gateway;
use replyway_tests::{Stack, StackOptions, eventually};

const FLOOD: usize = 4_000;
const PROBES: usize = 30;
const SERVICE_MS: u64 = 5;
const IN_FLIGHT: usize = 4;
/// Time between two high-lane requests.
const PACE: Duration = Duration::from_millis(50);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let low = stack.echo_topic.clone();
    let high = format!("{low}.high");
    stack.broker.create_topics(&[&high], 3).await?;
    let mut settings = stack.gateway_settings.clone();
    settings.routes = vec![RouteConfig {
        path: "/orders".into(),
        topic: String::new(),
        lanes: BTreeMap::from([
            ("high".to_owned(), high.clone()),
            ("low".to_owned(), low.clone()),
        ]),
        default_lane: Some("low".into()),
        lane_rules: vec![LaneRuleConfig {
            lane: "high".into(),
            priority: Some("0".into()),
            ..LaneRuleConfig::default()
        }],
        timeout: Duration::from_secs(60),
        ..RouteConfig::default()
    }];
    let (base, stop) = spawn_gateway(settings).await?;
    println!(
        "{FLOOD} low-lane commands at once, then {PROBES} high-lane requests, one every {} ms; the service handles {IN_FLIGHT} at once, {SERVICE_MS} ms each",
        PACE.as_millis()
    );
    for (mode, lanes) in [
        (
            "two lanes (Responder::with_lanes)",
            vec![vec![high.clone()], vec![low.clone()]],
        ),
        (
            "one lane (Responder::new)",
            vec![vec![high.clone(), low.clone()]],
        ),
    ] {
        stack.echo.stop().await?;
        stack.echo_settings.lanes = lanes;
        stack.echo_settings.max_in_flight = IN_FLIGHT;
        stack.restart_echo();
        let ready = eventually(Duration::from_secs(60), || async {
            stack
                .http
                .post(format!("{base}/orders"))
                .header("priority", "u=0")
                .body("warm")
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        anyhow::ensure!(ready, "{mode}: the route was not answered");
        let replied = || async {
            stack
                .metric_sum(
                    &stack.echo_admin.to_string(),
                    "replyway_responder_replied_total",
                    &[],
                )
                .await
                .unwrap_or(0.0) as usize
        };
        let before = replied().await;

        let producer = stack.broker.producer()?;
        let body = format!(r#"{{"sleep_ms":{SERVICE_MS}}}"#);
        let sends = (0..FLOOD).map(|_| {
            let request = Request::new(stack.reply_topic.clone(), body.clone());
            let headers = request.record_headers();
            let (producer, low, body, id) = (&producer, &low, &body, request.correlation_id);
            async move {
                producer
                    .send(
                        FutureRecord::to(low)
                            .key(&id)
                            .payload(body.as_bytes())
                            .headers(headers),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for sent in futures::future::join_all(sends).await {
            sent?;
        }

        // The probes go out at a fixed pace while the flood is served, each
        // on its own, so that every one of them meets the backlog.
        let probes = (0..PROBES).map(|n| {
            let (http, url, body) = (stack.http.clone(), format!("{base}/orders"), body.clone());
            async move {
                tokio::time::sleep(PACE * u32::try_from(n).unwrap_or(0)).await;
                let started = Instant::now();
                let answer = http
                    .post(url)
                    .header("priority", "u=0")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(answer.status() == 200, "{}", answer.status());
                anyhow::Ok(started.elapsed())
            }
        });
        let mut latencies = Vec::with_capacity(PROBES);
        for probe in futures::future::join_all(probes).await {
            latencies.push(probe?);
        }
        let waiting = (before + FLOOD + PROBES).saturating_sub(replied().await);
        let drained = eventually(Duration::from_secs(120), || async {
            replied().await >= before + FLOOD + PROBES
        })
        .await;
        anyhow::ensure!(drained, "{mode}: the low lane did not drain");
        latencies.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{mode}: high-lane p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms; {waiting} low-lane commands still waiting after the last",
            ms(latencies[PROBES / 2]),
            ms(latencies[PROBES * 9 / 10]),
            ms(latencies[PROBES - 1]),
        );
    }
    stop.cancel();
    stack.shutdown().await
}
