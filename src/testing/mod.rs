//! The testing kit (feature `testing`): test an application's resilience without the real API.
//!
//! - [`cassette`]: record real exchanges to a HAR 1.2 cassette, replay them as the transport.
//! - [`chaos`]: inject faults (statuses, resets, hangs, latency, bodies cut short) at a rate.
//!
//! # Prove your policy
//!
//! Record a session with the real API once (`PALISADE_CASSETTE=record cargo test`, with a
//! transport from [`Cassette::from_env`]), then, in a `#[tokio::test(start_paused = true)]`,
//! replay it with [`ChaosLayer`] on top and assert what your users would see: the success
//! rate, the attempts it cost, the stale answers of the fallback cache, the waits. Faults go
//! *under* palisade's pipeline, where real ones come from, so every attempt (retries included)
//! meets them:
//!
//! ```
//! use std::time::Duration;
//! use palisade::testing::cassette::{AfterLast, Cassette};
//! use palisade::testing::chaos::{Chaos, ChaosLayer, Fault, Rule};
//! use tower::Layer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let har = r#"{"log": {"version": "1.2", "entries": [{
//!     "request": {"method": "GET", "url": "http://prices.example.test/prices/1"},
//!     "response": {"status": 200, "headers": [],
//!                  "content": {"size": 2, "mimeType": "text/plain", "text": "42"}}
//! }]}}"#;
//! let replay = Cassette::from_json(har)
//!     .after_last(AfterLast::RepeatLast)
//!     .build_replay()?;
//! let chaos = ChaosLayer::new(Chaos::new(7).rule(Rule::new(Fault::Status(503)).rate(0.1)))?;
//! let client = palisade::Client::builder()
//!     .transport(chaos.layer(replay))
//!     .build()?;
//! let mut ok = 0;
//! for _ in 0..100 {
//!     match client.get("http://prices.example.test/prices/1").send().await {
//!         Ok(resp) if resp.status().is_success() => ok += 1,
//!         _ => {}
//!     }
//! }
//! // Retries turn a 10 % fault rate per attempt into (almost) none for users.
//! assert!(ok >= 99, "{ok} of 100");
//! # Ok(()) }
//! ```
//!
//! `examples/prove_your_policy.rs` records against a local server and replays with three
//! kinds of fault; `tests/guide.rs` is the same as a test over a committed cassette.

pub mod cassette;
pub mod chaos;

// Cassettes (record and replay).
pub use cassette::{Cassette, CassetteError, CassetteTransport};
// Fault injection.
pub use chaos::{Chaos, ChaosHandle, ChaosLayer};
