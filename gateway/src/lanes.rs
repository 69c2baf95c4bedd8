//! Priority lanes of a route: which request topic a request's command goes
//! to.
//!
//! A route with lanes names a topic per lane (`lanes = { high = "orders.high",
//! low = "orders" }`), the lane taken when no rule matches (`default_lane`),
//! and rules tried in order (`lane_rules`), the first that matches wins. A rule
//! matches on any of: the urgency of the request's `Priority` header (RFC 9218:
//! `u=0` most urgent … `u=7`, `u=3` when absent or unparsable), the caller's
//! principal, one of the caller's scopes, a claim of the caller's JWT, or a
//! request header's value; all the conditions a rule names must hold. The service serves the lanes' topics in
//! order (`Responder::with_lanes`).

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};

use replyway_shared::settings::{InvalidSetting, is_valid_topic};

use crate::auth::Principal;

/// The urgency of a request without a (parsable) `Priority` header (RFC 9218 §4.1).
pub const DEFAULT_URGENCY: u8 = 3;

/// One lane rule as written in the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneRuleConfig {
    /// The lane a matching request takes.
    pub lane: String,
    /// Urgencies of the `Priority` header: `"0"`, or a range `"0-2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// The caller's principal (API key principal or JWT `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// A scope the caller has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// A request header that must be present …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// … with this value (any value when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A claim of the caller's JWT (a string, number or boolean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimRule>,
}

/// A JWT claim a lane rule matches: `claim = { name = "tier", value = "gold" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    /// The claim's name.
    pub name: String,
    /// Its value as text (`"true"`, `"3"`); any value when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A checked rule.
#[derive(Debug, Clone)]
struct Rule {
    lane: usize,
    urgency: Option<(u8, u8)>,
    principal: Option<String>,
    scope: Option<String>,
    header: Option<(HeaderName, Option<String>)>,
    claim: Option<ClaimRule>,
}

/// A route's lanes, checked.
#[derive(Debug, Clone)]
pub struct Lanes {
    /// Lane names and topics.
    lanes: Vec<(String, String)>,
    default: usize,
    rules: Vec<Rule>,
}

/// The lane a request takes.
#[derive(Debug, Clone, Copy)]
pub struct Lane<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its request topic.
    pub topic: &'a str,
}

impl Lanes {
    /// Checks a route's lanes; `at` names a field of the route in errors.
    ///
    /// # Errors
    /// [`InvalidSetting`] naming the field.
    pub fn parse(
        lanes: &BTreeMap<String, String>,
        default_lane: Option<&str>,
        rules: &[LaneRuleConfig],
        at: &dyn Fn(&str) -> String,
    ) -> Result<Self, InvalidSetting> {
        if lanes.len() < 2 {
            return Err(InvalidSetting::new(
                at("lanes"),
                "name at least two lanes (a route with one topic sets `topic`)",
            ));
        }
        for (name, topic) in lanes {
            if !is_valid_topic(topic) {
                return Err(InvalidSetting::new(
                    at(&format!("lanes.{name}")),
                    "not a legal Kafka topic name",
                ));
            }
        }
        let lanes: Vec<(String, String)> = lanes.clone().into_iter().collect();
        let index = |name: &str| lanes.iter().position(|(n, _)| n == name);
        let names = || {
            lanes
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let default = default_lane
            .ok_or_else(|| {
                InvalidSetting::new(at("default_lane"), "required with lanes: one of the lanes")
            })
            .and_then(|name| {
                index(name).ok_or_else(|| {
                    InvalidSetting::new(
                        at("default_lane"),
                        format!("{name:?} is not a lane (lanes: {})", names()),
                    )
                })
            })?;
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let field = at(&format!("lane_rules[{i}]"));
                let lane = index(&rule.lane).ok_or_else(|| {
                    InvalidSetting::new(
                        format!("{field}.lane"),
                        format!("{:?} is not a lane (lanes: {})", rule.lane, names()),
                    )
                })?;
                Rule::parse(lane, rule).map_err(|reason| InvalidSetting::new(field, reason))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            lanes,
            default,
            rules,
        })
    }

    /// The lane of a request (its index): the first rule that matches, else
    /// the default.
    pub fn pick(&self, headers: &HeaderMap, principal: Option<&Principal>) -> usize {
        let urgency = urgency(headers);
        self.rules
            .iter()
            .find(|rule| rule.matches(urgency, headers, principal))
            .map_or(self.default, |rule| rule.lane)
    }

    /// Lane `index` (from [`Lanes::pick`]); the default lane for any other.
    pub fn get(&self, index: usize) -> Lane<'_> {
        let (name, topic) = self.lanes.get(index).unwrap_or(&self.lanes[self.default]);
        Lane { name, topic }
    }

    /// Every lane's name and topic, by name.
    pub fn all(&self) -> impl Iterator<Item = Lane<'_>> {
        self.lanes.iter().map(|(name, topic)| Lane { name, topic })
    }

    /// The default lane.
    pub fn default_lane(&self) -> Lane<'_> {
        let (name, topic) = &self.lanes[self.default];
        Lane { name, topic }
    }

    /// Whether a rule looks at the `Priority` header.
    pub fn reads_priority(&self) -> bool {
        self.rules.iter().any(|r| r.urgency.is_some())
    }
}

