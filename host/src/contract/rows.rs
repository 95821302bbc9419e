//! The contract gate's table: one row per case of `docs/contract.md`'s
//! endpoint rules that a version's answer and effects are checked against.
//! This is the one place the table lives; `docs/contract.md` names it.
//!
//! A row is a request, what the backends answer (through the stand-in),
//! and what the version must do: its status, whether it gives the CORS
//! headers, the JSON `error` field, and the exact list of backend calls
//! with their arguments. Bodies and log lines are free to change between
//! versions; statuses and effects are not.

/// The endpoint's path: the contract is about this one.
pub const ENDPOINT_PATH: &str = "/api/invalidate-user-api-key-cache";
/// The bearer token every authenticated row sends. The stand-in takes it
/// as whatever the row's session answer says.
pub const TOKEN: &str = "contract-gate-token";
/// The user the token belongs to, when it is valid.
pub const USER: &str = "user_contract_a";
/// The key hash every row asks about.
pub const HASH: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
/// An origin on the stand-in's allow-list.
pub const ALLOWED_ORIGIN: &str = "https://allowed.contract.example";
/// An origin off it.
pub const REFUSED_ORIGIN: &str = "https://refused.contract.example";
/// What the stand-in gives as the default origin.
pub const DEFAULT_ORIGIN: &str = "https://default.contract.example";
/// The Convex action that answers who owns a key.
pub const OWNER_LOOKUP_PATH: &str = "/api/internal-get-key-owner";
/// The cache key the caller's key hash is kept under, as the guest names it.
pub const CACHE_KEY_PREFIX: &str = "user-api-key:";

/// One case of the contract.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The rule in `docs/contract.md` (`E13`).
    pub rule: &'static str,
    /// The case, in words, as a refusal names it.
    pub case: &'static str,
    /// What the client sends.
    pub request: Request,
    /// What the backends answer.
    pub world: World,
    /// What the version must do.
    pub expect: Expect,
}

/// The request a row sends.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// Its method.
    pub method: &'static str,
    /// Its `Origin` header.
    pub origin: Origin,
    /// Its `Authorization` header, if any.
    pub authorization: Option<&'static str>,
    /// Its body.
    pub body: Body,
}

/// A request's `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// None: the answer carries the default origin.
    Absent,
    /// [`ALLOWED_ORIGIN`], echoed back.
    Allowed,
    /// [`REFUSED_ORIGIN`].
    Refused,
}

/// A request's body.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// No body.
    Empty,
    /// `{"keyHash":"<HASH>"}`.
    KeyHash,
    /// These bytes.
    Raw(&'static str),
    /// One byte more than the 64 KiB the endpoint reads.
    Oversized,
}

/// What the backends answer during a row.
#[derive(Debug, Clone, Copy)]
pub struct World {
    /// `session.validate`.
    pub session: Session,
    /// `convex.post`.
    pub convex: Convex,
    /// `cache.delete`.
    pub cache: Cache,
}

/// The session capability's answer.
#[derive(Debug, Clone, Copy)]
pub enum Session {
    /// The token is [`USER`]'s.
    Valid,
    /// `invalid`.
    Invalid,
    /// `unverifiable`.
    Unverifiable,
}

/// The Convex capability's answer.
#[derive(Debug, Clone, Copy)]
pub enum Convex {
    /// Status 200 with this body.
    Answers(&'static str),
    /// This status, with an empty JSON object.
    Status(u16),
    /// `not-configured`.
    NotConfigured,
    /// `transport`.
    Transport,
    /// `timeout`.
    Timeout,
}

/// The cache capability's answer.
#[derive(Debug, Clone, Copy)]
pub enum Cache {
    /// The key is gone.
    Deleted,
    /// `unavailable`.
    Unavailable,
    /// `timeout`.
    Timeout,
}

/// What a version must do with a row's request.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The answer's status.
    pub status: u16,
    /// Whether the answer carries the CORS headers.
    pub cors: bool,
    /// The answer's JSON `error` field; none: the answer has none.
    pub error: Option<&'static str>,
    /// The backend calls, in order, and no others.
    pub calls: &'static [Call],
}

