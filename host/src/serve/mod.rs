//! Serving over HTTP: the listeners and their connections ([`server`]),
//! TLS on them ([`tls`]), the endpoint a request is routed to
//! ([`endpoint`]: admission, the serving version, readiness), and the
//! access record each request leaves ([`access`]).

pub mod access;
pub mod endpoint;
pub mod server;
pub mod tls;