impl Rule {
    fn parse(lane: usize, c: &LaneRuleConfig) -> Result<Self, String> {
        let urgency = c.priority.as_deref().map(parse_urgencies).transpose()?;
        let header = match (&c.header, &c.value) {
            (Some(name), value) => Some((
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("header {name:?} is not a header name"))?,
                value.clone(),
            )),
            (None, Some(_)) => return Err("`value` needs `header`".into()),
            (None, None) => None,
        };
        if urgency.is_none()
            && c.principal.is_none()
            && c.scope.is_none()
            && header.is_none()
            && c.claim.is_none()
        {
            return Err(
                "a rule needs a condition: priority, principal, scope, claim or header".into(),
            );
        }
        if c.claim.as_ref().is_some_and(|claim| claim.name.is_empty()) {
            return Err("a claim needs a name".into());
        }
        Ok(Self {
            lane,
            urgency,
            principal: c.principal.clone(),
            scope: c.scope.clone(),
            header,
            claim: c.claim.clone(),
        })
    }

    fn matches(&self, urgency: u8, headers: &HeaderMap, principal: Option<&Principal>) -> bool {
        self.urgency
            .is_none_or(|(low, high)| (low..=high).contains(&urgency))
            && self
                .principal
                .as_ref()
                .is_none_or(|p| principal.is_some_and(|c| &c.id == p))
            && self
                .scope
                .as_ref()
                .is_none_or(|s| principal.is_some_and(|c| c.scopes.contains(s)))
            && self.claim.as_ref().is_none_or(|want| {
                principal
                    .and_then(|c| c.claims.get(&want.name))
                    .is_some_and(|got| want.value.as_ref().is_none_or(|v| v == got))
            })
            && self.header.as_ref().is_none_or(|(name, value)| {
                headers.get_all(name).iter().any(|v| {
                    value
                        .as_ref()
                        .is_none_or(|want| v.to_str().is_ok_and(|v| v.trim() == want))
                })
            })
    }
}

/// `"2"` or `"0-2"`: urgencies 0 to 7.
fn parse_urgencies(text: &str) -> Result<(u8, u8), String> {
    let bad = || format!("priority {text:?}: an urgency 0-7, or a range such as \"0-2\"");
    let one = |s: &str| {
        s.trim()
            .parse::<u8>()
            .ok()
            .filter(|u| *u <= 7)
            .ok_or_else(bad)
    };
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (one(low)?, one(high)?),
        None => {
            let u = one(text)?;
            (u, u)
        }
    };
    if low > high {
        return Err(bad());
    }
    Ok((low, high))
}

