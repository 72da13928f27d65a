//! Property tests of clem-run's readers of outside input: instances files, the results folder a `--resume` run
//! finds (run.json, experiment.json, completed.json, scores.json, leftovers, folders where files belong),
//! the records `clem transcribe` renders (interactions.json, player requests, scores.json, error.json) in HTML
//! and LaTeX, the records `clem score` rescores and the scores `clem eval` tabulates, Python-style JSON (NaN),
//! and the tokenizer files `check_hf` reads.
//!
//! A panic (an index, an unwrap, an arithmetic overflow in this debug build) fails a test. A refusal must name
//! the file it is about; where the input is accepted, the output must agree with it. Generators build JSON
//! along the paths the readers walk (`experiments[i].game_instances[j].game_id`, `turns[r][e].action.content`,
//! ...), each step sometimes replaced by an arbitrary tree.

use std::path::{Path, PathBuf};

use clem_backends::{load_spec, LoadContext};
use clem_core::{GenArgs, LoadedModel, ModelSpec};
use clem_json_strategies as strategies;
use clem_run::check_hf::{check, CheckOptions};
use clem_run::eval::{evaluate, EvalOptions};
use clem_run::hellogame::HelloGame;
use clem_run::instances::{self, Experiment};
use clem_run::rescore::{rescore, ScoreOptions};
use clem_run::runner::{run, NoProgress, RunOptions, Status};
use clem_run::tex::{build_tex, escape_latex};
use clem_run::transcript::{escape, render_instance, transcribe};
use clem_run::{pyjson, scores};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------------------------
// JSON generators

/// Keys the readers look for, so that random objects hit them often.
const KEYS: &[&str] = &[
    "experiments",
    "name",
    "game_instances",
    "game_id",
    "target_name",
    "prompt",
    "games",
    "episode scores",
    "Main Score",
    "meta",
    "turns",
    "from",
    "to",
    "action",
    "type",
    "content",
    "label",
    "timestamp",
    "calls",
    "call",
    "player_name",
    "players",
    "error",
    "message",
    "chat_template",
    "template",
    "usage_by_game",
    "hellogame",
    "model",
    "mock",
    "prompt_tokens",
    "cost",
];

/// Strings the readers compare against.
const WORDS: &[&str] =
    &["GM", "Player 1", "", "greet_en", "Hello", "the name:\nAna", "GREET: Hello Ana, welcome!", "2024-01-01T00:00:00"];

fn key() -> BoxedStrategy<String> {
    strategies::key(KEYS)
}

fn scalar() -> BoxedStrategy<Value> {
    strategies::scalar(WORDS, prop_oneof![3 => strategies::number(), 1 => (0u64..4).prop_map(Value::from)].boxed(), 4)
}

/// Any JSON, a few levels deep, with the readers' keys and words favoured.
fn tree() -> BoxedStrategy<Value> {
    strategies::tree(scalar(), key(), 3, 32, 5)
}

/// JSON along `path` (`"0"` is a list, its items all built the same way), with noise beside every step and,
/// now and then, an arbitrary tree instead of a step.
fn shaped(path: &'static [&'static str], leaf: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    let Some((step, rest)) = path.split_first() else { return leaf };
    let inner = shaped(rest, leaf);
    let right = if *step == "0" {
        prop::collection::vec(inner, 0..4).prop_map(Value::Array).boxed()
    } else {
        (inner, prop::collection::vec((key(), tree()), 0..3))
            .prop_map(move |(v, noise)| strategies::object([(*step, Some(v))], noise))
            .boxed()
    };
    prop_oneof![8 => right, 1 => tree()].boxed()
}

/// An object with each of `fields` (most of the time) and noise.
fn with_fields(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let strategies: Vec<_> =
        fields.into_iter().map(|(k, s)| prop::option::weighted(0.9, s).prop_map(move |v| (k, v))).collect();
    (strategies, prop::collection::vec((key(), tree()), 0..2))
        .prop_map(|(fields, noise)| strategies::object(fields, noise))
        .boxed()
}

