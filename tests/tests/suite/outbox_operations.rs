//! Running the outbox: the relay's admin port (metrics, readiness through a
//! database restart) and TLS to PostgreSQL (`postgres.tls_ca_file`), for the
//! ledger demo in its PostgreSQL mode and `replyway-outbox-relay` as OS
//! processes, on the suite's Apache Kafka and a PostgreSQL of each test's own.

use std::collections::BTreeSet;

use replyway_tests::probe::metric;
use replyway_tests::{Broker, Postgres, Proc, eventually, free_port};

use super::outbox::{Rig, TestResult, WAIT, until_each};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relays_admin_port_counts_what_it_published_and_tells_whether_it_streams() -> TestResult
{
    let broker = Broker::shared();
    let prefix = format!("outbox-admin-{}", free_port());
    let reply_topic = format!("{prefix}.replies");
    let mut rig = Rig::start(
        broker,
        &prefix,
        &reply_topic,
        &[("alice", 1000), ("bob", 0)],
    )
    .await?;
    let _ledger = rig.ledger().await?;
    let producer = broker.producer()?;
    const COMMANDS: i64 = 20;
    for _ in 0..COMMANDS {
        rig.send(&producer, &rig.transfer("alice", "bob", 1))
            .await?;
    }
    rig.until_count("SELECT count(*) FROM replyway_outbox", 3 * COMMANDS)
        .await?;

    rig.relay.admin_listen = "127.0.0.1:0".into();
    let mut relay = rig.relay(500).await?;
    let admin = relay.reported_addr("admin", WAIT).await?.to_string();
    rig.until_count("SELECT count(*) FROM replyway_outbox", 0)
        .await?;
    let http = reqwest::Client::new();
    let read = |series: &'static str| {
        let (http, admin) = (http.clone(), admin.clone());
        async move { metric(&http, &admin, series).await }
    };
    let ready = || async {
        http.get(format!("http://{admin}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    // Deleted only after the broker acknowledged: every row is counted.
    let published = "replyway_outbox_relay_published_rows_total";
    assert_eq!(read(published).await?, Some(3.0 * COMMANDS as f64));
    assert!(read("replyway_outbox_relay_batches_total").await? >= Some(1.0));
    assert_eq!(read("replyway_outbox_relay_streaming").await?, Some(1.0));
    assert_eq!(read("replyway_outbox_relay_pending_rows").await?, Some(0.0));
    assert!(read("replyway_outbox_relay_acknowledged_lsn").await? > Some(0.0));
    assert_eq!(ready().await?, 200);

    // The database gone: not ready, and the failed sessions are counted.
    rig.pg.stop();
    let down = eventually(WAIT, || async {
        ready().await.is_ok_and(|s| s == 503)
            && read("replyway_outbox_relay_session_failures_total")
                .await
                .is_ok_and(|n| n >= Some(1.0))
    })
    .await;
    assert!(
        down,
        "the relay still reported itself streaming:\n{}",
        relay.log()
    );
    assert_eq!(read("replyway_outbox_relay_streaming").await?, Some(0.0));

    // Back: it streams again.
    rig.pg.restart()?;
    let up = eventually(WAIT, || async { ready().await.is_ok_and(|s| s == 200) }).await;
    assert!(up, "the relay did not stream again:\n{}", relay.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_and_its_relay_reach_postgres_over_verified_tls_only() -> TestResult {
    let broker = Broker::shared();
    let prefix = format!("outbox-tls-{}", free_port());
    let reply_topic = format!("{prefix}.replies");
    let pg = Postgres::start_tls()?;
    let ca_file = pg.ca_file().expect("a TLS server's CA");
    let mut rig = Rig::start_on(
        pg,
        broker,
        &prefix,
        &reply_topic,
        &[("alice", 100), ("bob", 0)],
    )
    .await?;
    rig.ledger.postgres.tls_ca_file = Some(ca_file.clone());
    rig.relay.postgres.tls_ca_file = Some(ca_file.clone());
    let ledger = rig.ledger().await?;
    let relay = rig.relay(500).await?;

    // A transfer goes through: the ledger's transaction, the relay's stream.
    let producer = broker.producer()?;
    let command = rig.transfer("alice", "bob", 30);
    rig.send(&producer, &command).await?;
    let replies = until_each(
        broker,
        &reply_topic,
        &BTreeSet::from([command.correlation_id.clone()]),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nledger:\n{}\nrelay:\n{}", ledger.log(), relay.log()))?;
    assert_eq!(super::outbox::body(&replies[0])["balances"]["bob"], 30);
    // Every session but this test's own is TLS: the ledger's connections and
    // the relay's SQL connection and replication stream (a walsender).
    let sessions: Vec<(String, bool)> = rig
        .db
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.pid <> pg_backend_pid() AND a.backend_type IN ('client backend', 'walsender')",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(
        sessions.iter().any(|(kind, _)| kind == "walsender")
            && sessions
                .iter()
                .filter(|(kind, _)| kind == "client backend")
                .count()
                >= 2,
        "the service's and the relay's sessions: {sessions:?}"
    );
    assert!(
        sessions.iter().all(|(_, ssl)| *ssl),
        "a session without TLS: {sessions:?}"
    );

    // A certificate that another CA signed is refused at start.
    let other = tempfile::tempdir()?;
    replyway_tests::tls::certificates(other.path())?;
    let mut stranger = rig.ledger.clone();
    stranger.postgres.tls_ca_file = Some(other.path().join("ca.pem"));
    refused(&stranger, "certificate").await?;

    // A server without TLS is refused, not used in plain text.
    let plain = Postgres::start()?;
    let mut downgraded = rig.ledger.clone();
    downgraded.postgres.url = Some(plain.url().into());
    refused(&downgraded, "TLS").await
}

/// Starts a ledger with `settings` and checks that it fails at start
/// (`service::FAILED`: it could not connect), saying `why`.
async fn refused(settings: &replyway_ledger::Settings, why: &str) -> TestResult {
    let mut ledger = Proc::spawn("replyway-ledger", settings, None)?;
    let status = ledger.wait_exit(WAIT).await;
    let log = ledger.log();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(replyway_shared::service::FAILED),
        "{log}"
    );
    assert!(
        log.contains(why),
        "the refusal does not say {why:?}:\n{log}"
    );
    Ok(())
}
