//! The testing kit (feature `testing`): test an application's resilience without the real API.
//!
//! - [`cassette`]: record real exchanges to a HAR 1.2 cassette, replay them as the transport.
//! - [`chaos`]: inject faults (statuses, resets, hangs, latency, bodies cut short) at a rate.

pub mod cassette;
pub mod chaos;

// Cassettes (record and replay).
pub use cassette::{Cassette, CassetteError, CassetteTransport};
// Fault injection.
pub use chaos::{Chaos, ChaosHandle, ChaosLayer};