/// Bytes of a file: the JSON, any JSON, or anything.
fn file_bytes(json: BoxedStrategy<Value>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => json.prop_map(|v| v.to_string().into_bytes()),
        1 => tree().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..48),
        // Around serde_json's recursion limit.
        1 => (100usize..140).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------------------------
// Instances files

fn experiment_name() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => prop::sample::select(vec!["greet_en", "greet_de", "e1"]).prop_map(Value::from),
        1 => prop::sample::select(vec!["", ".", "..", "a/b", "a\\b", "x\0y"]).prop_map(Value::from),
        1 => "[^/\\\\\0]{1,12}".prop_map(Value::from),
        1 => scalar(),
    ]
    .boxed()
}

fn game_instance() -> BoxedStrategy<Value> {
    let id = prop_oneof![6 => (0u64..4).prop_map(Value::from), 1 => any::<u64>().prop_map(Value::from), 1 => scalar()];
    let text = || prop_oneof![3 => prop::sample::select(WORDS).prop_map(Value::from), 1 => scalar()].boxed();
    with_fields(vec![("game_id", id.boxed()), ("target_name", text()), ("prompt", text())])
}

fn instances_json() -> BoxedStrategy<Value> {
    let instances = prop::collection::vec(prop_oneof![8 => game_instance(), 1 => tree()], 0..4).prop_map(Value::Array);
    let experiment = with_fields(vec![("name", experiment_name()), ("game_instances", instances.boxed())]);
    let list = prop::collection::vec(prop_oneof![8 => experiment, 1 => tree()], 0..3).prop_map(Value::Array);
    with_fields(vec![("experiments", list.boxed())])
}

/// Instances files that parse (the runner's input), with any names, prompts and target names.
fn run_instances() -> BoxedStrategy<String> {
    let text = || prop_oneof![3 => prop::sample::select(WORDS).prop_map(Value::from), 1 => scalar()].boxed();
    let instance = (text(), text(), tree())
        .prop_map(|(name, prompt, extra)| json!({"target_name": name, "prompt": prompt, "extra": extra}));
    let name = prop_oneof![4 => Just(None), 1 => "[^/\\\\\\x00]{1,12}".prop_map(Some)];
    let experiment = (name, prop::collection::vec(instance, 0..4), tree());
    prop::collection::vec(experiment, 1..3)
        .prop_map(|exps| {
            let list: Vec<Value> = exps
                .into_iter()
                .enumerate()
                .map(|(i, (name, instances, extra))| {
                    let instances: Vec<Value> = instances
                        .into_iter()
                        .enumerate()
                        .map(|(j, mut inst)| {
                            inst["game_id"] = json!(j);
                            inst
                        })
                        .collect();
                    // Distinct names: an experiment's index keeps two random names apart.
                    let name = name.map_or(format!("greet_{i}"), |n| format!("{n}{i}"));
                    json!({"name": name, "game_instances": instances, "language": extra})
                })
                .collect();
            json!({ "experiments": list }).to_string()
        })
        .boxed()
}

