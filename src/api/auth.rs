//! API bearer tokens (`DMUTEX_API_TOKENS_FILE`): who may call what.
//!
//! The file holds one token per line, `<token> <scope>[,<scope>…]`; `#` starts a comment, blank lines are
//! ignored. Scopes, by route pattern (`observe::route_of`, so the check and the metrics agree):
//!
//! | scope | routes |
//! |---|---|
//! | `lock` | `POST /v1/locks/{name}/acquire`, `/release`, `POST /v1/leases/{lease}/keepalive` |
//! | `read` | `GET /v1/locks`, `/v1/locks/{name}`, `/v1/cluster`, `/v1/stats`, `/v1/flow`, `/openapi.json`; `/metrics` with `DMUTEX_METRICS_AUTH=read` |
//! | `admin` | `/v1/workload` (and any membership operation the API gains) |
//! | none | `/healthz`, `/readyz` (probes); `/metrics` by default |
//!
//! Any other path needs a valid token of any scope (it then answers 404 or 405 as usual). A request without a
//! valid token gets 401 `unauthorized` with `WWW-Authenticate: Bearer`; a valid token without the route's
//! scope gets 403 `forbidden` naming the scope. Scopes are independent: `admin` does not imply `read`.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time ([`subtle`]); no token, digest or
//! `Authorization` header is ever logged, put in a span, or named in an error (a bad line is named by its
//! number). The file is re-read when it changes ([`crate::tls::Reloading`]); a changed file that does not
//! parse keeps the tokens in use.
//!
//! Calls that one node forwards to another ride the peer links, never HTTP, so no token is needed between
//! nodes.

use crate::api::error::ApiError;
use crate::config::{ConfigError, MetricsAuth, SecurityConfig};
use crate::node::Shared;
use crate::obs::metrics::ReloadLabels;
use crate::tls::{Reloading, TlsError};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The configuration key of the tokens file (named in every error about it).
const KEY: &str = "DMUTEX_API_TOKENS_FILE";

/// The shortest token accepted: shorter ones are guessable.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

/// What a token may do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Acquire, release, keepalive.
    Lock,
    /// Lock, cluster and flow state, stats, the OpenAPI document (and `/metrics` when configured so).
    Read,
    /// The built-in workload's endpoint and membership operations.
    Admin,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Lock, Scope::Read, Scope::Admin];

    /// The scope's name in the tokens file.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Lock => "lock",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Lock => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route needs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing: anyone may call it.
    Open,
    /// A valid token of any scope (paths that are no route: 404, or a route's wrong method).
    AnyToken,
    /// A valid token with this scope.
    Scope(Scope),
}

/// What the route pattern `route` (one of [`super::ROUTES`]) needs, with `/metrics` per `metrics`.
pub(crate) fn need_of(route: &str, metrics: MetricsAuth) -> Need {
    match route {
        "/healthz" | "/readyz" => Need::Open,
        "/metrics" => match metrics {
            MetricsAuth::Open => Need::Open,
            MetricsAuth::Read => Need::Scope(Scope::Read),
        },
        "/v1/locks/{name}/acquire" | "/v1/locks/{name}/release" | "/v1/leases/{lease}/keepalive" => {
            Need::Scope(Scope::Lock)
        }
        "/v1/locks" | "/v1/locks/{name}" | "/v1/cluster" | "/v1/stats" | "/v1/flow" | "/openapi.json" => {
            Need::Scope(Scope::Read)
        }
        "/v1/workload" => Need::Scope(Scope::Admin),
        _ => Need::AnyToken,
    }
}

/// One token of the file: its digest and its scopes (bits of [`Scope::bit`]).
struct Entry {
    digest: [u8; 32],
    scopes: u8,
}

/// The tokens of a tokens file.
pub(crate) struct Tokens {
    entries: Vec<Entry>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the digests.
        write!(f, "Tokens({} tokens)", self.entries.len())
    }
}

/// Why a tokens file does not parse: the line (counted from 1) and what is wrong, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    /// The line, counted from 1 (0: the file as a whole).
    pub(crate) line: usize,
    /// What is wrong with it.
    pub(crate) what: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => f.write_str(&self.what),
            n => write!(f, "line {n}: {}", self.what),
        }
    }
}