/// The urgency of the request's `Priority` header (RFC 9218): the `u`
/// parameter of the structured-field dictionary, [`DEFAULT_URGENCY`] when
/// absent or out of range. Several field lines are one dictionary; the last
/// `u` wins.
pub fn urgency(headers: &HeaderMap) -> u8 {
    let mut found = DEFAULT_URGENCY;
    for line in headers.get_all("priority") {
        let Ok(line) = line.to_str() else { continue };
        for member in line.split(',') {
            let (key, value) = member.split_once('=').unwrap_or((member, ""));
            if key.trim() == "u"
                && let Ok(u) = value.trim().parse::<u8>()
                && u <= 7
            {
                found = u;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn lanes(rules: &[LaneRuleConfig]) -> Lanes {
        let topics = BTreeMap::from([
            ("high".to_owned(), "orders.high".to_owned()),
            ("low".to_owned(), "orders".to_owned()),
        ]);
        Lanes::parse(&topics, Some("low"), rules, &|f| f.to_owned()).unwrap()
    }

    fn rule(lane: &str) -> LaneRuleConfig {
        LaneRuleConfig {
            lane: lane.into(),
            ..LaneRuleConfig::default()
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn urgency_reads_rfc_9218() {
        assert_eq!(urgency(&headers(&[])), 3);
        assert_eq!(urgency(&headers(&[("priority", "u=0")])), 0);
        assert_eq!(urgency(&headers(&[("priority", "i, u=5")])), 5);
        assert_eq!(urgency(&headers(&[("priority", "u=9")])), 3);
        assert_eq!(
            urgency(&headers(&[("priority", "u=1"), ("priority", "u=6")])),
            6
        );
    }

    #[test]
    fn the_first_matching_rule_picks_the_lane() {
        let lanes = lanes(&[
            LaneRuleConfig {
                priority: Some("0-1".into()),
                ..rule("high")
            },
            LaneRuleConfig {
                scope: Some("urgent".into()),
                ..rule("high")
            },
            LaneRuleConfig {
                header: Some("X-Tier".into()),
                value: Some("gold".into()),
                ..rule("high")
            },
        ]);
        let pick =
            |h: &HeaderMap, p: Option<&Principal>| lanes.get(lanes.pick(h, p)).topic.to_owned();
        assert_eq!(pick(&headers(&[]), None), "orders");
        assert_eq!(pick(&headers(&[("priority", "u=1")]), None), "orders.high");
        assert_eq!(pick(&headers(&[("priority", "u=2")]), None), "orders");
        assert_eq!(pick(&headers(&[("x-tier", "gold")]), None), "orders.high");
        assert_eq!(pick(&headers(&[("x-tier", "silver")]), None), "orders");
        let urgent = Principal {
            id: "ops".into(),
            scopes: ["urgent".to_owned()].into(),
            claims: BTreeMap::new(),
        };
        assert_eq!(pick(&headers(&[]), Some(&urgent)), "orders.high");
        let gold = Principal {
            id: "c-7".into(),
            scopes: Default::default(),
            claims: [("tier".to_owned(), "gold".to_owned())].into(),
        };
        let silver = Principal {
            claims: [("tier".to_owned(), "silver".to_owned())].into(),
            ..gold.clone()
        };
        let by_claim = Lanes::parse(
            &BTreeMap::from([
                ("high".to_owned(), "orders.high".to_owned()),
                ("low".to_owned(), "orders".to_owned()),
            ]),
            Some("low"),
            &[LaneRuleConfig {
                claim: Some(ClaimRule {
                    name: "tier".into(),
                    value: Some("gold".into()),
                }),
                ..rule("high")
            }],
            &|f| f.to_owned(),
        )
        .unwrap();
        let topic = |p: &Principal| by_claim.get(by_claim.pick(&headers(&[]), Some(p))).topic;
        assert_eq!(topic(&gold), "orders.high");
        assert_eq!(topic(&silver), "orders");
    }

    #[test]
    fn bad_lanes_are_refused_with_the_field() {
        let topics = BTreeMap::from([
            ("high".to_owned(), "orders.high".to_owned()),
            ("low".to_owned(), "orders".to_owned()),
        ]);
        let at = |f: &str| format!("routes[0].{f}");
        let err = |default: Option<&str>, rules: &[LaneRuleConfig]| {
            Lanes::parse(&topics, default, rules, &at)
                .unwrap_err()
                .to_string()
        };
        assert!(err(None, &[]).contains("routes[0].default_lane"));
        assert!(err(Some("mid"), &[]).contains("\"mid\" is not a lane"));
        assert!(err(Some("low"), &[rule("high")]).contains("needs a condition"));
        let bad = LaneRuleConfig {
            priority: Some("3-1".into()),
            ..rule("high")
        };
        assert!(err(Some("low"), &[bad]).contains("routes[0].lane_rules[0]"));
        let one = BTreeMap::from([("high".to_owned(), "orders.high".to_owned())]);
        assert!(
            Lanes::parse(&one, Some("high"), &[], &at)
                .unwrap_err()
                .to_string()
                .contains("at least two lanes")
        );
    }
}
