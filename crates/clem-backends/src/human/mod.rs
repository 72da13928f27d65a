//! The `human`/`terminal` player: shows the conversation on stderr and reads the reply from the terminal.
//!
//! A reply is one line; a line ending in `\` continues on the next line. End of input is an error, so a
//! closed terminal never turns into empty replies.

use std::io::{BufRead, Write};

use clem_core::message::messages_to_json;
use clem_core::schema::BackendSchema;
use clem_core::{Cancel, GenArgs, Generation, Message, Model, ModelError, ModelSpec};
use serde_json::json;

use crate::{Backend, LoadContext};

pub const BACKEND: Backend = Backend {
    schema: BackendSchema {
        name: "human",
        aliases: &["terminal"],
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
    Ok(Box::new(HumanPlayer { spec: spec.clone(), input: ctx.human_input.clone() }))
}

/// A person at the terminal.
pub struct HumanPlayer {
    spec: ModelSpec,
    input: Option<std::sync::Arc<std::sync::Mutex<dyn BufRead + Send>>>,
}

/// Reads one reply; `None` at end of input.
pub fn read_reply(input: &mut dyn BufRead) -> std::io::Result<Option<String>> {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(if reply.is_empty() { None } else { Some(reply) });
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.strip_suffix('\\') {
            Some(cont) => {
                reply.push_str(cont);
                reply.push('\n');
            }
            None => {
                reply.push_str(line);
                return Ok(Some(reply));
            }
        }
    }
}

impl Model for HumanPlayer {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn generate_response(&self, messages: &[Message], _args: &GenArgs, _: &Cancel) -> Result<Generation, ModelError> {
        let mut err = std::io::stderr().lock();
        for m in messages {
            let _ = writeln!(err, "[{}] {}", m.role.as_str(), m.content);
        }
        let _ = write!(err, "your reply> ");
        let _ = err.flush();
        let name = self.spec.model_name().unwrap_or("human");
        let reply = match &self.input {
            Some(shared) => {
                let mut guard = shared.lock().map_err(|_| ModelError::config(name, "terminal input is poisoned"))?;
                read_reply(&mut *guard)
            }
            None => read_reply(&mut std::io::stdin().lock()),
        }
        .map_err(|e| ModelError::backend(name, e))?
        .ok_or_else(|| ModelError::backend(name, "the terminal closed before a reply was typed"))?;
        Ok(Generation::new(json!({ "messages": messages_to_json(messages) }), json!({ "response": reply }), reply))
    }

    fn normalizes_messages(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn reads_lines_and_continuations() {
        let mut input = std::io::Cursor::new("first\\\nsecond\nthird\n");
        assert_eq!(read_reply(&mut input).expect("io").as_deref(), Some("first\nsecond"));
        assert_eq!(read_reply(&mut input).expect("io").as_deref(), Some("third"));
        assert_eq!(read_reply(&mut input).expect("io"), None);
    }

    #[test]
    fn player_reads_injected_input_and_fails_at_eof() {
        let input: Arc<Mutex<dyn BufRead + Send>> = Arc::new(Mutex::new(std::io::Cursor::new("GREET: hi\n")));
        let ctx = LoadContext { human_input: Some(input), ..Default::default() };
        let player = load(&ModelSpec::from_name("human"), &ctx).expect("loads");
        let g =
            player.generate_response(&[Message::user("greet")], &GenArgs::default(), &Cancel::new()).expect("reply");
        assert_eq!(g.response_text, "GREET: hi");
        assert!(player.generate_response(&[Message::user("again")], &GenArgs::default(), &Cancel::new()).is_err());
    }
}
