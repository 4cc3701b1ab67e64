//! The API's request and response types: one definition each, used by the server's HTTP handlers and node
//! loop, by this crate's client, and by the tests.
//!
//! The JSON shapes here are the wire contract: renaming a field or changing how it is encoded breaks every
//! client. Decoding is lenient only where the client must accept other servers of the same API (a numeric
//! lease, a fencing token sent as a string, informational grant fields left out).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// Which algorithm serves a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Algorithm {
    /// Lamport 1978: REQUEST / REPLY / RELEASE, 3(N−1) messages per entry.
    Lamport,
    /// Ricart–Agrawala 1981: deferred replies, 2(N−1) messages per entry.
    RicartAgrawala,
    /// Probable-owner locking (Li–Hudak hints, FIFO queue at the owner).
    ProbableOwner,
}

impl Algorithm {
    /// Every algorithm, in a stable order.
    pub const ALL: [Algorithm; 3] = [Algorithm::Lamport, Algorithm::RicartAgrawala, Algorithm::ProbableOwner];

    /// The name used in configuration, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Lamport => "lamport",
            Algorithm::RicartAgrawala => "ricart-agrawala",
            Algorithm::ProbableOwner => "probable-owner",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lamport" => Ok(Algorithm::Lamport),
            "ricart-agrawala" | "ricart_agrawala" | "ra" => Ok(Algorithm::RicartAgrawala),
            "probable-owner" | "probable_owner" | "po" => Ok(Algorithm::ProbableOwner),
            other => Err(format!(
                "unknown algorithm {other:?} (expected lamport, ricart-agrawala or probable-owner)"
            )),
        }
    }
}

/// Names a lease in release and keepalive calls. An opaque value: clients must not parse it. dmutex's leases
/// are strings; a server of the same API that numbers its leases gets its numbers back as numbers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum LeaseId {
    /// A numeric lease, echoed as a JSON number.
    Num(u64),
    /// A string lease (every lease dmutex hands out).
    Str(String),
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseId::Num(n) => write!(f, "{n}"),
            LeaseId::Str(s) => f.write_str(s),
        }
    }
}

impl From<String> for LeaseId {
    fn from(s: String) -> Self {
        LeaseId::Str(s)
    }
}

impl From<&str> for LeaseId {
    fn from(s: &str) -> Self {
        LeaseId::Str(s.to_string())
    }
}

/// `POST /v1/locks/{name}/acquire` → 200: the lock is held under `lease` until released or expired.
///
/// `name`, `lease` and `fencing_token` are the contract; the other fields are informational (dmutex always
/// sends them; a client accepts a grant without them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Grant {
    /// The lock's name.
    pub name: String,
    /// The lease to keep alive and release.
    pub lease: LeaseId,
    /// Strictly increasing per lock in grant order: the token a protected resource compares.
    #[serde(deserialize_with = "number_or_numeric_string")]
    pub fencing_token: u64,
    /// The algorithm that granted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// The node that granted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u16>,
    /// How long the request waited for the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// The lease's time to live: it expires this long after the grant or the last keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A `u64` sent as a JSON number or as a string of digits.
fn number_or_numeric_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrString {
        Num(u64),
        Str(String),
    }
    match NumberOrString::deserialize(d)? {
        NumberOrString::Num(n) => Ok(n),
        NumberOrString::Str(s) => s
            .parse()
            .map_err(|_| de::Error::custom(format_args!("expected a non-negative integer, got {s:?}"))),
    }
}

/// An algorithm by any name [`Algorithm`]'s `FromStr` accepts (`ra`, `po`, any case); `null` is none.
fn algorithm_by_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Algorithm>, D::Error> {
    Option::<String>::deserialize(d)?.map(|s| s.parse().map_err(de::Error::custom)).transpose()
}

/// How long an acquire may wait: `timeout_ms` in the acquire body, a JSON number of milliseconds or the string
/// `"forever"`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Timeout {
    /// Wait at most this many milliseconds (`0` means the same as `"wait": false`).
    Ms(u64),
    /// Wait without a limit.
    Forever,
}

impl Timeout {
    /// The limit as a duration; `None` for [`Timeout::Forever`].
    pub fn as_duration(self) -> Option<Duration> {
        match self {
            Timeout::Ms(ms) => Some(Duration::from_millis(ms)),
            Timeout::Forever => None,
        }
    }
}

