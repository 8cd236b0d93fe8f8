//! Reading answers without building a JSON tree: the error code of `{"error": {"code"}}`, the
//! argmax of `/predict`'s flat `{class: score}` map, `top[0].label` and `timings` of
//! `/v1/classify`.

use std::fmt;

use serde::Deserialize;
use serde::Deserializer;
use serde::de::{IgnoredAny, MapAccess, Visitor};

/// The label an answer names, if it can be read.
pub fn predicted_label<'a>(body: &'a [u8], flat_scores: bool) -> Option<&'a str> {
    if flat_scores {
        let mut de = serde_json::Deserializer::from_slice(body);
        (&mut de).deserialize_map(Argmax).ok().flatten()
    } else {
        #[derive(Deserialize)]
        struct Classification<'a> {
            #[serde(borrow)]
            top: Vec<Label<'a>>,
        }
        #[derive(Deserialize)]
        struct Label<'a> {
            #[serde(borrow)]
            label: &'a str,
        }
        let c: Classification<'a> = serde_json::from_slice(body).ok()?;
        c.top.first().map(|l| l.label)
    }
}

/// The `timings` of a `/v1/classify` answer, in ms, as the tiers and the ingress measured them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Timings {
    pub request_queue_ms: Option<f64>,
    pub download_ms: Option<f64>,
    pub preprocess_ms: Option<f64>,
    pub tensor_queue_ms: Option<f64>,
    pub inference_ms: Option<f64>,
    pub total_ms: Option<f64>,
}

impl Timings {
    /// The answer's `timings`, when it has them.
    pub fn of(body: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Answer {
            timings: Timings,
        }
        serde_json::from_slice::<Answer>(body)
            .ok()
            .map(|a| a.timings)
    }

    /// Each figure by its name in the answer.
    pub fn fields(&self) -> [(&'static str, Option<f64>); 6] {
        [
            ("request_queue_ms", self.request_queue_ms),
            ("download_ms", self.download_ms),
            ("preprocess_ms", self.preprocess_ms),
            ("tensor_queue_ms", self.tensor_queue_ms),
            ("inference_ms", self.inference_ms),
            ("total_ms", self.total_ms),
        ]
    }

    /// What the tiers measured of a request's time: every figure but the ingress's total.
    pub fn inside(&self) -> f64 {
        self.fields()
            .iter()
            .filter(|(name, _)| *name != "total_ms")
            .filter_map(|(_, v)| *v)
            .sum()
    }
}

/// The stable code of an error answer `{"error": {"code": ..., "message": ...}}`.
pub fn error_code(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        error: Inner<'a>,
    }
    #[derive(Deserialize)]
    struct Inner<'a> {
        #[serde(borrow)]
        code: &'a str,
    }
    serde_json::from_slice::<Answer>(body)
        .ok()
        .map(|a| a.error.code.to_string())
}

/// Walks a map keeping the key of the largest number; other values are skipped.
struct Argmax;

#[derive(Deserialize)]
#[serde(untagged)]
enum MaybeNumber {
    Number(f64),
    Other(IgnoredAny),
}

impl<'de> Visitor<'de> for Argmax {
    type Value = Option<&'de str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of class to score")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut best: Option<(&'de str, f64)> = None;
        while let Some(key) = map.next_key::<&'de str>()? {
            if let MaybeNumber::Number(score) = map.next_value::<MaybeNumber>()?
                && best.is_none_or(|(_, b)| score > b)
            {
                best = Some((key, score));
            }
        }
        Ok(best.map(|(k, _)| k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_of_flat_scores() {
        let body = br#"{"dress": -1.5, "hat": 3.25, "pants": 0.5e1, "shirt": 2}"#;
        assert_eq!(predicted_label(body, true), Some("pants"));
        assert_eq!(predicted_label(br#"{"a": -3, "b": -2}"#, true), Some("b"));
        assert_eq!(predicted_label(b"{}", true), None);
        assert_eq!(predicted_label(b"not json", true), None);
        // An error answer has no numbers: no label.
        let err = br#"{"error": {"code": "overloaded", "message": "busy"}}"#;
        assert_eq!(predicted_label(err, true), None);
    }

    #[test]
    fn first_of_top_in_a_classification() {
        let body = br#"{"request_id": "r1", "model": {"name": "m", "version": "1"},
            "top": [{"label": "shoes", "probability": 0.9}, {"label": "hat", "probability": 0.05}],
            "scores": {"shoes": 0.9, "hat": 0.05}, "timings": {"total_ms": 12.5}}"#;
        assert_eq!(predicted_label(body, false), Some("shoes"));
        assert_eq!(predicted_label(br#"{"top": []}"#, false), None);
        assert_eq!(predicted_label(b"{}", false), None);
    }

    #[test]
    fn timings_of_a_classification() {
        let body = br#"{"top": [], "timings": {"request_queue_ms": 1.5, "preprocess_ms": 2,
            "inference_ms": 20.25, "total_ms": 30, "batch_size": 2}}"#;
        let t = Timings::of(body).unwrap_or_else(|| panic!("no timings"));
        assert_eq!(t.total_ms, Some(30.0));
        assert_eq!(t.download_ms, None);
        assert_eq!(t.inside(), 23.75);
        assert_eq!(Timings::of(b"{}"), None);
    }

    #[test]
    fn error_codes() {
        let body = br#"{"error": {"code": "queue_full", "message": "the stream is full"}}"#;
        assert_eq!(error_code(body).as_deref(), Some("queue_full"));
        assert_eq!(error_code(b"{}"), None);
        assert_eq!(error_code(b"<html>bad gateway</html>"), None);
    }
}
