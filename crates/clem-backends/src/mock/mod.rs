//! The `mock`/`programmatic` player: scripted replies, no model. Batchable.
//!
//! Replies come from the selector's `replies` list (cycled, one per call, e.g.
//! `-m '{"model_name": "mock", "replies": ["GREET: hello"]}'`), else from the game's responder
//! ([`crate::LoadContext::responder`]), else the last user message is echoed.
//!
//! It has no tokenizer: its usage counts words (whitespace-separated) of the messages and of the reply, so that
//! clients of `clem serve` and run totals see counts that add up. Nothing of it is recorded.

use std::sync::atomic::{AtomicUsize, Ordering};

use clem_core::message::messages_to_json;
use clem_core::schema::BackendSchema;
use clem_core::{
    BatchMode, Cancel, FinishReason, GenArgs, Generation, Message, Model, ModelError, ModelSpec, Role, Usage,
};
use serde_json::{json, Value};

use crate::{Backend, LoadContext, Responder};

pub const BACKEND: Backend = Backend {
    schema: BackendSchema {
        name: "mock",
        aliases: &["programmatic"],
        entry_required: &[],
        entry_optional: &[],
        config_required: &[],
        config_optional: &[],
    },
    key_section: None,
    loader: Some(load),
    unavailable: "",
};

fn load(spec: &ModelSpec, ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let name = spec.model_name().unwrap_or("mock");
    let replies = match spec.get("replies") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .filter(|r| !r.is_empty())
                .ok_or_else(|| ModelError::config(name, "replies: must be a non-empty list of strings"))?,
        ),
        Some(_) => return Err(ModelError::config(name, "replies: must be a non-empty list of strings")),
    };
    Ok(Box::new(MockModel { spec: spec.clone(), replies, responder: ctx.responder.clone(), next: AtomicUsize::new(0) }))
}

/// A scripted player.
pub struct MockModel {
    spec: ModelSpec,
    replies: Option<Vec<String>>,
    responder: Option<Responder>,
    next: AtomicUsize,
}

impl MockModel {
    fn reply(&self, messages: &[Message]) -> String {
        if let Some(replies) = &self.replies {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            return replies[i % replies.len()].clone();
        }
        if let Some(responder) = &self.responder {
            return responder(messages);
        }
        messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.clone()).unwrap_or_default()
    }
}

impl Model for MockModel {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn generate_response(&self, messages: &[Message], args: &GenArgs, _: &Cancel) -> Result<Generation, ModelError> {
        // Stop sequences cut the scripted reply as they would cut a model's.
        let text = clem_core::message::cut_at_stop(&self.reply(messages), &args.stop).0.to_string();
        let words = |s: &str| s.split_whitespace().count() as u64;
        let prompt_words = messages.iter().map(|m| words(&m.content)).sum();
        let usage = Usage::new(prompt_words, words(&text));
        Ok(Generation::new(json!({ "messages": messages_to_json(messages) }), json!({ "response": text }), text)
            .with_usage(Some(usage))
            .with_finish(Some(FinishReason::Stop)))
    }

    fn batch_mode(&self) -> BatchMode {
        BatchMode::ForwardPass
    }

    fn normalizes_messages(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn scripted_replies_cycle_and_batch_in_order() {
        let spec = ModelSpec::parse_selector(r#"{"model_name": "mock", "replies": ["a", "b"]}"#).expect("selector");
        let model = load(&spec, &LoadContext::default()).expect("loads");
        let batch = vec![vec![Message::user("x")]; 3];
        let out: Vec<String> = model
            .generate_batch_response(&batch, &GenArgs::default(), &[])
            .into_iter()
            .map(|r| r.map(|g| g.response_text).unwrap_or_default())
            .collect();
        assert_eq!(out, vec!["a", "b", "a"]);
    }

    /// Before: the mock ignored `stop`, so `clem serve` tests could not see it honoured.
    #[test]
    fn stop_cuts_the_reply() {
        let echo = load(&ModelSpec::from_name("mock"), &LoadContext::default()).expect("loads");
        let args = GenArgs { stop: vec!["STOP".into()], ..GenArgs::default() };
        let g = echo.generate_response(&[Message::user("one STOP two")], &args, &Cancel::new()).expect("generates");
        assert_eq!(g.response_text, "one ");
    }

    #[test]
    fn responder_and_echo() {
        let spec = ModelSpec::from_name("mock");
        let echo = load(&spec, &LoadContext::default()).expect("loads");
        let g = echo.generate_response(&[Message::user("hi")], &GenArgs::default(), &Cancel::new()).expect("generates");
        assert_eq!(g.response_text, "hi");
        let ctx = LoadContext {
            responder: Some(Arc::new(|m: &[Message]| format!("{} msgs", m.len()))),
            ..Default::default()
        };
        let scripted = load(&spec, &ctx).expect("loads");
        let g = scripted
            .generate_response(&[Message::user("a"), Message::user("b")], &GenArgs::default(), &Cancel::new())
            .expect("ok");
        assert_eq!(g.response_text, "2 msgs");
        let bad = ModelSpec::parse_selector(r#"{"model_name": "mock", "replies": []}"#).expect("selector");
        assert!(load(&bad, &LoadContext::default()).is_err());
    }

    /// Words stand for tokens; the recorded objects stay clemcore's (no usage in them).
    #[test]
    fn usage_counts_words_and_is_not_recorded() {
        let spec = ModelSpec::parse_selector(r#"{"model_name": "mock", "replies": ["GREET: hello there"]}"#)
            .expect("selector");
        let model = load(&spec, &LoadContext::default()).expect("loads");
        let messages = [Message::system("be  kind"), Message::user("say hello\nto Ada")];
        let g = model.generate_response(&messages, &GenArgs::default(), &Cancel::new()).expect("generates");
        assert_eq!(g.usage, Some(Usage::new(6, 3)));
        assert_eq!(g.finish_reason, Some(FinishReason::Stop));
        assert_eq!(g.response, json!({"response": "GREET: hello there"}));
    }
}
