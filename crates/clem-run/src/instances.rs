//! Game instances files, as clembench's `in/instances.json`:
//! `{"experiments": [{"name": ..., "game_instances": [{"game_id": 0, ...}, ...], <experiment parameters>}]}`.

use std::path::Path;

use serde_json::{Map, Value};

/// An instances file that cannot be used; the message says where and why.
#[derive(Debug, thiserror::Error)]
#[error("instances {source_name}: {message}")]
pub struct InstancesError {
    pub source_name: String,
    pub message: String,
}

/// One experiment: its parameters (everything but `game_instances`) and its instances.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub name: String,
    /// The experiment object without `game_instances`, in file order (what experiment.json records).
    pub params: Map<String, Value>,
    pub instances: Vec<Instance>,
}

/// One game instance: its `game_id` and the whole object (what instance.json records).
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub game_id: u64,
    pub data: Map<String, Value>,
}

/// Parses an instances file's text; `source_name` names it in errors.
pub fn parse(text: &str, source_name: &str) -> Result<Vec<Experiment>, InstancesError> {
    let err = |message: String| InstancesError { source_name: source_name.into(), message };
    let root: Value = serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let experiments =
        root.get("experiments").and_then(Value::as_array).ok_or_else(|| err("needs an \"experiments\" list".into()))?;
    let mut out = Vec::with_capacity(experiments.len());
    for (i, exp) in experiments.iter().enumerate() {
        let Value::Object(obj) = exp else {
            return Err(err(format!("experiments[{i}] is not an object")));
        };
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| crate::fsio::is_plain_segment(n))
            .ok_or_else(|| err(format!("experiments[{i}] needs a \"name\" usable as a folder name")))?
            .to_string();
        let list = obj
            .get("game_instances")
            .and_then(Value::as_array)
            .ok_or_else(|| err(format!("experiment {name:?} needs a \"game_instances\" list")))?;
        let mut instances = Vec::with_capacity(list.len());
        for (j, inst) in list.iter().enumerate() {
            let Value::Object(data) = inst else {
                return Err(err(format!("experiment {name:?}: game_instances[{j}] is not an object")));
            };
            let game_id = data.get("game_id").and_then(Value::as_u64).ok_or_else(|| {
                err(format!("experiment {name:?}: game_instances[{j}] needs a whole \"game_id\" >= 0"))
            })?;
            if instances.iter().any(|x: &Instance| x.game_id == game_id) {
                return Err(err(format!("experiment {name:?}: game_id {game_id} appears twice")));
            }
            instances.push(Instance { game_id, data: data.clone() });
        }
        let params: Map<String, Value> =
            obj.iter().filter(|(k, _)| k.as_str() != "game_instances").map(|(k, v)| (k.clone(), v.clone())).collect();
        if out.iter().any(|e: &Experiment| e.name == name) {
            return Err(err(format!("experiment {name:?} appears twice")));
        }
        out.push(Experiment { name, params, instances });
    }
    Ok(out)
}

/// Reads an instances file.
pub fn load(path: &Path) -> Result<Vec<Experiment>, InstancesError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InstancesError { source_name: path.display().to_string(), message: e.to_string() })?;
    parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let exps = parse(
            r#"{"experiments": [{"name": "e", "game_instances": [{"game_id": 3, "x": 1}], "language": "en"}]}"#,
            "t",
        )
        .expect("parses");
        assert_eq!(exps[0].instances[0].game_id, 3);
        assert_eq!(exps[0].params.keys().collect::<Vec<_>>(), vec!["name", "language"]);
        for bad in [
            "[]",
            r#"{"experiments": [{"game_instances": []}]}"#,
            r#"{"experiments": [{"name": "../x", "game_instances": []}]}"#,
            r#"{"experiments": [{"name": "e", "game_instances": [{"game_id": -1}]}]}"#,
            r#"{"experiments": [{"name": "e", "game_instances": [{"game_id": 1}, {"game_id": 1}]}]}"#,
        ] {
            assert!(parse(bad, "t").is_err(), "{bad}");
        }
    }
}