/// The characters of an RFC 6750 `b64token`, the only ones a bearer token can carry in a header.
fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=')
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Parses a tokens file's text.
    pub(crate) fn parse(text: &str) -> Result<Tokens, ParseError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let bad = |what: String| ParseError { line: n, what };
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let (token, scopes) = match content.split_once(char::is_whitespace) {
                Some((t, s)) => (t, s.trim()),
                None => {
                    return Err(bad(
                        "a token without scopes (expected `<token> <scope>[,<scope>...]`)".into()
                    ));
                }
            };
            if !token.chars().all(token_char) {
                return Err(bad(
                    "the token has a character a bearer token cannot carry (allowed: A-Z a-z 0-9 - . _ ~ + / =)"
                        .into(),
                ));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(format!(
                    "the token is shorter than {MIN_TOKEN_LEN} characters (generate one with e.g. `openssl rand \
                     -hex 32`)"
                )));
            }
            let mut bits = 0u8;
            for word in scopes.split(',').map(str::trim) {
                match Scope::parse(word) {
                    Some(s) => bits |= s.bit(),
                    None if word.is_empty() => {
                        return Err(bad("an empty scope (scopes are separated by single commas)".into()));
                    }
                    None => {
                        let shown: String = word.chars().take(40).collect();
                        return Err(bad(format!("unknown scope {shown:?} (expected lock, read or admin)")));
                    }
                }
            }
            let d = digest(token.as_bytes());
            if let Some(k) = entries.iter().position(|e| e.digest == d) {
                return Err(bad(format!("the same token as line {}", lines_of[k])));
            }
            entries.push(Entry { digest: d, scopes: bits });
            lines_of.push(n);
        }
        if entries.is_empty() {
            return Err(ParseError { line: 0, what: "holds no token".into() });
        }
        Ok(Tokens { entries })
    }

    /// The scopes of `token` if it is one of the file's (`None` otherwise). Takes the same time whichever
    /// entry (if any) matches: every digest is compared, in constant time.
    fn scopes_of(&self, token: &[u8]) -> Option<u8> {
        let d = digest(token);
        let mut found = subtle::Choice::from(0);
        let mut scopes = 0u8;
        for e in &self.entries {
            let eq = e.digest[..].ct_eq(&d[..]);
            scopes = u8::conditional_select(&scopes, &e.scopes, eq);
            found |= eq;
        }
        bool::from(found).then_some(scopes)
    }

    /// How many tokens the file holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Loads the tokens file at `path`.
fn load(path: &Path) -> Result<Tokens, TlsError> {
    let bytes = std::fs::read(path)
        .map_err(|e| TlsError { path: path.to_path_buf(), what: format!("cannot read: {e}") })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| TlsError { path: path.to_path_buf(), what: "is not UTF-8 text".into() })?;
    Tokens::parse(text).map_err(|e| TlsError { path: path.to_path_buf(), what: e.to_string() })
}

/// The API's access control: the current tokens and who may read `/metrics`.
pub struct ApiAuth {
    tokens: Arc<Reloading<Tokens>>,
    metrics: MetricsAuth,
    reload_every: Duration,
}

