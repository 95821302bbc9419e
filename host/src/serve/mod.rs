//! Serving over HTTP: the listeners ([`server`]) and each connection
//! they accept, quiet ones bounded (`connection`),
//! TLS on them ([`tls`]), the endpoint a request is routed to
//! ([`endpoint`]: admission, the serving version, readiness), and the
//! access record each request leaves ([`access`]).

pub mod access;
mod connection;
pub mod endpoint;
pub mod server;
pub mod tls;
