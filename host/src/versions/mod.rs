//! Which version of the component serves: the slot that holds it and swaps
//! it atomically ([`slot::ComponentSlot`]), and the record of accepted
//! versions kept across restarts ([`history::History`]).
//!
//! A version arrives here already fetched (from [`crate::rollout`], the
//! admin API or the embedder) and leaves as a [`crate::runtime::Plugin`]
//! that serves; nothing here fetches or serves.

pub mod history;
pub mod slot;
