//! What checking a body against a route's schema costs: the ledger's transfer
//! schema (config/schemas/ledger-transfer.json) against a matching body, a
//! body with four violations, and a 100 000-element array, each checked many
//! times on one thread; prints the time per check.
//!
//!   cargo run --release -p replyway-bench --bin schema-cost

use std::time::Instant;

use replyway_gateway::schema::RouteSchema;

fn main() -> Result<(), String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/schemas/ledger-transfer.json"
    );
    let schema = RouteSchema::load(std::path::Path::new(path))?;
    let huge = format!(
        r#"{{"from":"a","to":"b","amount":1,"extra":[{}]}}"#,
        (0..100_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let cases: [(&str, &[u8], u32); 3] = [
        (
            "matching transfer (40 B)",
            br#"{"from":"alice","to":"bob","amount":5}"#,
            200_000,
        ),
        (
            "four violations (36 B)",
            br#"{"from":"","amount":"5","extra":1}"#,
            100_000,
        ),
        ("100 000-element array (589 KB)", huge.as_bytes(), 50),
    ];
    for (name, body, rounds) in cases {
        let started = Instant::now();
        let mut refused = 0;
        for _ in 0..rounds {
            if schema.check(std::hint::black_box(body)).is_err() {
                refused += 1;
            }
        }
        let per = started.elapsed().as_secs_f64() / f64::from(rounds);
        println!(
            "{name}: {:.2} µs per check ({rounds} checks, {refused} refused)",
            per * 1e6
        );
    }
    Ok(())
}