impl From<Duration> for Timeout {
    /// Whole milliseconds (a longer duration than `u64::MAX` ms saturates).
    fn from(d: Duration) -> Self {
        Timeout::Ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The JSON spelling of [`Timeout::Forever`].
const FOREVER: &str = "forever";

impl Serialize for Timeout {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Timeout::Ms(ms) => s.serialize_u64(*ms),
            Timeout::Forever => s.serialize_str(FOREVER),
        }
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TimeoutVisitor;
        impl Visitor<'_> for TimeoutVisitor {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer number of milliseconds or \"forever\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timeout, E> {
                Ok(Timeout::Ms(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timeout, E> {
                u64::try_from(v)
                    .map(Timeout::Ms)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timeout, E> {
                if v == FOREVER {
                    Ok(Timeout::Forever)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(TimeoutVisitor)
    }
}

/// `timeout_ms` is a number or `"forever"` (the hand-written serde above): a `oneOf` of the two, which derive
/// cannot express.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timeout {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        let ms = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .description(Some("wait at most this many milliseconds (0: the same as \"wait\": false)"));
        let forever = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([FOREVER]))
            .description(Some("wait without a limit"));
        OneOfBuilder::new()
            .item(ms)
            .item(forever)
            .description(Some("How long an acquire may wait: milliseconds, or \"forever\"."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timeout {}

/// The body of `POST /v1/locks/{name}/acquire`; every field falls back to the node's default when absent, and
/// an empty body means all defaults. Unknown fields are refused (400).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AcquireBody {
    /// How long to wait for the lock (default: the node's `DMUTEX_DEFAULT_TIMEOUT_MS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Timeout>,
    /// `false`: try-lock — granted only if grantable without waiting, else 409 `locked` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// The lease's time to live, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The algorithm that serves the request (also accepted: `ra`, `po`, `ricart_agrawala`, `probable_owner`,
    /// any case).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "algorithm_by_name")]
    pub algorithm: Option<Algorithm>,
    /// An existing lease: one that already holds this lock gets its grant back (re-entrant acquire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseId>,
}

/// The body of `POST /v1/locks/{name}/release`. The lease is optional in the type only so that a body without
/// one is answered with a 400 that says what is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseBody {
    /// The lease the grant returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseId>,
}

/// `POST /v1/locks/{name}/release` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseResponse {
    /// The lease that held the lock.
    pub lease: LeaseId,
    /// The lock released (as in the URL).
    pub name: String,
    /// Always `true` (a failed release is an error response).
    pub released: bool,
}

/// The body of `POST /v1/leases/{lease}/keepalive`: `{}`. The node reads nothing from it (the lease is in the
/// path), so any body is accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeepaliveBody {}

/// `POST /v1/leases/{lease}/keepalive` → 200: the lease runs for `ttl_ms` from now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeepaliveResponse {
    /// The lease kept alive (a client accepts an answer without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseId>,
    /// The lease's renewed time to live (a client keeps the TTL it knew when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// Every error response: `{"error": {"code", "message", ...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `timeout` (the codes are the contract; see the crate documentation).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// With `locked`: the node that holds the lock, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_grant_is_sent_in_the_documented_shape() {
        let g = Grant {
            name: "db".into(),
            lease: "l-1".into(),
            fencing_token: 196_608,
            algorithm: Some(Algorithm::RicartAgrawala),
            node_id: Some(2),
            waited_ms: Some(5),
            ttl_ms: Some(1000),
        };
        let text = serde_json::to_string(&g).unwrap();
        assert_eq!(
            text,
            r#"{"name":"db","lease":"l-1","fencing_token":196608,"algorithm":"ricart-agrawala","node_id":2,"waited_ms":5,"ttl_ms":1000}"#
        );
        assert_eq!(serde_json::from_str::<Grant>(&text).unwrap(), g);
        let bad =
            serde_json::from_value::<Grant>(json!({"name": "db", "lease": "l", "fencing_token": "soon"}));
        assert!(bad.is_err(), "a fencing token must be an integer");
    }

    #[test]
    fn grant_accepts_numeric_or_string_ids() {
        let g: Grant = serde_json::from_str(
            r#"{"name":"x","lease":7,"fencing_token":"123","algorithm":"lamport","node_id":1,"waited_ms":2}"#,
        )
        .unwrap();
        assert_eq!(g.lease, LeaseId::Num(7));
        assert_eq!(g.fencing_token.to_string(), "123");
        assert_eq!(serde_json::json!({ "lease": g.lease }).to_string(), r#"{"lease":7}"#);
        let g: Grant = serde_json::from_str(r#"{"name":"x","lease":"l-1","fencing_token":9}"#).unwrap();
        assert_eq!(g.lease, LeaseId::Str("l-1".into()));
    }

    #[test]
    fn algorithms_by_every_name() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
            assert_eq!(a.to_string(), a.as_str());
            assert_eq!(serde_json::to_value(a).unwrap(), json!(a.as_str()));
        }
        assert_eq!("RA".parse::<Algorithm>(), Ok(Algorithm::RicartAgrawala));
        assert_eq!("probable_owner".parse::<Algorithm>(), Ok(Algorithm::ProbableOwner));
        assert!("paxos".parse::<Algorithm>().is_err());
    }

    #[test]
    fn acquire_bodies_accept_every_algorithm_name_and_nothing_unknown() {
        let b: AcquireBody = serde_json::from_value(json!({"algorithm": "RA", "ttl_ms": 10})).unwrap();
        assert_eq!(
            b,
            AcquireBody {
                ttl_ms: Some(10),
                algorithm: Some(Algorithm::RicartAgrawala),
                ..AcquireBody::default()
            }
        );
        let b: AcquireBody = serde_json::from_value(json!({"algorithm": null})).unwrap();
        assert_eq!(b, AcquireBody::default());
        let e = serde_json::from_value::<AcquireBody>(json!({"algorithm": "paxos"})).unwrap_err();
        assert!(e.to_string().contains("unknown algorithm \"paxos\""), "{e}");
        assert!(serde_json::from_value::<AcquireBody>(json!({"timeout_ms": 1, "colour": "red"})).is_err());
    }

    #[test]
    fn acquire_body_omits_absent_fields() {
        assert_eq!(serde_json::to_string(&AcquireBody::default()).unwrap(), "{}");
        let r = AcquireBody {
            timeout_ms: Some(Timeout::Ms(5)),
            algorithm: Some(Algorithm::RicartAgrawala),
            ..AcquireBody::default()
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"timeout_ms":5,"algorithm":"ricart-agrawala"}"#);
    }

    #[test]
    fn acquire_body_carries_wait_lease_and_forever() {
        let b = AcquireBody {
            timeout_ms: Some(Timeout::Forever),
            wait: Some(false),
            lease: Some("0.7.ab".into()),
            ..AcquireBody::default()
        };
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v, json!({"timeout_ms": "forever", "wait": false, "lease": "0.7.ab"}));
        assert_eq!(serde_json::from_value::<AcquireBody>(v).unwrap(), b);
    }

