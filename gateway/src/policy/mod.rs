//! Pure rules, no IO and nothing of the node's state: which origins a tenant allows
//! ([`origin`]), when it is available ([`availability`]), and the rate-limit table, the
//! client-IP rule and the open-connection caps ([`limits`]). The settings compile into
//! them at start-up; the services and transports apply them.

pub mod availability;
pub mod limits;
pub mod origin;
