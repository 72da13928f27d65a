//! Output cleaning, table-driven; every expectation was produced by clemcore's own Python code
//! (`split_and_clean_batch_outputs` / `split_and_clean_cot_output`, see tests/goldens/make_cleaning_goldens.py).

use clem_core::cleaning::Cleaner;
use clem_core::ModelSpec;
use serde_json::Value;

#[test]
fn cleaning_matches_python() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goldens/cleaning.json");
    let text = std::fs::read_to_string(path).expect("tests/goldens/cleaning.json is committed");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("valid goldens");
    assert!(cases.len() >= 20, "too few cleaning cases: {}", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let config = case["model_config"].as_object().cloned().expect("model_config object");
        let mut map = serde_json::Map::new();
        map.insert("model_config".into(), Value::Object(config));
        let spec = ModelSpec::new(map);
        let cleaner = Cleaner::from_spec(&spec).expect("compiles");
        let cleaner = Cleaner { pad_token: case["pad_token"].as_str().map(String::from), ..cleaner };
        let got = cleaner
            .clean(case["output"].as_str().expect("output"), case["prompt"].as_str().expect("prompt"), None)
            .expect("cleans");
        let want_text = case["response_text"].as_str().expect("response_text");
        let want_cot = case["cot_content"].as_str();
        if got.text != want_text || got.cot_content.as_deref() != want_cot {
            failures.push(format!(
                "case {i} ({}): got {:?} / cot {:?}, python gave {want_text:?} / cot {want_cot:?}",
                case["name"], got.text, got.cot_content
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
