//! "Did you mean": the known names nearest to a mistyped one (model names, backends, key.json sections), so an
//! error can name what the user probably meant instead of only saying what does not exist.

/// At most this many suggestions: more is a list, not a hint.
pub const MAX_SUGGESTIONS: usize = 3;

/// The known names nearest to `word`, nearest first (then alphabetically), without duplicates: those within a
/// Levenshtein distance of a third of the word's length (at least 2), compared without case, and those the word
/// begins (`smollm2` -> `smollm2-135m`). Empty when nothing is near.
pub fn nearest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let word = word.trim().to_lowercase();
    if word.is_empty() {
        return Vec::new();
    }
    let limit = (word.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = known
        .into_iter()
        .filter_map(|name| {
            let lower = name.to_lowercase();
            let distance = strsim::levenshtein(&word, &lower);
            let prefix = word.chars().count() >= 3 && lower.starts_with(&word);
            (distance <= limit || prefix).then_some((distance, name))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(MAX_SUGGESTIONS).map(|(_, name)| name).collect()
}

/// `"; did you mean \"a\" or \"b\"?"` for the names [`nearest`] finds, else an empty string.
pub fn did_you_mean<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = nearest(word, known).into_iter().map(|n| format!("{n:?}")).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        [rest @ .., last] => format!("; did you mean {} or {last}?", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_first_far_ones_never() {
        let known = ["smollm2-135m", "smollm2-360m", "gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"];
        assert_eq!(nearest("smollm2-135", known), ["smollm2-135m"]);
        assert_eq!(nearest("GPT4o", known), ["gpt-4o"]);
        assert_eq!(nearest("smollm2", known), ["smollm2-135m", "smollm2-360m"]);
        assert!(nearest("llama-3-70b", known).is_empty());
        assert!(nearest("", known).is_empty());
        assert_eq!(nearest("opneai", ["openai", "openai_compatible", "anthropic"]), ["openai"]);
        assert_eq!(nearest("x", ["x", "x", "y"]), ["x", "y"]);
    }

    #[test]
    fn sentence() {
        assert_eq!(did_you_mean("opneai", ["openai"]), "; did you mean \"openai\"?");
        assert_eq!(did_you_mean("gpt-4", ["gpt-4o", "gpt-4"]), "; did you mean \"gpt-4\" or \"gpt-4o\"?");
        assert_eq!(did_you_mean("zzzzzzzz", ["openai"]), "");
    }
}
