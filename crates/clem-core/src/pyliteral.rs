//! Python literals (`{'a': True, 'b': None}`) read with `py_literal`'s parser and turned into JSON values.

use py_literal::Value as Py;
use serde_json::{Map, Number, Value};

/// Parses one Python literal expression into JSON; keys must be strings.
pub fn parse(text: &str) -> Result<Value, String> {
    let py: Py = text.trim().parse().map_err(|e| format!("{e}"))?;
    to_json(&py)
}

fn to_json(py: &Py) -> Result<Value, String> {
    Ok(match py {
        Py::String(s) => Value::String(s.clone()),
        Py::Boolean(b) => Value::Bool(*b),
        Py::None => Value::Null,
        Py::Integer(i) => {
            let text = i.to_string();
            let n: Number = text.parse().map_err(|_| format!("integer {text} is too large"))?;
            Value::Number(n)
        }
        Py::Float(f) => Value::Number(Number::from_f64(*f).ok_or_else(|| format!("float {f} has no JSON form"))?),
        Py::List(items) | Py::Tuple(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Py::Dict(pairs) => {
            let mut m = Map::new();
            for (k, v) in pairs {
                let Py::String(key) = k else {
                    return Err(format!("dict key {k} is not a string"));
                };
                m.insert(key.clone(), to_json(v)?);
            }
            Value::Object(m)
        }
        other => return Err(format!("{other} has no JSON form")),
    })
}
