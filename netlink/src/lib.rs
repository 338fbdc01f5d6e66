//! berth's one netlink layer, synchronous, for init (container networks) and netd (the
//! host's links) alike.
//!
//! - [`rtnl`]: a route-netlink socket and its request/acknowledge exchange; the messages
//!   themselves are `netlink-packet-route`'s, built by [`messages`].
//! - [`nft`]: nf_tables batches over a netfilter-netlink socket, written by hand (its module
//!   doc says why).
//!
//! Synchronous on purpose: the kernel answers a route-netlink or nf_tables request while
//! the request is being sent, so an answer is never waited for on another party; every
//! socket also has a receive timeout (`nft::ANSWER_TIMEOUT`) in case one never comes.
//! init has no async runtime, and netd's runtime needs none for these calls.

pub mod messages;
pub mod nft;
pub mod rtnl;
