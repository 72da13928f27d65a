//! The vLLM wire format on the shared executor: the chat template rendered by clemrs and sent as `prompt` to
//! `/v1/completions` (so cleaning matches huggingface_local), or the messages sent to `/v1/chat/completions`
//! when the entry says `use_chat_endpoint`. Replies are cleaned with the entry's `Cleaner` either way; usage and
//! finish reason are read as OpenAI's (the server's own counts).

use clem_core::cleaning::Cleaner;
use clem_core::keys::Secret;
use clem_core::message::messages_to_json;
use clem_core::template::{ChatTemplate, RenderOptions};
use clem_core::{FinishReason, GenArgs, Message, Usage};
use serde_json::{Map, Value};

use crate::http::{merge_top_level, Adapter, ApiRequest, Auth, RemoteError};
use crate::openai::chat::{chat_messages, openai_finish, openai_usage, ImageUrlStyle};

/// How prompts reach the server.
pub enum Endpoint {
    /// `/v1/completions` with a prompt rendered by this template (and these template variables).
    Completions { template: Box<ChatTemplate>, variables: Map<String, Value> },
    /// `/v1/chat/completions`: the server applies its own template.
    Chat,
}

pub struct VllmAdapter {
    /// The server root (without `/v1`).
    pub root: String,
    /// The model id the server serves (`huggingface_id`).
    pub model: String,
    pub endpoint: Endpoint,
    pub cleaner: Cleaner,
    pub extra_body: Map<String, Value>,
    pub api_key: Option<Secret>,
}

impl VllmAdapter {
    /// The prompt text for `messages`, as huggingface_local renders it (`add_generation_prompt=True`).
    pub fn render(&self, messages: &[Message]) -> Result<Option<String>, String> {
        match &self.endpoint {
            Endpoint::Completions { template, variables } => {
                let opts = RenderOptions { add_generation_prompt: true, variables: variables.clone(), now: None };
                template.render(&messages_to_json(messages), &opts).map(Some).map_err(|e| e.to_string())
            }
            Endpoint::Chat => Ok(None),
        }
    }
}

fn internal(message: String) -> RemoteError {
    RemoteError::Internal { provider: "vllm", message }
}

impl Adapter for VllmAdapter {
    fn provider(&self) -> &'static str {
        "vllm"
    }

    fn build(&self, messages: &[Message], args: &GenArgs) -> Result<ApiRequest, RemoteError> {
        let mut body = Map::new();
        body.insert("model".into(), Value::String(self.model.clone()));
        let path = match self.render(messages).map_err(internal)? {
            Some(prompt) => {
                body.insert("prompt".into(), Value::String(prompt));
                "v1/completions"
            }
            None => {
                let msgs = chat_messages(messages, ImageUrlStyle::Object).map_err(internal)?;
                body.insert("messages".into(), Value::Array(msgs));
                "v1/chat/completions"
            }
        };
        body.insert("temperature".into(), args.temperature.into());
        body.insert("max_tokens".into(), args.max_tokens.into());
        if !args.stop.is_empty() {
            body.insert("stop".into(), serde_json::json!(args.stop));
        }
        merge_top_level(&mut body, &args.extra);
        merge_top_level(&mut body, &self.extra_body);
        Ok(ApiRequest {
            url: format!("{}/{path}", self.root),
            headers: Vec::new(),
            auth: self.api_key.clone().map(Auth::bearer),
            body: Value::Object(body),
        })
    }

    fn reply_text(&self, body: &Value) -> Result<String, String> {
        self.reply(body).map(|(text, _)| text)
    }

    fn reply(&self, body: &Value) -> Result<(String, Option<String>), String> {
        let raw = match &self.endpoint {
            Endpoint::Completions { .. } => body.pointer("/choices/0/text"),
            Endpoint::Chat => body.pointer("/choices/0/message/content"),
        };
        let raw = match raw {
            Some(Value::String(s)) => s.as_str(),
            // A reasoning model may put everything in `reasoning_content` and leave `content` null.
            Some(Value::Null) => "",
            _ => return Err("no choices[0] text in the response".into()),
        };
        // vLLM does not echo the prompt, so there is no prompt text to remove.
        self.cleaner.clean(raw, "", None).map(|c| (c.text, c.cot_content)).map_err(|e| e.to_string())
    }

    fn usage(&self, body: &Value) -> Option<Usage> {
        openai_usage(body)
    }

    fn finish(&self, body: &Value) -> Option<FinishReason> {
        openai_finish(body)
    }
}
