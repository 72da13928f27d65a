//! hellogame as clembench has it (`hellogame/master.py` and `in/instances.json` of
//! github.com/clp-research/clembench at commit a717f23, MIT licence, `LICENSE` here): the Greeter (the model)
//! must greet and welcome a named person; a scripted Greeted player answers `<name>: Hi, thanks for having me!`.
//!
//! The Greeter's reply must start with `GREET:`, else the episode is aborted; lowercased and without ASCII
//! punctuation it must contain `welcome`, `hello` and the lowercased name. One round. The mock Greeter answers
//! `GREET: Hello Ted!`, as clemcore's (and so fails). clembench's hellogame has no scorer; [`HelloGame`]'s
//! follows clemcore's legacy `GameScorer`: a request is a Greeter reply, `invalid format` aborts (Main Score
//! NaN), Main Score 100 on success, else 0.

use serde_json::{json, Map, Value};

use crate::dialogue::{Dialogue, DialogueGame, Gm};
use crate::game::{Game, GameError, GameMaster, Log, Plays};
use crate::instances::{Experiment, Instance};
use crate::pyjson;
use crate::scores::{self, GameScorer};

/// The game.
pub struct HelloGame;

const GREETER: usize = 0;
const GREETED: usize = 1;

impl Game for HelloGame {
    fn name(&self) -> &'static str {
        "hellogame"
    }

    fn description(&self) -> &'static str {
        "Hello game between a greeter and a greeted players"
    }

    fn players(&self) -> usize {
        1
    }

    fn default_instances(&self) -> &'static str {
        include_str!("in/instances.json")
    }

    fn master(
        &self,
        experiment: &Experiment,
        instance: &Instance,
        log: &mut Log,
    ) -> Result<Box<dyn GameMaster>, GameError> {
        // HelloGame.__init__ reads experiment["language"].
        if !experiment.params.contains_key("language") {
            return Err(GameError::new(format!("experiment {:?} has no \"language\"", experiment.name)));
        }
        let text = |key: &str| {
            instance.data.get(key).and_then(Value::as_str).map(String::from).ok_or_else(|| {
                GameError::new(format!("hellogame instance {} needs a {key:?} string", instance.game_id))
            })
        };
        let (target_name, prompt) = (text("target_name")?, text("prompt")?);
        Dialogue::start(
            |gm: &mut Gm| {
                gm.add_player("Greeter", Plays::Model(0));
                gm.add_player("Greeted", Plays::Programmatic);
                let required_words = vec!["welcome".into(), "hello".into(), target_name.to_lowercase()];
                Ok(Hello { target_name, prompt, required_words, missing_words: vec![], success: true, aborted: false })
            },
            log,
        )
    }

    fn score(
        &self,
        _experiment: &Map<String, Value>,
        _instance: &Value,
        interactions: &Value,
    ) -> Result<Value, GameError> {
        let turns = interactions
            .get("turns")
            .and_then(Value::as_array)
            .ok_or_else(|| GameError::new("interactions.json has no \"turns\" list"))?;
        let events = |turn: &Value| turn.as_array().cloned().unwrap_or_default();
        let from_greeter = |e: &Value| e.get("from").and_then(Value::as_str) == Some("Player 1");
        let of_type = |e: &Value, t: &str| e.pointer("/action/type").and_then(Value::as_str) == Some(t);
        let mut scorer = GameScorer::new(interactions);
        let (mut requests, mut violated, mut success) = (0u64, 0u64, false);
        for (round, turn) in turns.iter().enumerate() {
            let events = events(turn);
            let r = events.iter().filter(|e| from_greeter(e)).count() as u64;
            let v = events.iter().filter(|e| of_type(e, "invalid format")).count() as u64;
            success |= events.iter().any(|e| of_type(e, "greeting successful"));
            scorer.log_turn_score(round, scores::REQUEST_COUNT, json!(r));
            scorer.log_turn_score(round, scores::REQUEST_COUNT_PARSED, json!(r as i64 - v as i64));
            scorer.log_turn_score(round, scores::REQUEST_COUNT_VIOLATED, json!(v));
            requests += r;
            violated += v;
        }
        let aborted = violated > 0;
        scorer.score_game_end(aborted, !success);
        scorer
            .score_requests(requests, requests as i64 - violated as i64, violated)
            .ok_or_else(|| GameError::new("no Greeter reply to score"))?;
        let main = if aborted { pyjson::float(f64::NAN) } else { json!(if success { 100 } else { 0 }) };
        scorer.log_episode_score(scores::BENCH_SCORE, main);
        Ok(scorer.into_value())
    }
}

/// One episode's state (clembench's `HelloGame(DialogueGameMaster)`).
struct Hello {
    target_name: String,
    prompt: String,
    required_words: Vec<String>,
    missing_words: Vec<String>,
    success: bool,
    aborted: bool,
}

/// Python's `s.lower().translate(str.maketrans("", "", string.punctuation))`.
fn normalise(s: &str) -> String {
    s.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect()
}

impl DialogueGame for Hello {
    fn on_before_game(&mut self, gm: &mut Gm) {
        gm.set_context_for(GREETER, &self.prompt);
    }

    fn does_game_proceed(&mut self, gm: &mut Gm) -> bool {
        if gm.current_round() == 0 {
            return true;
        }
        if self.aborted {
            gm.log_to_self("invalid format", json!("abort game"));
        }
        if self.success {
            gm.log_to_self("greeting successful", json!("end game"));
        } else {
            gm.log_to_self("greeting failed", json!(format!("missing words=[{}]", self.missing_words.join(","))));
        }
        false
    }

