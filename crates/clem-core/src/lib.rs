//! clem-core: the ground every clemrs backend stands on.
//!
//! - [`registry`] and [`schema`]: model entries, where they come from, and their strict check;
//! - [`spec`]: `ModelSpec`, selectors and unification;
//! - [`keys`]: credentials from key.json and the environment;
//! - [`message`] and [`model`]: messages, generation arguments, the `Model` trait and `LoadedModel`; [`cancel`]:
//!   cancelling a request in flight; [`schedule`]: the step scheduler (continuous batching) of local backends;
//! - [`template`]: Hugging Face chat templates; [`cleaning`] and [`pyregex`]: output cleaning;
//! - [`usage`]: normalised token usage, finish reasons and prices; [`suggest`]: "did you mean" for mistyped names.
//!
//! Nothing here does network or inference: backends live in `clem-backends` and heavier crates.

pub mod cancel;
pub mod cleaning;
pub mod hf;
pub mod keys;
pub mod message;
pub mod model;
pub mod pyliteral;
pub mod pyregex;
pub mod registry;
pub mod schedule;
pub mod schema;
pub mod spec;
pub mod suggest;
pub mod template;
pub mod usage;

pub use cancel::Cancel;
pub use message::{GenArgs, Message, Role};
pub use model::{BatchMode, ContextExceeded, Generation, LoadedModel, Model, ModelError, StreamEvent};
pub use spec::ModelSpec;
pub use usage::{FinishReason, Pricing, Usage};
