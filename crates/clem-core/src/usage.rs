//! Token usage of one generation, normalised over providers, why it ended, and what it cost.
//!
//! Backends fill [`Usage`] from the provider's reply (remote) or from their tokenizer (local); the recorded
//! response object keeps the provider's own fields untouched, and clem reads only this normalised form.
//! [`Pricing`] comes from an entry's `model_config.pricing` (`{"input_per_million": 2.5,
//! "output_per_million": 10}`, dollars per million tokens) or a prices file.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Tokens of one generation, as OpenAI counts them: `completion_tokens` include the reasoning tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of the completion tokens, those the model spent thinking (when the provider reports them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    pub total_tokens: u64,
}

impl Usage {
    /// Usage with `total_tokens` their sum (saturating: counts come from outside).
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            reasoning_tokens: None,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }

    pub fn with_reasoning(mut self, reasoning_tokens: Option<u64>) -> Usage {
        self.reasoning_tokens = reasoning_tokens;
        self
    }

    /// Adds `other` to these counts (saturating); reasoning tokens stay unknown only when both are.
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.reasoning_tokens = match (self.reasoning_tokens, other.reasoning_tokens) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
    }

    /// The OpenAI `usage` object (`completion_tokens_details.reasoning_tokens` when known).
    pub fn to_openai(&self) -> Value {
        let mut v = serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        });
        if let (Some(r), Value::Object(o)) = (self.reasoning_tokens, &mut v) {
            o.insert("completion_tokens_details".into(), serde_json::json!({ "reasoning_tokens": r }));
        }
        v
    }
}

/// A token count in a provider's JSON: a non-negative integer (a float with no fraction is accepted, as some
/// proxies send `12.0`); anything else is no count.
pub fn count(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e18).map(|f| f as u64))
}

/// Why a generation ended, as OpenAI names it: `length` when the token budget cut it, `stop` otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    #[default]
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Pricing {
    /// Reads a pricing object (`{"input_per_million": 2.5, "output_per_million": 10}`): both keys, each a finite
    /// number >= 0. The error says which key is wrong.
    pub fn from_value(v: &Value) -> Result<Pricing, String> {
        let Value::Object(o) = v else {
            return Err(format!(
                "must be an object like {{\"input_per_million\": 2.5, \"output_per_million\": 10}}, not {v}"
            ));
        };
        let price = |key: &str| -> Result<f64, String> {
            match o.get(key) {
                None => Err(format!("{key}: missing (dollars per million tokens)")),
                Some(p) => p
                    .as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .ok_or_else(|| format!("{key}: must be a number >= 0 (dollars per million tokens), not {p}")),
            }
        };
        Ok(Pricing { input_per_million: price("input_per_million")?, output_per_million: price("output_per_million")? })
    }

    /// The entry's `model_config.pricing`, if it has one.
    pub fn from_spec(spec: &crate::ModelSpec) -> Result<Option<Pricing>, String> {
        match spec.config("pricing") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Pricing::from_value(v).map(Some).map_err(|m| format!("model_config.pricing.{m}")),
        }
    }

    /// Dollars for `usage`: prompt tokens at the input price, completion tokens (reasoning included) at the
    /// output price.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.input_per_million + usage.completion_tokens as f64 * self.output_per_million)
            / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn totals_saturate_and_add() {
        let mut u = Usage::new(3, 4);
        assert_eq!(u.total_tokens, 7);
        u.add(&Usage::new(1, 2).with_reasoning(Some(1)));
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens, u.reasoning_tokens), (4, 6, 10, Some(1)));
        assert_eq!(Usage::new(u64::MAX, 1).total_tokens, u64::MAX);
        assert_eq!(
            Usage::new(2, 3).with_reasoning(Some(1)).to_openai(),
            json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
                   "completion_tokens_details": {"reasoning_tokens": 1}})
        );
    }

    #[test]
    fn counts_are_whole_non_negative_numbers() {
        assert_eq!(count(Some(&json!(12))), Some(12));
        assert_eq!(count(Some(&json!(12.0))), Some(12));
        for bad in [json!(-1), json!(1.5), json!("12"), json!(null), json!(1e300)] {
            assert_eq!(count(Some(&bad)), None, "{bad}");
        }
        assert_eq!(count(None), None);
    }

    #[test]
    fn pricing_reads_both_prices_and_costs_tokens() {
        let p = Pricing::from_value(&json!({"input_per_million": 2.5, "output_per_million": 10})).expect("prices");
        assert_eq!(p.cost(&Usage::new(1_000_000, 500_000)), 7.5);
        assert_eq!(p.cost(&Usage::new(0, 0)), 0.0);
        let e = Pricing::from_value(&json!({"input_per_million": 2.5})).expect_err("missing");
        assert!(e.starts_with("output_per_million: missing"), "{e}");
        let e = Pricing::from_value(&json!({"input_per_million": -1, "output_per_million": 1})).expect_err("negative");
        assert!(e.starts_with("input_per_million: must be a number >= 0"), "{e}");
        assert!(Pricing::from_value(&json!("cheap")).is_err());
        let spec: crate::ModelSpec = serde_json::from_value(
            json!({"model_name": "m", "model_config": {"pricing": {"input_per_million": 1, "output_per_million": "x"}}}),
        )
        .expect("spec");
        let e = Pricing::from_spec(&spec).expect_err("bad");
        assert!(e.starts_with("model_config.pricing.output_per_million"), "{e}");
    }
}
