//! Record and replay: HAR 1.2 cassettes.
