//! hellogame, clembench's smallest game: one player (the Greeter) must greet and welcome a named person.
//!
//! The reply must start with `GREET:` (else the episode is aborted and the request counts as violated) and,
//! lowercased and without ASCII punctuation, contain `hello`, `welcome` and the lowercased name. One round;
//! success scores 1 (Main Score 100). The game master logs `invalid format`/`greeting successful`/
//! `greeting failed` to itself as clembench's hellogame does.

use std::sync::Arc;

use clem_backends::Responder;
use clem_core::{Message, Role};
use serde_json::{json, Value};

use crate::game::{Game, GameError, GameMaster, Outcome, Turn};
use crate::instances::{Experiment, Instance};
use crate::recorder::EpisodeRecorder;

/// The default instances: experiment `greet_en`, ten names.
pub const INSTANCES: &str = include_str!("../data/hellogame_instances.json");

/// The game.
pub struct HelloGame;

impl Game for HelloGame {
    fn name(&self) -> &str {
        "hellogame"
    }

    fn players(&self) -> usize {
        1
    }

    fn game_path(&self) -> String {
        // Built in: there is no game folder on disk.
        "clemrs:hellogame".into()
    }

    fn default_instances(&self) -> &str {
        INSTANCES
    }

    fn responder(&self) -> Responder {
        Arc::new(|messages: &[Message]| {
            let context = messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.as_str());
            match context.and_then(target_name) {
                Some(name) => format!("GREET: Hello {name}, welcome!"),
                None => "GREET: Hello, welcome!".into(),
            }
        })
    }

    fn master(&self, _experiment: &Experiment, instance: &Instance) -> Result<Box<dyn GameMaster>, GameError> {
        let name = instance
            .data
            .get("target_name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| GameError::new("hellogame instance needs a non-empty \"target_name\" string"))?;
        let prompt = instance
            .data
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| GameError::new("hellogame instance needs a \"prompt\" string"))?;
        Ok(Box::new(HelloMaster {
            prompt: prompt.into(),
            required: vec!["welcome".into(), "hello".into(), name.to_lowercase()],
            played: false,
            aborted: false,
            success: true,
        }))
    }
}

/// The name in a hellogame prompt: the first non-empty line after "the name:".
fn target_name(prompt: &str) -> Option<&str> {
    let (_, rest) = prompt.split_once("the name:")?;
    rest.lines().map(str::trim).find(|l| !l.is_empty())
}

struct HelloMaster {
    prompt: String,
    required: Vec<String>,
    played: bool,
    aborted: bool,
    success: bool,
}

/// Python's `s.lower().translate(str.maketrans("", "", string.punctuation))`.
fn normalise(s: &str) -> String {
    s.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect()
}

impl GameMaster for HelloMaster {
    fn roles(&self) -> Vec<String> {
        vec!["Greeter".into()]
    }

    fn next_turn(&mut self) -> Option<Turn> {
        (!self.played).then(|| Turn { player: 0, context: self.prompt.clone() })
    }

    fn on_response(&mut self, _player: usize, response: &str, rec: &mut EpisodeRecorder) {
        self.played = true;
        if !response.starts_with("GREET:") {
            self.aborted = true;
            self.success = false;
            rec.count_request_violation();
            rec.log_to_self("invalid format", json!("abort game"));
            return;
        }
        let text = normalise(response);
        let missing: Vec<&str> =
            self.required.iter().filter(|w| !text.contains(w.as_str())).map(String::as_str).collect();
        if missing.is_empty() {
            rec.log_to_self("greeting successful", json!("end game"));
        } else {
            self.success = false;
            rec.log_to_self("greeting failed", json!(format!("missing words=[{}]", missing.join(","))));
        }
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            aborted: self.aborted,
            success: self.success && self.played,
            main_score: if self.success && self.played { 100.0 } else { 0.0 },
            episode_score: json!(i32::from(self.success && self.played)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responder_greets_the_named_person() {
        let exps = crate::instances::parse(INSTANCES, "default").expect("default instances parse");
        assert_eq!(exps.len(), 1);
        assert_eq!(exps[0].name, "greet_en");
        assert_eq!(exps[0].instances.len(), 10);
        let game = HelloGame;
        let responder = game.responder();
        for inst in &exps[0].instances {
            let prompt = inst.data["prompt"].as_str().expect("prompt");
            let reply = responder(&[Message::user(prompt)]);
            let name = inst.data["target_name"].as_str().expect("name");
            assert!(reply.starts_with("GREET:") && reply.contains(name), "{reply}");
        }
    }

    #[test]
    fn judging() {
        assert_eq!(normalise("GREET: Hello, Lucía! Welcome."), "greet hello lucía welcome");
        assert_eq!(target_name("x the name:\n\n  Ana \n\nRules"), Some("Ana"));
        assert_eq!(target_name("nothing"), None);
    }
}