/// An accepted instances file agrees with its JSON: experiments, names, ids and data in file order.
fn check_instances(text: &str, exps: &[Experiment]) -> Result<(), TestCaseError> {
    let root: Value = serde_json::from_str(text).expect("accepted instances are JSON");
    let list = root["experiments"].as_array().expect("an experiments list");
    prop_assert_eq!(list.len(), exps.len());
    for (v, e) in list.iter().zip(exps) {
        prop_assert_eq!(v["name"].as_str(), Some(e.name.as_str()));
        prop_assert!(!e.params.contains_key("game_instances"));
        prop_assert_eq!(e.params.len() + 1, v.as_object().map_or(0, Map::len));
        let items = v["game_instances"].as_array().expect("a game_instances list");
        prop_assert_eq!(items.len(), e.instances.len());
        for (item, inst) in items.iter().zip(&e.instances) {
            prop_assert_eq!(item["game_id"].as_u64(), Some(inst.game_id));
            prop_assert_eq!(item.as_object(), Some(&inst.data));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Results folders

/// What an earlier run may have left at one path.
#[derive(Clone, Debug)]
enum Leftover {
    Absent,
    File(Vec<u8>),
    /// A folder where a file belongs.
    Folder,
}

fn leftover(json: BoxedStrategy<Value>) -> BoxedStrategy<Leftover> {
    leftover_weighted(json, 8)
}

/// Leftovers with folders where files belong `folder_weight` times in 56 + `folder_weight`.
fn leftover_weighted(json: BoxedStrategy<Value>, folder_weight: u32) -> BoxedStrategy<Leftover> {
    prop_oneof![
        24 => Just(Leftover::Absent),
        32 => file_bytes(json).prop_map(Leftover::File),
        folder_weight => Just(Leftover::Folder),
    ]
    .boxed()
}

impl Leftover {
    fn put(&self, path: &Path) {
        let parent = path.parent().expect("a parent");
        // A file may already sit where a parent folder belongs: then this leftover cannot be placed.
        if std::fs::create_dir_all(parent).is_err() || path.exists() {
            return;
        }
        match self {
            Leftover::Absent => {}
            Leftover::File(bytes) => std::fs::write(path, bytes).expect("write leftover"),
            Leftover::Folder => std::fs::create_dir_all(path).expect("leftover folder"),
        }
    }
}

fn interactions_json() -> BoxedStrategy<Value> {
    let action = with_fields(vec![
        ("type", prop_oneof![prop::sample::select(WORDS).prop_map(Value::from), scalar()].boxed()),
        ("content", prop_oneof![any::<String>().prop_map(Value::from), tree()].boxed()),
        ("label", scalar()),
    ]);
    let who = || prop_oneof![3 => prop::sample::select(vec!["GM", "Player 1"]).prop_map(Value::from), 1 => scalar()];
    let event = with_fields(vec![
        ("from", who().boxed()),
        ("to", who().boxed()),
        ("timestamp", prop::sample::select(WORDS).prop_map(Value::from).boxed()),
        ("action", action),
    ]);
    let turns = prop::collection::vec(
        prop_oneof![6 => prop::collection::vec(event, 0..4).prop_map(Value::Array), 1 => tree()],
        0..3,
    )
    .prop_map(Value::Array);
    let meta = with_fields(vec![
        ("game_name", scalar()),
        ("experiment_name", scalar()),
        ("game_id", scalar()),
        ("results_folder", scalar()),
    ]);
    let players =
        prop::collection::vec((key(), with_fields(vec![("game_role", scalar()), ("model_name", scalar())])), 0..3)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()));
    with_fields(vec![("meta", meta), ("players", players.boxed()), ("turns", turns.boxed())])
}

fn requests_json() -> BoxedStrategy<Value> {
    let call = with_fields(vec![
        ("timestamp", prop::sample::select(WORDS).prop_map(Value::from).boxed()),
        ("manipulated_prompt_obj", tree()),
        ("raw_response_obj", tree()),
    ]);
    let calls = shaped(&["0", "call"], call);
    let meta = shaped(&["player_name"], prop::sample::select(WORDS).prop_map(Value::from).boxed());
    with_fields(vec![("meta", meta), ("calls", calls)])
}

fn scores_json() -> BoxedStrategy<Value> {
    let score = prop_oneof![(0.0f64..=100.0).prop_map(Value::from), scalar()].boxed();
    shaped(&["episode scores", "Main Score"], score)
}

/// scores.json as `clem eval` reads it: Aborted and Main Score of any kind.
fn eval_scores_json() -> BoxedStrategy<Value> {
    let number = || prop_oneof![3 => (0u8..=1).prop_map(Value::from), 2 => (0.0f64..=100.0).prop_map(Value::from), 1 => scalar()];
    let episode =
        with_fields(vec![("Aborted", number().boxed()), ("Main Score", number().boxed()), ("Played", scalar())]);
    prop_oneof![8 => with_fields(vec![("episode scores", episode)]), 1 => tree()].boxed()
}

/// Bytes of a JSON file as Python may write it: `null`s sometimes written as `NaN`, `Infinity` or `-Infinity`.
fn python_bytes(json: BoxedStrategy<Value>) -> BoxedStrategy<Vec<u8>> {
    (file_bytes(json), prop::sample::select(vec!["null", "NaN", "Infinity", "-Infinity"]))
        .prop_map(|(bytes, special)| String::from_utf8_lossy(&bytes).replace("null", special).into_bytes())
        .boxed()
}

fn error_json() -> BoxedStrategy<Value> {
    with_fields(vec![
        ("error", scalar()),
        ("message", prop_oneof![any::<String>().prop_map(Value::from), tree()].boxed()),
    ])
}

/// The files of one instance folder.
#[derive(Clone, Debug)]
struct InstanceFiles {
    completed: Leftover,
    scores: Leftover,
    interactions: Leftover,
    requests: Leftover,
    error: Leftover,
    instance: Leftover,
    transcript: Leftover,
    temp: Leftover,
}

/// An instance folder's files; `folders` weighs folders where files belong (out of 64).
fn instance_files(folders: u32) -> BoxedStrategy<InstanceFiles> {
    let l = |json: BoxedStrategy<Value>| leftover_weighted(json, folders);
    (
        l(Just(json!({"timestamp": "2024-01-01T00:00:00"})).boxed()),
        l(scores_json()),
        l(interactions_json()),
        l(requests_json()),
        l(error_json()),
        l(tree()),
        prop_oneof![56 => Just(Leftover::Absent), folders => Just(Leftover::Folder)],
        l(tree()),
    )
        .prop_map(|(completed, scores, interactions, requests, error, instance, transcript, temp)| InstanceFiles {
            completed,
            scores,
            interactions,
            requests,
            error,
            instance,
            transcript,
            temp,
        })
        .boxed()
}

impl InstanceFiles {
    fn put(&self, dir: &Path) {
        let _ = std::fs::create_dir_all(dir);
        self.completed.put(&dir.join("completed.json"));
        self.scores.put(&dir.join("scores.json"));
        self.interactions.put(&dir.join("interactions.json"));
        self.requests.put(&dir.join("player_1.requests.json"));
        self.error.put(&dir.join("error.json"));
        self.instance.put(&dir.join("instance.json"));
        self.transcript.put(&dir.join("transcript.html"));
        self.temp.put(&dir.join(".clem-tmp-1-interactions.json"));
    }
}

/// The results folder of an earlier run of the mock player: run.json, run_summary.json, and per experiment
/// experiment.json (or a file where the experiment's folder belongs) and the instance folders' files.
#[derive(Clone, Debug)]
struct Earlier {
    run_json: Leftover,
    run_summary: Leftover,
    experiment_json: Leftover,
    experiment_is_file: bool,
    instances: Vec<InstanceFiles>,
}

fn earlier() -> BoxedStrategy<Earlier> {
    let run_json = shaped(&["games", "hellogame"], tree());
    let run_summary = shaped(&["usage_by_game", "hellogame", "0", "calls"], tree());
    let instances = prop::collection::vec(instance_files(1), 4);
    let summary = leftover_weighted(run_summary, 1);
    (leftover_weighted(run_json, 1), summary, leftover_weighted(tree(), 1), prop::bool::weighted(0.03), instances)
        .prop_map(|(run_json, run_summary, experiment_json, experiment_is_file, instances)| Earlier {
            run_json,
            run_summary,
            experiment_json,
            experiment_is_file,
            instances,
        })
        .boxed()
}

fn mock(replies: &[String]) -> LoadedModel {
    let mut map = Map::new();
    map.insert("model_name".into(), json!("mock"));
    map.insert("backend".into(), json!("mock"));
    map.insert("replies".into(), json!(replies));
    load_spec(&ModelSpec::new(map), &LoadContext::default()).expect("the mock player loads")
}

/// The instance folder of `game_id` in experiment `exp` of the mock player's run under `root`.
fn instance_dir(root: &Path, exp: &str, game_id: u64) -> PathBuf {
    root.join("mock").join("hellogame").join(exp).join(clem_run::recorder::instance_dir(game_id))
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Every string `content` of every event of `interactions`, as the transcript walks them.
fn event_texts(interactions: &Value) -> Vec<&str> {
    let rounds = interactions["turns"].as_array().into_iter().flatten();
    rounds.flat_map(|r| r.as_array().into_iter().flatten()).filter_map(|e| e["action"]["content"].as_str()).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Tokenizer files

/// Chat templates: pieces of real ones, joined, so some compile and render and some do not.
fn template() -> BoxedStrategy<String> {
    let piece = prop::sample::select(vec![
        "{% for m in messages %}",
        "{% endfor %}",
        "{{ m.content }}",
        "{{ m['role'] }}",
        "{% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}",
        "{% if loop.index0 == 0 and m.role == 'assistant' %}{{ raise_exception('user first') }}{% endif %}",
        "{{ bos_token }}",
        "{% if add_generation_prompt %}<|assistant|>{% endif %}",
        "{{ messages[0]['content'] }}",
        "{{ messages[99].content }}",
        "{% set x = 1 %}",
        "{{ x + 'a' }}",
        "{{",
        "}}",
        "<|user|>",
    ]);
    prop_oneof![
        4 => prop::collection::vec(piece, 0..6).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
    .boxed()
}

fn tokenizer_config() -> BoxedStrategy<Value> {
    let named = with_fields(vec![
        ("name", prop_oneof![Just(json!("default")), scalar()].boxed()),
        ("template", template().prop_map(Value::from).boxed()),
    ]);
    let chat_template = prop_oneof![
        4 => template().prop_map(Value::from),
        1 => prop::collection::vec(named, 0..3).prop_map(Value::Array),
        1 => tree(),
    ];
    let token = prop_oneof![any::<String>().prop_map(Value::from), shaped(&["content"], scalar()), scalar()];
    with_fields(vec![
        ("chat_template", chat_template.boxed()),
        ("bos_token", token.clone().boxed()),
        ("eos_token", token.boxed()),
        ("added_tokens_decoder", tree()),
        ("model_max_length", scalar()),
    ])
}

/// A refusal that names one of `dir`'s files.
fn names_a_file(message: &str, dir: &Path, files: &[&str]) -> bool {
    files.iter().any(|f| message.contains(&dir.join(f).display().to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Python-style JSON: what serde_json reads is read alike; NaN and the infinities outside strings read as
    /// numbers; anything else is refused, never a panic; what is read writes back to text that reads the same.
    #[test]
    fn python_json_reads_like_json_plus_nan(v in tree(), noise in "[ NaInfity\\-\"\\\\,:\\[\\]{}0-9.e]{0,40}") {
        let text = v.to_string();
        prop_assert_eq!(pyjson::from_str(&text).ok(), serde_json::from_str::<Value>(&text).ok());
        let wrapped = format!("[NaN, {text}, -Infinity]");
        let read = pyjson::from_str(&wrapped).expect("NaN and -Infinity around JSON");
        prop_assert!(pyjson::as_f64(&read[0]).is_some_and(f64::is_nan));
        prop_assert_eq!(pyjson::as_f64(&read[2]), Some(f64::NEG_INFINITY));
        prop_assert_eq!(&read[1], &v);
        if let Ok(x) = pyjson::from_str(&noise) {
            prop_assert_eq!(pyjson::from_str(&pyjson::to_string_pretty(&x)).ok(), Some(x));
        }
    }

    /// `clem eval` over scores.json files of any content in model/game/experiment/episode folders: a table with
    /// a row per model and a value per column, or a refusal naming the file it could not use.
    #[test]
    fn eval_tabulates_or_names_the_file(
        files in prop::collection::vec((0usize..3, 0usize..2, python_bytes(eval_scores_json())), 1..6),
        std in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths = Vec::new();
        for (i, (model, game, bytes)) in files.iter().enumerate() {
            let p = dir.path().join(format!("m{model}/g{game}/e/instance_{i:05}/scores.json"));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, bytes).expect("write");
            paths.push(p);
        }
        match evaluate(dir.path(), EvalOptions { show_std: std, sort_by_clemscore: std }) {
            Ok(table) => {
                prop_assert_eq!(&table.columns[0], "-, clemscore");
                let models: std::collections::BTreeSet<usize> = files.iter().map(|f| f.0).collect();
                prop_assert!(table.rows.len() <= models.len());
                for (_, values) in &table.rows {
                    prop_assert_eq!(values.len(), table.columns.len());
                }
                prop_assert_eq!(table.to_csv().lines().count(), table.rows.len() + 1);
                prop_assert!(table.to_html().ends_with("</table>"));
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(paths.iter().any(|p| msg.contains(&p.display().to_string())), "{}", msg);
            }
        }
    }

    /// `clem score` over instance folders holding anything: every folder with an interactions.json file is
    /// scored (a readable scores.json with episode scores), left alone (not completed) or named with the reason.
    #[test]
    fn rescoring_scores_or_names_the_folder(
        folders in prop::collection::vec(instance_files(8), 1..4),
        experiment in leftover(tree()),
    ) {
        let root = tempfile::tempdir().expect("tempdir");
        let exp = root.path().join("mock").join("hellogame").join("greet_en");
        experiment.put(&exp.join("experiment.json"));
        for (i, f) in folders.iter().enumerate() {
            f.put(&exp.join(format!("instance_{i:05}")));
        }
        let report = rescore(root.path(), &ScoreOptions::default());
        let with_records = (0..folders.len())
            .filter(|i| exp.join(format!("instance_{i:05}/interactions.json")).is_file())
            .count();
        prop_assert_eq!(report.scored.len() + report.skipped.len() + report.failed.len(), with_records);
        for dir in &report.scored {
            let s = scores::read_episode_scores(&dir.join("scores.json"));
            prop_assert!(s.is_ok(), "{:?}", s);
        }
        for (dir, why) in &report.failed {
            prop_assert!(why.contains(&dir.parent().expect("experiment folder").display().to_string()), "{}", why);
        }
    }

    /// Instances files of every shape: an accepted one agrees with its JSON; a refusal names the file.
    #[test]
    fn instances_parse_or_name_the_file(text in prop_oneof![
        8 => instances_json().prop_map(|v| v.to_string()),
        1 => any::<String>(),
    ]) {
        match instances::parse(&text, "in/instances.json") {
            Ok(exps) => check_instances(&text, &exps)?,
            Err(e) => prop_assert!(e.to_string().starts_with("instances in/instances.json: "), "{}", e),
        }
    }

    /// Instances files on disk, of any bytes (invalid UTF-8 included): a refusal names the file's path.
    #[test]
    fn instances_files_load_or_name_the_path(bytes in file_bytes(instances_json())) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("instances.json");
        std::fs::write(&path, &bytes).expect("write");
        match instances::load(&path) {
            Ok(exps) => check_instances(std::str::from_utf8(&bytes).expect("accepted files are UTF-8"), &exps)?,
            Err(e) => prop_assert!(e.to_string().contains(&path.display().to_string()), "{}", e),
        }
    }

    /// Tokenizer files of every shape (a config, a chat_template.jinja, both, neither): the check reports, and
    /// its verdict is in its text; a refusal names the file it could not use.
    #[test]
    fn check_hf_reports_or_names_the_file(
        config in leftover(tokenizer_config()),
        jinja in prop_oneof![
            3 => Just(Leftover::Absent),
            1 => template().prop_map(|t| Leftover::File(t.into_bytes())),
            1 => prop::collection::vec(any::<u8>(), 0..32).prop_map(Leftover::File),
            1 => Just(Leftover::Folder),
        ],
        strict in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        config.put(&dir.path().join("tokenizer_config.json"));
        jinja.put(&dir.path().join("chat_template.jinja"));
        let opts = CheckOptions { tokenizer_info: true, show_template: true, strict };
        match check(&dir.path().display().to_string(), opts) {
            Ok(report) => {
                prop_assert_eq!(&report.dir, &dir.path().to_path_buf());
                let verdict = if report.passes { "The model passes" } else { "The model does NOT pass" };
                prop_assert!(report.text.contains(verdict), "{}", report.text);
                prop_assert!(!(strict && report.passes && report.warnings > 0));
            }
            Err(e) => prop_assert!(
                names_a_file(&e.to_string(), dir.path(), &["tokenizer_config.json", "chat_template.jinja"]),
                "{}", e
            ),
        }
    }

    /// One instance folder's records, each maybe missing, malformed or a folder: the transcript renders every
    /// event's text (HTML-escaped) and the recorded Main Score, or the refusal names interactions.json.
    #[test]
    fn transcripts_render_or_name_the_file(
        mut files in instance_files(8),
        interactions in prop_oneof![
            6 => file_bytes(interactions_json()).prop_map(Leftover::File),
            1 => leftover(interactions_json()),
        ],
    ) {
        files.interactions = interactions;
        let dir = tempfile::tempdir().expect("tempdir");
        files.put(dir.path());
        match render_instance(dir.path()) {
            Ok((html, written)) => {
                let interactions = read_json(&dir.path().join("interactions.json")).expect("rendered from JSON");
                for text in event_texts(&interactions) {
                    prop_assert!(html.contains(&escape(text)), "{:?} missing", text);
                }
                let scores = scores::read(&dir.path().join("scores.json")).ok();
                let main = scores.as_ref().and_then(|s| pyjson::as_f64(&s["episode scores"]["Main Score"]));
                prop_assert_eq!(written.main_score.map(f64::to_bits), main.map(f64::to_bits));
                let status = if dir.path().join("completed.json").is_file() {
                    "completed"
                } else if dir.path().join("error.json").is_file() {
                    "error"
                } else {
                    "incomplete"
                };
                prop_assert_eq!(written.status, status);
            }
            Err(e) => prop_assert!(names_a_file(&e.to_string(), dir.path(), &["interactions.json"]), "{}", e),
        }
        // clemcore's transcript.tex of the same records: every line of every text is there, escaped, or the
        // refusal says which key of interactions.json it could not use.
        if let Some(interactions) = read_json(&dir.path().join("interactions.json")) {
            match build_tex(&interactions) {
                Ok(tex) => {
                    prop_assert!(tex.ends_with("\\end{document}\n"), "the document is closed");
                    for text in event_texts(&interactions) {
                        for line in text.lines().filter(|l| !l.trim().is_empty() && !l.contains(['\r', '\u{b}', '\u{c}', '\u{1c}', '\u{1d}', '\u{1e}', '\u{85}', '\u{2028}', '\u{2029}'])) {
                            prop_assert!(tex.contains(&escape_latex(line)), "{:?} missing", line);
                        }
                    }
                }
                Err(e) => prop_assert!(e.to_string().starts_with("interactions.json: "), "{}", e),
            }
        }
    }
}

proptest! {
    // Each case plays and records episodes (every file synced to disk): fewer cases keep the file fast.
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// `--resume` over whatever an earlier run left (or not) in the results folder, with any instances and
    /// replies, then `clem transcribe` over it all: an instance is skipped exactly when its completed.json is
    /// a file, keeping the scores its scores.json holds; every other instance is replayed to completed.json or
    /// error.json; a run or transcription that cannot go on names the path it failed on.
    #[test]
    fn resumed_runs_and_transcripts_name_what_they_cannot_use(
        text in run_instances(),
        earlier in earlier(),
        replies in prop::collection::vec(prop_oneof![
            3 => prop::sample::select(WORDS).prop_map(String::from),
            1 => any::<String>(),
        ], 1..3),
        resume in prop::bool::weighted(0.8),
        batch_size in 0usize..3,
    ) {
        let experiments = instances::parse(&text, "instances").expect("run instances parse");
        let root = tempfile::tempdir().expect("tempdir");
        let root = root.path();
        earlier.run_json.put(&root.join("mock").join("run.json"));
        earlier.run_summary.put(&root.join("mock").join("run_summary.json"));
        let mut spots = earlier.instances.iter().cycle();
        for exp in &experiments {
            let exp_dir = root.join("mock").join("hellogame").join(&exp.name);
            if earlier.experiment_is_file {
                Leftover::File(b"{}".to_vec()).put(&exp_dir);
                continue;
            }
            earlier.experiment_json.put(&exp_dir.join("experiment.json"));
            for inst in &exp.instances {
                spots.next().expect("cycled").put(&instance_dir(root, &exp.name, inst.game_id));
            }
        }
        // What the earlier run left that resuming must honour, before the run rewrites it.
        let mut expected = Vec::new();
        for exp in &experiments {
            for inst in &exp.instances {
                let dir = instance_dir(root, &exp.name, inst.game_id);
                let skipped = resume && dir.join("completed.json").is_file();
                let scores = scores::read_episode_scores(&dir.join("scores.json")).ok();
                expected.push((exp.name.clone(), inst.game_id, skipped, scores));
            }
        }
        let opts = RunOptions {
            results_dir: root.to_path_buf(),
            experiment: None,
            experiments: experiments.clone(),
            batch_size,
            resume,
            gen_args: GenArgs::default(),
            game_path: None,
            prices: Default::default(),
        };
        match run(&HelloGame, &[mock(&replies)], &opts, &mut NoProgress) {
            Ok(summary) => {
                prop_assert_eq!(summary.results.len(), expected.len());
                for (name, game_id, skipped, scores) in &expected {
                    let r = summary.results.iter().find(|r| &r.experiment == name && r.game_id == *game_id);
                    let r = r.ok_or_else(|| TestCaseError::fail(format!("{name} {game_id} missing")))?;
                    let dir = instance_dir(root, name, *game_id);
                    match r.status {
                        Status::Skipped => {
                            prop_assert!(*skipped);
                            prop_assert_eq!(&r.scores, scores);
                        }
                        Status::Completed => {
                            prop_assert!(!*skipped);
                            let i = read_json(&dir.join("interactions.json")).expect("interactions.json");
                            prop_assert_eq!(&i["meta"]["completed"], &json!(true));
                            prop_assert!(dir.join("completed.json").is_file());
                        }
                        Status::Error => {
                            prop_assert!(!*skipped);
                            prop_assert!(read_json(&dir.join("error.json")).is_some());
                        }
                    }
                }
                let written = scores::read(&root.join("mock").join("run_summary.json"));
                prop_assert!(written.is_ok(), "NaN and all");
                // This invocation's calls are in the game's usage, alone or (resumed) added to the earlier ones.
                let calls = summary.usage.iter().map(|u| u.calls).sum::<u64>();
                let kept = written.ok().and_then(|w| {
                    let rows = w["usage_by_game"]["hellogame"].as_array()?.clone();
                    rows.iter().find(|r| r["model"] == "mock").and_then(|r| r["calls"].as_u64())
                });
                prop_assert!(kept.is_some_and(|k| if resume { k >= calls } else { k == calls }), "{:?} {}", kept, calls);
            }
            Err(e) => prop_assert!(e.to_string().contains(&root.display().to_string()), "{}", e),
        }
        match transcribe(root) {
            Ok(report) => {
                for w in &report.written {
                    let dir = root.join(&w.rel_dir);
                    prop_assert!(dir.join("transcript.html").is_file());
                    prop_assert!(
                        dir.join("transcript.tex").is_file() || report.tex_skipped.iter().any(|(d, _)| d == &dir),
                        "{}", dir.display()
                    );
                }
                for (dir, why) in &report.skipped {
                    prop_assert!(why.contains(&dir.join("interactions.json").display().to_string()), "{}", why);
                }
                prop_assert!(report.index.is_file());
            }
            Err(e) => prop_assert!(e.to_string().contains(&root.display().to_string()), "{}", e),
        }
    }
}