/// A backend call a row expects, with the arguments the row implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `session.validate("<TOKEN>")`.
    Validate,
    /// `convex.post("/api/internal-get-key-owner", {"keyHash":"<HASH>"})`.
    Lookup,
    /// `cache.delete("user-api-key:<HASH>")`.
    Delete,
}

const FINE: World = World {
    session: Session::Valid,
    convex: Convex::Answers(r#"{"userId":"user_contract_a"}"#),
    cache: Cache::Deleted,
};

const BEARER: Option<&str> = Some("Bearer contract-gate-token");

const fn post(origin: Origin, authorization: Option<&'static str>, body: Body) -> Request {
    Request {
        method: "POST",
        origin,
        authorization,
        body,
    }
}

const fn answer(status: u16, error: Option<&'static str>, calls: &'static [Call]) -> Expect {
    Expect {
        status,
        cors: true,
        error,
        calls,
    }
}

const fn with_convex(convex: Convex) -> World {
    World { convex, ..FINE }
}

const UNAUTHENTICATED: Option<&str> = Some("UNAUTHENTICATED");
const UNAVAILABLE: Option<&str> = Some("Service unavailable");
const VALIDATED: &[Call] = &[Call::Validate];
const LOOKED_UP: &[Call] = &[Call::Validate, Call::Lookup];
const DELETED: &[Call] = &[Call::Validate, Call::Lookup, Call::Delete];

/// The table, in the order a refusal is reported: the cheap, early rules
/// first.
pub const ROWS: &[Row] = &[
    Row {
        rule: "E1",
        case: "an origin off the allow-list",
        request: post(Origin::Refused, BEARER, Body::KeyHash),
        world: FINE,
        expect: Expect {
            status: 403,
            cors: false,
            error: Some("Origin not allowed"),
            calls: &[],
        },
    },
    Row {
        rule: "E2",
        case: "a preflight",
        request: Request {
            method: "OPTIONS",
            origin: Origin::Allowed,
            authorization: None,
            body: Body::Empty,
        },
        world: FINE,
        expect: answer(204, None, &[]),
    },
    Row {
        rule: "E3",
        case: "a GET",
        request: Request {
            method: "GET",
            origin: Origin::Absent,
            authorization: BEARER,
            body: Body::Empty,
        },
        world: FINE,
        expect: answer(405, Some("Method not allowed"), &[]),
    },
    Row {
        rule: "E4",
        case: "no Authorization header",
        request: post(Origin::Allowed, None, Body::KeyHash),
        world: FINE,
        expect: answer(401, UNAUTHENTICATED, &[]),
    },
    Row {
        rule: "E4",
        case: "a Basic Authorization header",
        request: post(Origin::Allowed, Some("Basic dXNlcjpwYXNz"), Body::KeyHash),
        world: FINE,
        expect: answer(401, UNAUTHENTICATED, &[]),
    },
    Row {
        rule: "E4",
        case: "an empty bearer token",
        request: post(Origin::Absent, Some("Bearer "), Body::KeyHash),
        world: FINE,
        expect: answer(401, UNAUTHENTICATED, &[]),
    },
    Row {
        rule: "E5",
        case: "an invalid token",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: World {
            session: Session::Invalid,
            ..FINE
        },
        expect: answer(401, UNAUTHENTICATED, VALIDATED),
    },
    Row {
        rule: "E5",
        case: "a token that cannot be checked",
        request: post(Origin::Absent, BEARER, Body::KeyHash),
        world: World {
            session: Session::Unverifiable,
            ..FINE
        },
        expect: answer(401, UNAUTHENTICATED, VALIDATED),
    },
    Row {
        rule: "E15",
        case: "a body over 64 KiB",
        request: post(Origin::Allowed, BEARER, Body::Oversized),
        world: FINE,
        expect: answer(413, Some("Payload too large"), VALIDATED),
    },
    Row {
        rule: "E6",
        case: "a body that is not JSON",
        request: post(Origin::Allowed, BEARER, Body::Raw("{\"keyHash\":")),
        world: FINE,
        expect: answer(422, Some("Invalid JSON body"), VALIDATED),
    },
    Row {
        rule: "E7",
        case: "a keyHash that is not 64 lower-case hex digits",
        request: post(Origin::Absent, BEARER, Body::Raw(r#"{"keyHash":"C0FFEE"}"#)),
        world: FINE,
        expect: answer(422, Some("Invalid keyHash"), VALIDATED),
    },
    Row {
        rule: "E8",
        case: "Convex not configured",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: with_convex(Convex::NotConfigured),
        expect: answer(503, UNAVAILABLE, LOOKED_UP),
    },
    Row {
        rule: "E10",
        case: "the owner lookup fails to connect",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: with_convex(Convex::Transport),
        expect: answer(503, UNAVAILABLE, LOOKED_UP),
    },
    Row {
        rule: "E10",
        case: "the owner lookup times out",
        request: post(Origin::Absent, BEARER, Body::KeyHash),
        world: with_convex(Convex::Timeout),
        expect: answer(503, UNAVAILABLE, LOOKED_UP),
    },
    Row {
        rule: "E10",
        case: "the owner lookup answers 500",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: with_convex(Convex::Status(500)),
        expect: answer(503, UNAVAILABLE, LOOKED_UP),
    },
    Row {
        rule: "E10",
        case: "the owner lookup answers a redirect",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: with_convex(Convex::Status(302)),
        expect: answer(503, UNAVAILABLE, LOOKED_UP),
    },
    Row {
        rule: "E10",
        case: "the owner lookup answers something that is not JSON",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: with_convex(Convex::Answers("<html>")),
        expect: answer(503, UNAVAILABLE, LOOKED_UP),
    },
    Row {
        rule: "E11",
        case: "Convex does not know the hash",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: with_convex(Convex::Answers("null")),
        expect: answer(200, None, LOOKED_UP),
    },
    Row {
        rule: "E12",
        case: "the key is another user's",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: with_convex(Convex::Answers(r#"{"userId":"user_contract_b"}"#)),
        expect: answer(403, Some("FORBIDDEN"), LOOKED_UP),
    },
    Row {
        rule: "E12",
        case: "the owner's userId is not a string",
        request: post(Origin::Absent, BEARER, Body::KeyHash),
        world: with_convex(Convex::Answers(r#"{"userId":7}"#)),
        expect: answer(403, Some("FORBIDDEN"), LOOKED_UP),
    },
    Row {
        rule: "E12",
        case: "the owner lookup answers an empty object",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: with_convex(Convex::Answers("{}")),
        expect: answer(403, Some("FORBIDDEN"), LOOKED_UP),
    },
    Row {
        rule: "E13",
        case: "the caller owns the key",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: FINE,
        expect: answer(200, None, DELETED),
    },
    Row {
        rule: "E13",
        case: "the caller owns the key, asked without an Origin",
        request: post(Origin::Absent, BEARER, Body::KeyHash),
        world: FINE,
        expect: answer(200, None, DELETED),
    },
    Row {
        rule: "E14",
        case: "the cache delete fails",
        request: post(Origin::Allowed, BEARER, Body::KeyHash),
        world: World {
            cache: Cache::Unavailable,
            ..FINE
        },
        expect: answer(503, UNAVAILABLE, DELETED),
    },
    Row {
        rule: "E14",
        case: "the cache delete misses its deadline",
        request: post(Origin::Absent, BEARER, Body::KeyHash),
        world: World {
            cache: Cache::Timeout,
            ..FINE
        },
        expect: answer(503, UNAVAILABLE, DELETED),
    },
];
