//! Property tests: unification laws, and that no input makes the registry, selector, key-file, regex or
//! cleaning code panic.

use clem_core::cleaning::Cleaner;
use clem_core::keys::Keys;
use clem_core::pyregex::PyRegex;
use clem_core::registry::Registry;
use clem_core::ModelSpec;
use clem_json_strategies as strategies;
use proptest::prelude::*;
use serde_json::{Map, Value};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(Value::from),
        prop::sample::select(vec![0.0f64, 1.0, 2.5, -1.0]).prop_map(Value::from),
        prop::sample::select(vec!["a", "b", "", "1"]).prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    strategies::tree(
        scalar().boxed(),
        prop::sample::select(&["k", "l", "m"][..]).prop_map(String::from).boxed(),
        3,
        24,
        3,
    )
}

fn spec() -> impl Strategy<Value = ModelSpec> {
    prop::collection::btree_map(prop::sample::select(vec!["model_name", "backend", "k", "model_config"]), value(), 0..4)
        .prop_map(|m| ModelSpec::new(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>()))
}

proptest! {
    #[test]
    fn unification_success_is_symmetric(a in spec(), b in spec()) {
        prop_assert_eq!(a.unify(&b).is_some(), b.unify(&a).is_some());
        prop_assert_eq!(a.unifies_with(&b), a.unify(&b).is_some());
    }

    #[test]
    fn unification_is_idempotent(a in spec(), b in spec()) {
        prop_assert_eq!(a.unify(&a), Some(a.clone()));
        if let Some(u) = a.unify(&b) {
            // The result unifies with both inputs and absorbs them.
            prop_assert!(u.unifies_with(&a) && u.unifies_with(&b));
            prop_assert_eq!(u.unify(&b), Some(u.clone()));
        }
    }

    #[test]
    fn random_bytes_as_registry_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let mut r = Registry::default();
        let _ = r.add_str(&text, "fuzz.json");
        let _ = r.check(&[]);
    }

    #[test]
    fn random_json_as_registry_never_panics(v in value()) {
        let mut r = Registry::default();
        if r.add_str(&v.to_string(), "fuzz.json").is_ok() {
            let _ = r.check(&[]);
            let _ = r.select(&ModelSpec::from_name("a"));
        }
    }

    #[test]
    fn random_selectors_never_panic(s in "\\PC{0,40}", t in "\\{[ -~]{0,30}\\}?") {
        let _ = ModelSpec::parse_selector(&s);
        let _ = ModelSpec::parse_selector(&t);
    }

    #[test]
    fn random_key_files_never_panic(s in "\\PC{0,80}") {
        let _ = Keys::from_json_str(&s, std::path::Path::new("key.json"));
    }

    #[test]
    fn random_patterns_never_panic(p in "[ -~]{0,12}", text in "\\PC{0,30}") {
        if let Ok(re) = PyRegex::new(&p) {
            let _ = re.remove_all(&text);
            let _ = re.split_first_last(&text);
        }
    }

    #[test]
    fn cleaning_never_panics(out in "\\PC{0,40}", prompt in "\\PC{0,10}", prefix in "[a-z:]{0,3}") {
        let spec = ModelSpec::new(serde_json::json!({"model_config": {
            "eos_to_cull": "<\\|im_end\\|>", "output_split_prefix": prefix,
            "cot_output": true, "cot_start_tag": "<think>", "cot_end_tag": "</think>"}})
            .as_object().cloned().unwrap_or_default());
        let cleaner = Cleaner::from_spec(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let _ = cleaner.clean(&out, &prompt, None);
    }
}
