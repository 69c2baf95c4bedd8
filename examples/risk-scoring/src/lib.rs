//! Service-to-service request–reply with the [`Requester`]: a risk-scoring
//! service (any number of instances) asks a KYC service for a customer's score.
//!
//! Every risk-scoring instance is a node of its own: it sends commands to the
//! KYC topic with `reply-to` set to the shared reply topic, and the collector
//! hands each reply to the instance that waits for it. No instance needs a topic,
//! a consumer group or any configuration of its own.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use replyway_shared::requester::{Requester, RequesterOptions};
use replyway_shared::responder::{HandlerError, Responder};
use replyway_shared::settings::{KafkaSettings, LogSettings, RedisSettings};
use replyway_shared::{Reply, Request};

/// A KYC question.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScoreRequest {
    /// The customer to score.
    pub customer: String,
}

/// A KYC answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Score {
    /// The customer scored.
    pub customer: String,
    /// 0 (no risk) to 99.
    pub score: u8,
}

/// The KYC service's score for `customer`: a stable function of the id, so a
/// reply can be checked against its question.
pub fn score_of(customer: &str) -> u8 {
    let sum = customer.bytes().fold(17u32, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u32::from(b))
    });
    u8::try_from(sum % 100).unwrap_or(0)
}

/// The KYC service's handler.
///
/// # Errors
/// Never: a body that is not a [`ScoreRequest`] gets a `400` reply.
pub async fn kyc(request: Request) -> Result<Reply, HandlerError> {
    let Ok(question) = serde_json::from_slice::<ScoreRequest>(&request.body) else {
        return Ok(Reply::problem(
            400,
            "Bad Request",
            r#"expected {"customer": "<id>"}"#,
        ));
    };
    let score = Score {
        score: score_of(&question.customer),
        customer: question.customer,
    };
    Ok(Reply::with_body(
        200,
        "application/json",
        serde_json::to_vec(&score)?,
    ))
}

/// Settings of both demo binaries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The KYC service's request topic.
    pub kyc_topic: String,
    /// The KYC service's consumer group.
    pub kyc_group_id: String,
    /// The reply topic a collector consumes (`reply-to` of every command).
    pub reply_topic: String,
    /// Risk scoring: how many customers to score in this run.
    pub customers: usize,
    /// Risk scoring: most questions in flight at once.
    pub concurrency: usize,
    /// Risk scoring: how long to wait for each score.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Kafka.
    pub kafka: KafkaSettings,
    /// Redis (the same as the collector's).
    pub redis: RedisSettings,
    /// Logging.
    pub log: LogSettings,
}

impl replyway_shared::service::ServiceSettings for Settings {
    fn log(&self) -> &LogSettings {
        &self.log
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kyc_topic: "kyc.requests".into(),
            kyc_group_id: "replyway-kyc".into(),
            reply_topic: "replyway.replies".into(),
            customers: 100,
            concurrency: 16,
            timeout: Duration::from_secs(5),
            kafka: KafkaSettings::default(),
            redis: RedisSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// Serves the KYC topic until `shutdown`.
///
/// # Errors
/// When the Kafka clients cannot be created or the final commit fails.
pub async fn serve_kyc(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let responder = Responder::new(
        &settings.kafka,
        &settings.kyc_group_id,
        &[settings.kyc_topic.as_str()],
        256,
    )?;
    tracing::info!(topic = %settings.kyc_topic, "kyc service started");
    responder.run(kyc, shutdown).await?;
    Ok(())
}

/// What one risk-scoring run saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Outcome {
    /// This instance's node id.
    pub node_id: String,
    /// Scores that answered this instance's own question.
    pub own: usize,
    /// Replies about another customer than asked (must stay 0).
    pub foreign: usize,
    /// Questions without a usable answer (timeouts, errors).
    pub failed: usize,
}

/// Scores `settings.customers` customers of this instance (ids unique to the
/// instance) through the KYC service and checks every answer.
///
/// # Errors
/// When the clients cannot be created.
pub async fn score_customers(settings: &Settings) -> anyhow::Result<Outcome> {
    let requester = Requester::start(
        &settings.kafka,
        &settings.redis,
        RequesterOptions::new(settings.reply_topic.clone()),
    )?;
    let node = requester.node_id().to_owned();
    let asks = futures::stream::iter(0..settings.customers)
        .map(|i| {
            let requester = requester.clone();
            let customer = format!("{node}-{i}");
            async move {
                let question = serde_json::to_vec(&ScoreRequest {
                    customer: customer.clone(),
                })?;
                let reply = requester
                    .request(&settings.kyc_topic, question, settings.timeout)
                    .await?;
                anyhow::ensure!(reply.status == 200, "kyc answered {}", reply.status);
                let score: Score = serde_json::from_slice(&reply.body)?;
                Ok(score.customer == customer && score.score == score_of(&customer))
            }
        })
        .buffer_unordered(settings.concurrency.max(1));
    let results: Vec<anyhow::Result<bool>> = asks.collect().await;
    requester.stop().await;
    let mut outcome = Outcome {
        node_id: node,
        ..Outcome::default()
    };
    for result in results {
        match result {
            Ok(true) => outcome.own += 1,
            Ok(false) => outcome.foreign += 1,
            Err(e) => {
                tracing::warn!(error = %e, "a score request failed");
                outcome.failed += 1;
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kyc_scores_and_rejects_bad_questions() {
        let request = |body: &str| Request {
            body: body.as_bytes().to_vec().into(),
            ..Request::default()
        };
        let reply = kyc(request(r#"{"customer":"c-1"}"#)).await.unwrap();
        assert_eq!(reply.status, 200);
        let score: Score = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(score.customer, "c-1");
        assert_eq!(score.score, score_of("c-1"));
        assert!(score.score < 100);
        assert_eq!(kyc(request("nope")).await.unwrap().status, 400);
    }
}
