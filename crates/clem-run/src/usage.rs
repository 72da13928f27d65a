//! Token usage of a run, per model: calls, tokens, time spent waiting for the model, and cost.
//!
//! Kept in run_summary.json (clemrs's own file; clemcore's files get nothing): `usage` holds this invocation's
//! rows, `usage_by_game` every game played into the results folder across invocations (a `--resume` adds to the
//! game's earlier totals, since those tokens were spent too; a fresh run of a game replaces them, as it
//! replaces the game's records). `clem eval` sums `usage_by_game` per model. The counts are the backends'
//! normalised usage (`clem_core::Usage`): for remote models the provider's own counts, which the recorded
//! responses hold as the provider sent them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clem_core::usage::count;
use clem_core::{Generation, ModelError, Pricing, Usage};
use serde_json::{json, Map, Value};

/// One model's calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelUsage {
    pub model: String,
    /// Requests the model answered.
    pub calls: u64,
    /// Requests that failed (no reply, no tokens counted).
    pub failed_calls: u64,
    /// Answered requests whose backend reported no usage (their tokens are missing from the totals).
    pub calls_without_usage: u64,
    pub usage: Usage,
    /// Wall time of the model's requests (a batch counts once).
    pub seconds: f64,
    /// The prices the cost is computed with (the entry's `model_config.pricing`, or `--prices`).
    pub pricing: Option<Pricing>,
    /// Dollars: `None` when a part of the calls had no prices.
    pub cost: Option<f64>,
}

impl ModelUsage {
    pub fn new(model: &str, pricing: Option<Pricing>) -> ModelUsage {
        ModelUsage { model: model.into(), pricing, cost: pricing.map(|_| 0.0), ..ModelUsage::default() }
    }

    /// Counts one request of the model (a batch), which took `took`.
    pub fn record(&mut self, results: &[Result<Generation, ModelError>], took: Duration) {
        self.seconds += took.as_secs_f64();
        for result in results {
            match result {
                Ok(g) => {
                    self.calls += 1;
                    match &g.usage {
                        Some(u) => {
                            self.usage.add(u);
                            if let (Some(cost), Some(p)) = (&mut self.cost, &self.pricing) {
                                *cost += p.cost(u);
                            }
                        }
                        None => self.calls_without_usage += 1,
                    }
                }
                Err(_) => self.failed_calls += 1,
            }
        }
    }

    /// Adds `other`'s counts (the same model); the cost stays known only when both are.
    pub fn add(&mut self, other: &ModelUsage) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failed_calls = self.failed_calls.saturating_add(other.failed_calls);
        self.calls_without_usage = self.calls_without_usage.saturating_add(other.calls_without_usage);
        self.usage.add(&other.usage);
        self.seconds += other.seconds;
        self.cost = self.cost.zip(other.cost).map(|(a, b)| a + b);
        self.pricing = self.pricing.or(other.pricing);
    }

    pub fn to_json(&self) -> Value {
        let mut row = json!({
            "model": self.model,
            "calls": self.calls,
            "failed_calls": self.failed_calls,
            "calls_without_usage": self.calls_without_usage,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total_tokens,
            "model_seconds": self.seconds,
            "pricing": self.pricing,
            "cost": self.cost,
        });
        if let (Some(r), Value::Object(o)) = (self.usage.reasoning_tokens, &mut row) {
            o.insert("reasoning_tokens".into(), json!(r));
        }
        row
    }

    /// A row as [`ModelUsage::to_json`] writes it; `None` without a model name. Other values that are not what
    /// they should be count as 0 (or no prices, no cost): the file may have been edited.
    pub fn from_json(v: &Value) -> Option<ModelUsage> {
        let model = v.get("model")?.as_str()?.to_string();
        let n = |k: &str| count(v.get(k)).unwrap_or(0);
        let seconds = v.get("model_seconds").and_then(Value::as_f64).filter(|s| s.is_finite() && *s >= 0.0);
        let mut usage = Usage::new(n("prompt_tokens"), n("completion_tokens"));
        usage.reasoning_tokens = count(v.get("reasoning_tokens"));
        Some(ModelUsage {
            model,
            calls: n("calls"),
            failed_calls: n("failed_calls"),
            calls_without_usage: n("calls_without_usage"),
            usage,
            seconds: seconds.unwrap_or(0.0),
            pricing: v.get("pricing").and_then(|p| Pricing::from_value(p).ok()),
            cost: v.get("cost").and_then(Value::as_f64).filter(|c| c.is_finite() && *c >= 0.0),
        })
    }
}

/// Rows with the same model name made one, in first-seen order.
pub fn merged(rows: &[ModelUsage]) -> Vec<ModelUsage> {
    let mut out: Vec<ModelUsage> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|o| o.model == r.model) {
            Some(o) => o.add(r),
            None => out.push(r.clone()),
        }
    }
    out
}

/// The rows of a JSON list (rows that are not rows left out).
fn rows_of(v: Option<&Value>) -> Vec<ModelUsage> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(ModelUsage::from_json).collect()).unwrap_or_default()
}

/// run_summary.json's `usage_by_game` after this invocation: `previous` is the file's former content (if any),
/// `current` this invocation's rows of `game`; `resume` adds them to the game's earlier rows, else they
/// replace them. Other games' rows are kept.
pub fn usage_by_game(previous: Option<&Value>, game: &str, current: &[ModelUsage], resume: bool) -> Value {
    let mut games: BTreeMap<String, Vec<ModelUsage>> = BTreeMap::new();
    if let Some(Value::Object(before)) = previous.and_then(|p| p.get("usage_by_game")) {
        for (g, rows) in before {
            games.insert(g.clone(), rows_of(Some(rows)));
        }
    }
    let mut rows = if resume { games.remove(game).unwrap_or_default() } else { Vec::new() };
    rows.extend(current.iter().cloned());
    games.insert(game.to_string(), merged(&rows));
    let map: Map<String, Value> =
        games.into_iter().map(|(g, rows)| (g, Value::Array(rows.iter().map(ModelUsage::to_json).collect()))).collect();
    Value::Object(map)
}

