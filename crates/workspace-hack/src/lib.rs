//! No code: this crate's dependencies turn on, for a build of `clem-py` alone (the wheel), the features that
//! `cargo test --workspace` turns on, so both builds share every compiled dependency. See Cargo.toml.
