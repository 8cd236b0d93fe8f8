//! What came back for one image: the API's JSON answer (the fields the table shows, and the
//! whole value for `--json`), or a failure with its stable error code.

use serde::Deserialize;
use serde_json::Value;

/// A failed image: the service's error code and message (`{"error": {"code", "message"}}`), or
/// one of the client's own: `unreadable_file`, `unreachable`, `timeout`, `bad_answer`, `http_<status>`.
#[derive(Debug, Clone, Deserialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The `error` object of an error body, if `body` is one.
    pub fn from_body(body: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Body {
            error: Failure,
        }
        serde_json::from_slice::<Body>(body).ok().map(|b| b.error)
    }
}

/// The parts of a `/v1/classify` answer the table prints.
#[derive(Debug, Deserialize)]
pub struct Answer {
    pub model: Model,
    pub top: Vec<Label>,
    pub timings: Timings,
}

#[derive(Debug, Deserialize)]
pub struct Model {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Deserialize)]
pub struct Label {
    pub label: String,
    pub probability: f64,
}

#[derive(Debug, Deserialize)]
pub struct Timings {
    pub total_ms: f64,
}

pub enum Outcome {
    Classified { json: Value, answer: Answer },
    Failed(Failure),
}

impl Outcome {
    /// Reads a successful body; `top` is rebuilt from `scores` when it holds fewer than `top_k`
    /// labels (the NATS service always answers the top 3).
    pub fn from_result(result: Result<Value, Failure>, top_k: usize) -> Self {
        let mut json = match result {
            Ok(json) => json,
            Err(e) => return Self::Failed(e),
        };
        let short = json["top"].as_array().is_some_and(|t| t.len() < top_k);
        if short && let Some(top) = top_from_scores(&json["scores"], top_k) {
            json["top"] = top;
        }
        match serde_json::from_value::<Answer>(json.clone()) {
            Ok(answer) => Self::Classified { json, answer },
            Err(e) => Self::Failed(Failure::new(
                "bad_answer",
                format!("unexpected answer ({e}): {json}"),
            )),
        }
    }
}

/// The `top_k` most likely labels of a `{label: probability}` map, most likely first.
fn top_from_scores(scores: &Value, top_k: usize) -> Option<Value> {
    let mut ranked: Vec<(&String, f64)> = scores
        .as_object()?
        .iter()
        .filter_map(|(k, v)| Some((k, v.as_f64()?)))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = ranked
        .into_iter()
        .take(top_k)
        .map(|(label, probability)| serde_json::json!({ "label": label, "probability": probability }))
        .collect();
    Some(Value::Array(top))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn answer(top: Value) -> Value {
        json!({
            "request_id": "r1",
            "model": {"name": "m", "version": "1"},
            "top": top,
            "scores": {"hat": 0.1, "pants": 0.7, "shoes": 0.2},
            "timings": {"total_ms": 12.5}
        })
    }

    #[test]
    fn a_short_top_is_rebuilt_from_the_scores() {
        let body = answer(json!([{"label": "pants", "probability": 0.7}]));
        let Outcome::Classified { json, answer } = Outcome::from_result(Ok(body), 2) else {
            panic!("classified");
        };
        let labels: Vec<_> = answer.top.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels, ["pants", "shoes"]);
        assert_eq!(json["top"][1]["label"], "shoes");
    }

    #[test]
    fn an_answer_without_the_fields_is_a_bad_answer() {
        let Outcome::Failed(e) = Outcome::from_result(Ok(json!({"dress": 0.3})), 3) else {
            panic!("failed");
        };
        assert_eq!(e.code, "bad_answer");
    }

    #[test]
    fn error_bodies_give_their_code() {
        let e = Failure::from_body(br#"{"error": {"code": "not_an_image", "message": "no"}}"#);
        assert_eq!(e.unwrap().code, "not_an_image");
        assert!(Failure::from_body(b"<html>").is_none());
    }
}
