//! Loads `examples/palisade.toml` (or the file named on the command line), builds the client
//! it describes and prints its pipeline and its health.
//!
//! ```sh
//! cargo run --example config
//! cargo run --example config -- my-palisade.yaml
//! ```
//!
//! A bad file prints the error, named by the key's path and its line, and exits with status 1.

use std::process::ExitCode;

use palisade::config::Config;

fn main() -> ExitCode {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/palisade.toml").to_owned()
    });
    let builder = match Config::from_path(&path) {
        Ok(config) => config.into_builder(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What a file cannot say is set in code: here, an event hook.
    let client = match builder.map(|b| b.on_event(|event| eprintln!("{event:?}")).build()) {
        Ok(Ok(client)) => client,
        Ok(Err(e)) | Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("loaded {path}");
    println!("{client:?}");
    println!("{:#?}", client.health());
    ExitCode::SUCCESS
}