    fn validate_player_response(&mut self, _gm: &mut Gm, player: usize, response: &str) -> bool {
        if player == GREETER {
            if !response.starts_with("GREET:") {
                self.aborted = true;
                self.success = false;
                return true;
            }
            let utterance = normalise(response);
            for word in &self.required_words {
                if !utterance.contains(word.as_str()) {
                    self.success = false;
                    self.missing_words.push(word.clone());
                }
            }
        }
        true
    }

    fn on_valid_player_response(&mut self, gm: &mut Gm, player: usize, parsed: &str) {
        if player == GREETER {
            gm.set_context_for(GREETED, parsed);
        }
    }

    fn custom_response(&self, player: usize, _context: &str) -> String {
        if player == GREETED {
            format!("{}: Hi, thanks for having me!", self.target_name)
        } else {
            "GREET: Hello Ted!".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::{LogEntry, Turn};

    fn episode(reply: &str) -> (Vec<LogEntry>, Value) {
        let exps = crate::instances::parse(HelloGame.default_instances(), "built in").expect("instances");
        let (exp, inst) = (&exps[0], &exps[0].instances[0]);
        let mut log = Log::default();
        let mut gm = HelloGame.master(exp, inst, &mut log).expect("sets up");
        assert_eq!(gm.players().len(), 2);
        let first = gm.next_turn().expect("turn").expect("a turn");
        assert_eq!(first, Turn { player: 0, context: inst.data["prompt"].as_str().expect("prompt").into() });
        gm.step(reply, &mut log).expect("steps");
        let second = gm.next_turn().expect("turn").expect("the Greeted's turn");
        assert_eq!(second, Turn { player: 1, context: reply.into() });
        let answer = gm.custom_response(1, &second.context);
        assert_eq!(answer, "Peter: Hi, thanks for having me!");
        gm.step(&answer, &mut log).expect("steps");
        assert_eq!(gm.next_turn().expect("over"), None);
        let entries = log.drain();
        let events: Vec<Value> = entries
            .iter()
            .filter_map(|e| match e {
                LogEntry::Event { from, to, action } => Some(json!({"from": from, "to": to, "action": action})),
                _ => None,
            })
            .collect();
        assert_eq!(entries.last(), Some(&LogEntry::GameEnd));
        let interactions = json!({"meta": {}, "players": {}, "turns": [events]});
        let scores = HelloGame.score(&Map::new(), &json!({}), &interactions).expect("scores");
        (entries, scores)
    }

    #[test]
    fn plays_and_scores_as_clembench() {
        // clemcore's mock Greeter: the right prefix, a wrong name: lost, not aborted.
        let mock = HelloGame.master(
            &crate::instances::parse(HelloGame.default_instances(), "b").expect("parses")[0],
            &crate::instances::parse(HelloGame.default_instances(), "b").expect("parses")[0].instances[0],
            &mut Log::default(),
        );
        assert_eq!(mock.expect("master").custom_response(0, "x"), "GREET: Hello Ted!");
        let (entries, scores) = episode("GREET: Hello Ted!");
        assert_eq!(
            entries[4],
            LogEntry::Event {
                from: "GM".into(),
                to: "GM".into(),
                action: json!({"type": "greeting failed", "content": "missing words=[welcome,peter]"})
            }
        );
        let ep = &scores["episode scores"];
        assert_eq!(
            (&ep["Aborted"], &ep["Lose"], &ep["Success"], &ep["Main Score"]),
            (&json!(0), &json!(1), &json!(0), &json!(0))
        );

        let (_, scores) = episode("GREET: Hello, Peter! Welcome.");
        assert_eq!(scores["episode scores"]["Main Score"], json!(100));
        assert_eq!(scores["episode scores"]["Request Success Ratio"], json!(1.0));

        // No prefix: aborted, and (as in clembench) also "greeting failed" with no missing words.
        let (entries, scores) = episode("Hello Peter, welcome");
        let types: Vec<&str> = entries
            .iter()
            .filter_map(|e| match e {
                LogEntry::Event { action, .. } => action["type"].as_str(),
                _ => None,
            })
            .collect();
        assert_eq!(
            types,
            ["send message", "get message", "send message", "get message", "invalid format", "greeting failed"]
        );
        let ep = &scores["episode scores"];
        assert_eq!((&ep["Aborted"], &ep["Lose"], &ep["Success"]), (&json!(1), &json!(0), &json!(0)));
        assert!(pyjson::as_f64(&ep["Main Score"]).is_some_and(f64::is_nan));
        assert_eq!(
            scores["turn scores"]["0"],
            json!({"Request Count": 1, "Parsed Request Count": 0, "Violated Request Count": 1})
        );
    }

    #[test]
    fn instances_are_clembenchs() {
        let exps = crate::instances::parse(HelloGame.default_instances(), "built in").expect("instances");
        assert_eq!(exps.len(), 1);
        assert_eq!(exps[0].name, "greet_en");
        assert_eq!(exps[0].params.get("language"), Some(&json!("en")));
        let names: Vec<&str> = exps[0].instances.iter().filter_map(|i| i.data["target_name"].as_str()).collect();
        assert_eq!(names, ["Peter", "Max", "Marienne", "Alex", "Susanne", "David", "Sheya", "Lara", "Magnus", "Ding"]);
        assert_eq!(normalise("GREET: Hello, Lucía! Welcome."), "greet hello lucía welcome");
    }
}