    #[test]
    fn timeouts_are_milliseconds_or_forever_and_nothing_else() {
        let t = |v| serde_json::from_value::<AcquireBody>(json!({ "timeout_ms": v })).map(|b| b.timeout_ms);
        assert_eq!(t(json!(0)).unwrap(), Some(Timeout::Ms(0)));
        assert_eq!(t(json!(2500)).unwrap(), Some(Timeout::Ms(2500)));
        assert_eq!(t(json!("forever")).unwrap(), Some(Timeout::Forever));
        for bad in [json!("soon"), json!("Forever"), json!(-1), json!(1.5), json!(true), json!([1])] {
            let e = t(bad.clone()).unwrap_err().to_string();
            assert!(e.contains("milliseconds or \"forever\""), "{bad}: {e}");
        }
        assert_eq!(Timeout::from(Duration::from_millis(1500)), Timeout::Ms(1500));
        assert_eq!(Timeout::Ms(7).as_duration(), Some(Duration::from_millis(7)));
        assert_eq!(Timeout::Forever.as_duration(), None);
    }

    #[test]
    fn release_and_keepalive_shapes() {
        let b: ReleaseBody = serde_json::from_value(json!({"lease": 42})).unwrap();
        assert_eq!(b.lease, Some(LeaseId::Num(42)));
        assert_eq!(serde_json::to_value(&b).unwrap(), json!({"lease": 42}));
        assert_eq!(serde_json::from_value::<ReleaseBody>(json!({})).unwrap().lease, None);
        assert!(serde_json::from_value::<ReleaseBody>(json!({"lease": "l", "extra": 1})).is_err());
        let r = ReleaseResponse { lease: "l".into(), name: "x".into(), released: true };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"lease":"l","name":"x","released":true}"#);

        assert_eq!(serde_json::to_string(&KeepaliveBody {}).unwrap(), "{}");
        let k = KeepaliveResponse { lease: Some("l".into()), ttl_ms: Some(300) };
        assert_eq!(serde_json::to_string(&k).unwrap(), r#"{"lease":"l","ttl_ms":300}"#);
        let k: KeepaliveResponse = serde_json::from_value(json!({"ttl_ms": 300})).unwrap();
        assert_eq!((k.lease, k.ttl_ms), (None, Some(300)));
    }

    #[test]
    fn errors_carry_code_message_and_the_holder_only_when_known() {
        let e =
            ErrorBody { error: ErrorDetail { code: "timeout".into(), message: "m".into(), holder: None } };
        assert_eq!(serde_json::to_value(&e).unwrap(), json!({"error": {"code": "timeout", "message": "m"}}));
        let v = json!({"error": {"code": "locked", "message": "held", "holder": 2}});
        let e: ErrorBody = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(e.error.holder, Some(2));
        assert_eq!(serde_json::to_value(&e).unwrap(), v);
        let e: ErrorBody =
            serde_json::from_value(json!({"error": {"code": "locked", "message": "m", "holder": null}}))
                .unwrap();
        assert_eq!(e.error.holder, None);
    }
}