impl fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiAuth")
            .field("tokens", &self.tokens.get().len())
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl ApiAuth {
    /// The access control `security` configures: `None` without `DMUTEX_API_TOKENS_FILE` (the API is open).
    /// A file that cannot be read or parsed is a configuration error naming the key, the file and the line.
    pub fn from_config(security: &SecurityConfig) -> Result<Option<Arc<ApiAuth>>, ConfigError> {
        let Some(path) = &security.api_tokens_file else { return Ok(None) };
        let file: PathBuf = path.clone();
        let tokens = Reloading::new("API tokens", vec![file.clone()], move || load(&file))
            .map_err(|e| ConfigError::Invalid { key: KEY.into(), message: e.to_string() })?;
        Ok(Some(Arc::new(ApiAuth {
            tokens,
            metrics: security.metrics_auth,
            reload_every: security.credentials_reload,
        })))
    }

    /// Counts every reload of the file in `dmutex_credential_reloads_total{what="api_tokens"}` and starts
    /// re-reading it every `DMUTEX_CREDENTIALS_RELOAD_MS` (on the current tokio runtime; the task ends when
    /// this value is dropped).
    pub(crate) fn watch(&self, shared: Arc<Shared>) {
        self.tokens.on_reload(move |ok| {
            let result = if ok { "ok" } else { "failed" };
            shared.metrics.credential_reloads.inc(ReloadLabels { what: "api_tokens", result });
        });
        self.tokens.watch(self.reload_every);
    }

    /// Whether a request for `route` with `headers` may go on: `Err` is the 401 or 403 answer.
    fn check(&self, route: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let need = need_of(route, self.metrics);
        if need == Need::Open {
            return Ok(());
        }
        let Some(token) = bearer(headers) else { return Err(Refusal::NoToken) };
        let Some(scopes) = self.tokens.get().scopes_of(token) else { return Err(Refusal::BadToken) };
        match need {
            Need::Scope(s) if scopes & s.bit() == 0 => Err(Refusal::Scope(s)),
            _ => Ok(()),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if there is one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Why a request was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Refusal {
    NoToken,
    BadToken,
    Scope(Scope),
}

impl Refusal {
    fn into_response(self, route: &str) -> Response {
        let (error, challenge) = match self {
            Refusal::NoToken => (
                ApiError::Unauthorized(format!(
                    "{route} needs a bearer token (Authorization: Bearer <token>; the CLI reads DMUTEX_TOKEN)"
                )),
                "Bearer realm=\"dmutex\"".to_string(),
            ),
            Refusal::BadToken => (
                ApiError::Unauthorized("the bearer token is not one this node knows".into()),
                "Bearer realm=\"dmutex\", error=\"invalid_token\"".to_string(),
            ),
            Refusal::Scope(s) => (
                ApiError::Forbidden(format!("{route} needs a token with the {s} scope")),
                format!("Bearer realm=\"dmutex\", error=\"insufficient_scope\", scope=\"{s}\""),
            ),
        };
        let mut response = error.into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

/// The middleware: refuses a request without the token its route needs; otherwise passes it on.
pub(crate) async fn authorize(State(auth): State<Arc<ApiAuth>>, req: Request, next: Next) -> Response {
    let route = super::observe::route_of(req.uri().path());
    match auth.check(route, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal.into_response(route),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKER: &str = "locker-0123456789abcdef";
    const READER: &str = "reader-0123456789abcdef";
    const BOTH: &str = "both-0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::parse(&format!(
            "# the tokens\n\n{LOCKER} lock\n  {READER}\tread   # a reader\n{BOTH} lock, read,admin\n"
        ))
        .unwrap()
    }

    fn auth(metrics: MetricsAuth) -> ApiAuth {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("{LOCKER} lock\n{READER} read\n{BOTH} lock,read,admin\n")).unwrap();
        let security = SecurityConfig {
            api_tokens_file: Some(path),
            metrics_auth: metrics,
            credentials_reload: Duration::from_secs(1),
            ..Default::default()
        };
        let auth = ApiAuth::from_config(&security).unwrap().unwrap();
        Arc::into_inner(auth).unwrap()
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        h
    }

    #[test]
    fn a_file_parses_into_tokens_with_scopes() {
        let t = tokens();
        assert_eq!(t.len(), 3);
        assert_eq!(t.scopes_of(LOCKER.as_bytes()), Some(Scope::Lock.bit()));
        assert_eq!(t.scopes_of(READER.as_bytes()), Some(Scope::Read.bit()));
        assert_eq!(t.scopes_of(BOTH.as_bytes()), Some(7));
        assert_eq!(t.scopes_of(b"nobody-0123456789abcdef"), None);
        assert_eq!(t.scopes_of(&LOCKER.as_bytes()[1..]), None, "a prefix is not the token");
        assert!(!format!("{t:?}").contains("locker"));
    }

    #[test]
    fn bad_lines_are_named_by_number_and_never_show_the_token() {
        let secret = "s3cr3t-s3cr3t-s3cr3t";
        for (text, line, what) in [
            (format!("# c\n{secret} lock\n{secret}x writ\n"), 3, "unknown scope \"writ\""),
            (format!("{secret}\n"), 1, "without scopes"),
            (format!("\n\n{secret} lock,,read\n"), 3, "empty scope"),
            ("short lock\n".to_string(), 1, "shorter than 16"),
            (format!("{secret}\u{e9} lock\n"), 1, "cannot carry"),
            (format!("{secret} lock\n{secret} read\n"), 2, "same token as line 1"),
            ("# only comments\n\n".to_string(), 0, "holds no token"),
        ] {
            let e = Tokens::parse(&text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(what), "{text:?}: {e}");
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn a_bad_file_is_a_configuration_error_naming_the_key_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# tokens\nabcdefghijklmnopqrstuvwxyz superuser\n").unwrap();
        let security = SecurityConfig { api_tokens_file: Some(path.clone()), ..Default::default() };
        let e = ApiAuth::from_config(&security).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(text.starts_with("DMUTEX_API_TOKENS_FILE: "), "{text}");
        assert!(text.contains(&path.display().to_string()) && text.contains("line 2"), "{text}");
        assert!(!text.contains("abcdefghijklmnop"), "{text}");
        assert!(ApiAuth::from_config(&SecurityConfig::default()).unwrap().is_none(), "no file: no auth");
    }

    #[test]
    fn routes_need_their_scope_and_probes_need_nothing() {
        let a = auth(MetricsAuth::Open);
        let none = HeaderMap::new();
        for route in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(a.check(route, &none), Ok(()), "{route}");
        }
        assert_eq!(a.check("/v1/stats", &none), Err(Refusal::NoToken));
        assert_eq!(a.check("other", &none), Err(Refusal::NoToken));
        assert_eq!(a.check("/v1/stats", &headers("Bearer nobody-0123456789abcdef")), Err(Refusal::BadToken));
        assert_eq!(a.check("/v1/stats", &headers(&format!("Basic {READER}"))), Err(Refusal::NoToken));
        let reader = headers(&format!("Bearer {READER}"));
        let locker = headers(&format!("bearer  {LOCKER}"));
        let both = headers(&format!("BEARER {BOTH}"));
        for route in
            ["/v1/locks", "/v1/locks/{name}", "/v1/cluster", "/v1/stats", "/v1/flow", "/openapi.json"]
        {
            assert_eq!(a.check(route, &reader), Ok(()), "{route}");
            assert_eq!(a.check(route, &locker), Err(Refusal::Scope(Scope::Read)), "{route}");
        }
        for route in ["/v1/locks/{name}/acquire", "/v1/locks/{name}/release", "/v1/leases/{lease}/keepalive"]
        {
            assert_eq!(a.check(route, &locker), Ok(()), "{route}");
            assert_eq!(a.check(route, &reader), Err(Refusal::Scope(Scope::Lock)), "{route}");
        }
        assert_eq!(a.check("/v1/workload", &reader), Err(Refusal::Scope(Scope::Admin)));
        assert_eq!(a.check("/v1/workload", &both), Ok(()));
        assert_eq!(a.check("other", &locker), Ok(()), "any token: then 404 as usual");
        let a = auth(MetricsAuth::Read);
        assert_eq!(a.check("/metrics", &none), Err(Refusal::NoToken));
        assert_eq!(a.check("/metrics", &locker), Err(Refusal::Scope(Scope::Read)));
        assert_eq!(a.check("/metrics", &reader), Ok(()));
        assert_eq!(a.check("/healthz", &none), Ok(()));
    }

    #[test]
    fn every_route_has_a_need_and_only_probes_are_open() {
        for route in super::super::ROUTES {
            let need = need_of(route, MetricsAuth::Read);
            assert_eq!(need == Need::Open, matches!(route, "/healthz" | "/readyz"), "{route}: {need:?}");
            assert_eq!(need == Need::AnyToken, route == "other", "{route}: {need:?}");
        }
    }

    #[test]
    fn refusals_answer_401_or_403_with_a_bearer_challenge() {
        let r = Refusal::NoToken.into_response("/v1/stats");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"dmutex\"");
        let r = Refusal::BadToken.into_response("/v1/stats");
        assert_eq!(r.status(), 401);
        assert!(r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().contains("invalid_token"));
        let r = Refusal::Scope(Scope::Lock).into_response("/v1/locks/{name}/acquire");
        assert_eq!(r.status(), 403);
        assert!(r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().contains("scope=\"lock\""));
    }
}