/// Per model, the sum of `usage_by_game` over every run_summary.json under `root` (for `clem eval`). A file
/// that cannot be read adds nothing and is named in the second list.
pub fn totals(root: &Path) -> (BTreeMap<String, ModelUsage>, Vec<PathBuf>) {
    let mut out: BTreeMap<String, ModelUsage> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for path in crate::fsio::files_named(root, "run_summary.json") {
        let Ok(summary) = crate::scores::read(&path) else {
            unreadable.push(path);
            continue;
        };
        let Some(Value::Object(games)) = summary.get("usage_by_game") else { continue };
        for row in games.values().flat_map(|rows| rows_of(Some(rows))) {
            match out.get_mut(&row.model) {
                Some(total) => total.add(&row),
                None => {
                    out.insert(row.model.clone(), row);
                }
            }
        }
    }
    (out, unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(prompt: u64, completion: u64) -> Result<Generation, ModelError> {
        Ok(Generation::new(json!({}), json!({}), "hi").with_usage(Some(Usage::new(prompt, completion))))
    }

    #[test]
    fn records_sum_tokens_and_cost_and_survive_json() {
        let prices = Pricing { input_per_million: 2.5, output_per_million: 10.0 };
        let mut u = ModelUsage::new("m", Some(prices));
        u.record(&[generation(1000, 100), Err(ModelError::backend("m", "down"))], Duration::from_millis(500));
        u.record(&[Ok(Generation::new(json!({}), json!({}), "no usage")), generation(3000, 300)], Duration::ZERO);
        assert_eq!((u.calls, u.failed_calls, u.calls_without_usage), (3, 1, 1));
        assert_eq!((u.usage.prompt_tokens, u.usage.completion_tokens, u.usage.total_tokens), (4000, 400, 4400));
        assert_eq!(u.cost, Some((4000.0 * 2.5 + 400.0 * 10.0) / 1e6));
        assert_eq!(ModelUsage::from_json(&u.to_json()), Some(u.clone()));
        assert_eq!(ModelUsage::new("free", None).cost, None);
        // Edited files: wrong kinds count as nothing, no model name is no row.
        let odd =
            ModelUsage::from_json(&json!({"model": "x", "calls": -3, "cost": "lots", "pricing": 1})).expect("row");
        assert_eq!((odd.calls, odd.cost, odd.pricing), (0, None, None));
        assert_eq!(ModelUsage::from_json(&json!({"calls": 3})), None);
    }

    #[test]
    fn by_game_resume_adds_a_fresh_run_replaces_other_games_stay() {
        let row = |model: &str, calls: u64| {
            let mut r = ModelUsage::new(model, None);
            r.record(&(0..calls).map(|_| generation(10, 1)).collect::<Vec<_>>(), Duration::from_secs(1));
            r
        };
        let first = json!({"usage_by_game": usage_by_game(None, "hellogame", &[row("m", 2)], false)});
        let other = json!({"usage_by_game": usage_by_game(Some(&first), "taboo", &[row("m", 5)], false)});
        let resumed = usage_by_game(Some(&other), "hellogame", &[row("m", 3)], true);
        assert_eq!(resumed["hellogame"][0]["calls"], 5);
        assert_eq!(resumed["hellogame"][0]["prompt_tokens"], 50);
        assert_eq!(resumed["taboo"][0]["calls"], 5);
        let fresh = usage_by_game(Some(&other), "hellogame", &[row("m", 3)], false);
        assert_eq!(fresh["hellogame"][0]["calls"], 3);
        // Garbage before is no reason to fail.
        let v = usage_by_game(Some(&json!({"usage_by_game": {"g": 3, "h": [1, {"model": 2}]}})), "g", &[], true);
        assert_eq!(v, json!({"g": [], "h": []}));
        // Two players of one model: one row.
        assert_eq!(
            merged(&[row("a", 1), row("b", 1), row("a", 2)]).iter().map(|r| r.calls).collect::<Vec<_>>(),
            [3, 1]
        );
    }

    #[test]
    fn totals_sum_every_summary_per_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |folder: &str, v: Value| {
            let d = dir.path().join(folder);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("run_summary.json"), v.to_string()).expect("write");
        };
        let row = |model: &str, prompt: u64, cost: Option<f64>| json!({"model": model, "calls": 1, "prompt_tokens": prompt, "completion_tokens": 1, "cost": cost});
        write("a", json!({"usage_by_game": {"g": [row("a", 10, Some(0.5))], "h": [row("a", 5, Some(0.25))]}}));
        write("a--b", json!({"usage_by_game": {"g": [row("a", 1, None), row("b", 2, Some(1.0))]}}));
        write("c", json!({"game_name": "g"}));
        std::fs::write(dir.path().join("c/run_summary.json"), "{").expect("broken");
        let (t, unreadable) = totals(dir.path());
        assert_eq!((t["a"].calls, t["a"].usage.prompt_tokens, t["a"].cost), (3, 16, None));
        assert_eq!((t["b"].usage.prompt_tokens, t["b"].cost), (2, Some(1.0)));
        assert_eq!(unreadable, [dir.path().join("c/run_summary.json")]);
    }
}
