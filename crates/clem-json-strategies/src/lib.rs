//! proptest strategies for the property tests of every reader of outside JSON (registries, provider replies,
//! chat requests, instances and records): any JSON tree, with the keys and words a given reader looks for
//! favoured, so that generated input reaches past the reader's first check. Used as a dev-dependency only.

use proptest::prelude::*;
use proptest::strategy::Union;
use serde_json::{Map, Number, Value};

/// An object key: one of `keys` four times out of five, any string otherwise.
pub fn key(keys: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![4 => prop::sample::select(keys).prop_map(String::from), 1 => any::<String>()].boxed()
}

/// Any JSON number: i64, u64 or f64 (a non-finite f64, which JSON cannot hold, becomes null).
pub fn number() -> BoxedStrategy<Value> {
    prop_oneof![any::<i64>().prop_map(Value::from), any::<u64>().prop_map(Value::from), float()].boxed()
}

/// Any f64 as JSON (a non-finite one, which JSON cannot hold, becomes null).
pub fn float() -> BoxedStrategy<Value> {
    any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)).boxed()
}

/// A JSON scalar: null, a bool, one of `numbers` (weighted `number_weight` against 1 for null and for bools), or a
/// string, one of `words` as often as any string.
pub fn scalar(
    words: &'static [&'static str],
    numbers: BoxedStrategy<Value>,
    number_weight: u32,
) -> BoxedStrategy<Value> {
    Union::new_weighted(vec![
        (1, Just(Value::Null).boxed()),
        (1, any::<bool>().prop_map(Value::Bool).boxed()),
        (number_weight, numbers),
        (2, prop::sample::select(words).prop_map(Value::from).boxed()),
        (2, any::<String>().prop_map(Value::from).boxed()),
    ])
    .boxed()
}

/// Any JSON tree up to `depth` levels of lists and objects (about `size` nodes in all, at most `width` below one
/// node), with leaves from `scalar` and object keys from `key`.
pub fn tree(
    scalar: BoxedStrategy<Value>,
    key: BoxedStrategy<String>,
    depth: u32,
    size: u32,
    width: usize,
) -> BoxedStrategy<Value> {
    scalar
        .prop_recursive(depth, size, width as u32, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..width).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..width)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

/// An object made of the `noise` pairs, then each of `fields` set (`Some`) or taken out (`None`): the fields a
/// reader looks for, present or missing on purpose, among keys it must ignore.
pub fn object<'a>(fields: impl IntoIterator<Item = (&'a str, Option<Value>)>, noise: Vec<(String, Value)>) -> Value {
    let mut map: Map<String, Value> = noise.into_iter().collect();
    for (key, value) in fields {
        match value {
            Some(value) => map.insert(key.into(), value),
            None => map.remove(key),
        };
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::TestRunner;

    fn depth(v: &Value) -> u32 {
        match v {
            Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn trees_stay_within_depth_and_width_and_use_the_given_keys_and_words() {
        let mut runner = TestRunner::deterministic();
        let strategy = tree(scalar(&["w"], number(), 3), key(&["k"]), 3, 32, 5);
        let (mut saw_key, mut saw_word, mut saw_nested) = (false, false, false);
        for _ in 0..500 {
            let value = strategy.new_tree(&mut runner).expect("a tree").current();
            assert!(depth(&value) <= 3, "{value}");
            match &value {
                Value::Array(items) => assert!(items.len() < 5),
                Value::Object(map) => {
                    assert!(map.len() < 5);
                    saw_key |= map.contains_key("k");
                }
                _ => {}
            }
            saw_word |= value.to_string().contains("\"w\"");
            saw_nested |= depth(&value) >= 2;
        }
        assert!(saw_key && saw_word && saw_nested, "key {saw_key}, word {saw_word}, nested {saw_nested}");
    }

    #[test]
    fn object_fields_override_noise_and_none_removes() {
        let noise = vec![("a".to_string(), Value::from(1)), ("b".to_string(), Value::from(2))];
        let made = object([("a", Some(Value::from("x"))), ("b", None), ("c", Some(Value::Null))], noise);
        assert_eq!(made, serde_json::json!({"a": "x", "c": null}));
    }
}
