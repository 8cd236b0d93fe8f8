//! The shipped sample images (`examples/images/<class>.jpg`, one per class) and the label each
//! should get; and small readers of the answers the README's examples and the client print.

use std::path::PathBuf;

use crate::paths;

/// `examples/images`.
pub fn images_dir() -> PathBuf {
    paths::repo_root().join("examples/images")
}

/// Every sample image, by name, with its class (the file's stem).
pub fn images() -> Vec<(PathBuf, String)> {
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(images_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| {
            let class = p.file_stem().unwrap().to_string_lossy().into_owned();
            (p, class)
        })
        .collect();
    files.sort();
    files
}

/// The most likely label in an answer printed as JSON (or as a Python literal, whose quotes are
/// swapped): a `/v1/classify` answer (`top[0]`), a `top` list, or `/predict`'s flat
/// `{class: score}` map (the largest score).
pub fn top_label(printed: &str) -> String {
    let text = printed.trim();
    let value: serde_json::Value = serde_json::from_str(text)
        .or_else(|_| serde_json::from_str(&text.replace('\'', "\"")))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let top = value.get("top").unwrap_or(&value);
    if let Some(first) = top.as_array().and_then(|a| a.first()) {
        return first["label"].as_str().unwrap().to_string();
    }
    let scores = value
        .as_object()
        .unwrap_or_else(|| panic!("no scores: {text}"));
    scores
        .iter()
        .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
        .map(|(k, _)| k.clone())
        .unwrap()
}
