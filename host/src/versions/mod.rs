//! Which version of the component serves: the slot that holds it and swaps
//! it atomically ([`slot::ComponentSlot`]), the record of accepted versions
//! kept across restarts ([`history::History`]), and the record of versions
//! refused for what they do ([`refused::Refused`]).
//!
//! A version arrives here already fetched (from [`crate::rollout`], the
//! admin API or the embedder) and leaves as a [`crate::runtime::Plugin`]
//! that serves, once it has passed the contract gate
//! ([`crate::contract`]); nothing here fetches or serves.

pub mod candidate;
pub mod following;
pub mod history;
pub mod refused;
pub mod slot;
pub mod version;
