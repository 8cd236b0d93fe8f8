//! The three message kinds that travel between tiers, and their encodings.
//!
//! - requests (client -> preprocessor): JSON [`ClassifyRequest`] (`{"url": ...}`) or raw image
//!   bytes with an `image/*` content type; see [`RequestPayload::parse`].
//! - tensors (preprocessor -> gpu-worker): MessagePack [`TensorMessage`] with a format version.
//! - replies (finishing tier -> caller): JSON [`Reply`], a prediction or an error.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode};
use crate::manifest::{InputSpec, ModelRef};

/// Version of the [`TensorMessage`] layout; bumped on any incompatible change.
pub const TENSOR_FORMAT_VERSION: u32 = 1;

/// `{"url": "https://..."}`: the classic gateway's request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassifyRequest {
    pub url: String,
    /// Pins the request to a model version (else the serving policy chooses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
}

impl ClassifyRequest {
    /// Parses a JSON body, with an error message that says what exactly is wrong.
    pub fn from_json(body: &[u8]) -> Result<Self, Error> {
        if body.is_empty() {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "empty body: expected JSON {\"url\": \"...\"}",
            ));
        }
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Error::new(ErrorCode::BadRequest, format!("malformed JSON: {e}")))?;
        let object = value.as_object().ok_or_else(|| {
            Error::new(
                ErrorCode::BadRequest,
                "expected a JSON object {\"url\": \"...\"}",
            )
        })?;
        let model_version = match object.get("model_version") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(v)) => Some(v.clone()),
            Some(_) => {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    "field \"model_version\" must be a string",
                ));
            }
        };
        match object.get("url") {
            None => Err(Error::new(ErrorCode::BadRequest, "missing field \"url\"")),
            Some(serde_json::Value::String(url)) => Ok(Self {
                url: url.clone(),
                model_version,
            }),
            Some(_) => Err(Error::new(
                ErrorCode::BadRequest,
                "field \"url\" must be a string",
            )),
        }
    }
}

/// What a request message carries, decided by its content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPayload {
    /// Download the image from this URL (the request may pin a model version).
    Url(ClassifyRequest),
    /// The image itself.
    Image {
        content_type: String,
        bytes: bytes::Bytes,
    },
}

impl RequestPayload {
    /// `application/json` (or no content type) is a [`ClassifyRequest`]; `image/*` or
    /// `application/octet-stream` is the image itself; anything else is refused.
    pub fn parse(content_type: Option<&str>, payload: bytes::Bytes) -> Result<Self, Error> {
        let mime = content_type
            .map(crate::meta::media_type)
            .unwrap_or_default();
        match mime.as_str() {
            "" | "application/json" => Ok(Self::Url(ClassifyRequest::from_json(&payload)?)),
            m if m.starts_with("image/") || m == "application/octet-stream" => {
                if payload.is_empty() {
                    return Err(Error::new(ErrorCode::NotAnImage, "empty image body"));
                }
                Ok(Self::Image {
                    content_type: mime,
                    bytes: payload,
                })
            }
            other => Err(Error::new(
                ErrorCode::UnsupportedMediaType,
                format!("content type {other:?} is not accepted: send application/json or image/*"),
            )),
        }
    }
}

/// Element type of a tensor's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Uint8,
}

/// Time spent in each tier, in milliseconds; each tier fills in its part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Waiting in the requests stream before a preprocessor took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_queue_ms: Option<f64>,
    /// Downloading the image (absent for uploaded images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_ms: Option<f64>,
    /// Decoding, orienting and resizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess_ms: Option<f64>,
    /// Waiting in the tensors stream and the batcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_queue_ms: Option<f64>,
    /// Running the batch through the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_ms: Option<f64>,
    /// Size of the batch this item ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
}

/// One preprocessed image: `[1, H, W, C]` uint8 NHWC, as the model's manifest declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMessage {
    pub format_version: u32,
    pub model: ModelRef,
    pub shape: Vec<u32>,
    pub dtype: Dtype,
    pub layout: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Milliseconds since the Unix epoch when the preprocessor received the request.
    pub received_at_ms: u64,
    pub timings: Timings,
}

impl TensorMessage {
    /// A tensor of one image for the given model input.
    pub fn new(
        model: ModelRef,
        input: &InputSpec,
        data: Vec<u8>,
        received_at_ms: u64,
        timings: Timings,
    ) -> Self {
        Self {
            format_version: TENSOR_FORMAT_VERSION,
            model,
            shape: vec![1, input.height, input.width, input.channels],
            dtype: Dtype::Uint8,
            layout: input.layout.clone(),
            data,
            received_at_ms,
            timings,
        }
    }

    /// MessagePack with field names, so fields can be added without breaking readers.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a TensorMessage always serializes")
    }

    /// Decodes and checks the format version; see [`TensorMessage::check`] for the model.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let msg: Self = rmp_serde::from_slice(bytes).map_err(|e| {
            Error::new(
                ErrorCode::BadTensor,
                format!("undecodable tensor message: {e}"),
            )
        })?;
        if msg.format_version != TENSOR_FORMAT_VERSION {
            return Err(Error::new(
                ErrorCode::BadTensor,
                format!(
                    "tensor format version {} (expected {TENSOR_FORMAT_VERSION})",
                    msg.format_version
                ),
            ));
        }
        Ok(msg)
    }

    /// Checks that this tensor fits the model that is about to run it.
    pub fn check(&self, model: &ModelRef, input: &InputSpec) -> Result<(), Error> {
        if &self.model != model {
            return Err(Error::new(
                ErrorCode::BadTensor,
                format!(
                    "tensor made for model {} {}, this worker serves {} {}",
                    self.model.name, self.model.version, model.name, model.version
                ),
            ));
        }
        let expected = [1, input.height, input.width, input.channels];
        if self.shape != expected || self.layout != input.layout || self.dtype != Dtype::Uint8 {
            return Err(Error::new(
                ErrorCode::BadTensor,
                format!(
                    "tensor shape {:?} {} {:?}, expected {expected:?} {} uint8",
                    self.shape, self.layout, self.dtype, input.layout
                ),
            ));
        }
        let len: usize = expected.iter().map(|&d| d as usize).product();
        if self.data.len() != len {
            return Err(Error::new(
                ErrorCode::BadTensor,
                format!(
                    "tensor data has {} bytes, shape needs {len}",
                    self.data.len()
                ),
            ));
        }
        Ok(())
    }
}

/// A classification result: the model's logits in class order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub model: ModelRef,
    pub classes: Vec<String>,
    pub logits: Vec<f32>,
    pub timings: Timings,
}

impl Prediction {
    /// Softmax of the logits, in class order.
    pub fn probabilities(&self) -> Vec<f32> {
        let max = self
            .logits
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = self.logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        exps.into_iter().map(|e| e / sum).collect()
    }

    /// Checks that there is one logit per class (and a class at all): what every reader of a
    /// prediction relies on. `internal` otherwise (a worker whose model does not match its
    /// manifest, or a bug), naming both counts.
    pub fn check(&self) -> Result<(), Error> {
        if self.classes.is_empty() || self.logits.len() != self.classes.len() {
            return Err(Error::new(
                ErrorCode::Internal,
                format!(
                    "malformed prediction from model {} {}: {} logits for {} classes",
                    self.model.name,
                    self.model.version,
                    self.logits.len(),
                    self.classes.len()
                ),
            ));
        }
        Ok(())
    }

    /// Index of the highest logit.
    pub fn top(&self) -> Option<usize> {
        self.logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    }
}

/// What the finishing tier publishes on the request's reply subject, as JSON:
/// `{"request_id": ..., "prediction": {...}}` or `{"request_id": ..., "error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub request_id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Prediction(Prediction),
    Error(Error),
}

impl Reply {
    pub fn prediction(request_id: impl Into<String>, prediction: Prediction) -> Self {
        Self {
            request_id: request_id.into(),
            outcome: Outcome::Prediction(prediction),
        }
    }

    pub fn error(request_id: impl Into<String>, error: Error) -> Self {
        Self {
            request_id: request_id.into(),
            outcome: Outcome::Error(error),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Reply always serializes")
    }

    /// Decodes a reply; an undecodable one is an `internal` error. A prediction that fails
    /// [`Prediction::check`] comes back as that `internal` error for the same request, so its
    /// caller gets a clear answer at once (never a panic, nor a wait for its deadline).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let reply: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::new(ErrorCode::Internal, format!("undecodable reply: {e}")))?;
        match &reply.outcome {
            Outcome::Prediction(p) => match p.check() {
                Ok(()) => Ok(reply),
                Err(e) => Ok(Self::error(reply.request_id, e)),
            },
            Outcome::Error(_) => Ok(reply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> InputSpec {
        InputSpec {
            height: 4,
            width: 2,
            channels: 3,
            layout: "NHWC".into(),
            dtype: "uint8".into(),
        }
    }

    fn model() -> ModelRef {
        ModelRef {
            name: "m".into(),
            version: "1".into(),
        }
    }

    #[test]
    fn request_json_errors_say_what_is_wrong() {
        assert_eq!(
            ClassifyRequest::from_json(br#"{"url":"http://x/a.jpg"}"#)
                .unwrap()
                .url,
            "http://x/a.jpg"
        );
        let missing = ClassifyRequest::from_json(br#"{"uri":"x"}"#).unwrap_err();
        assert_eq!(
            (missing.code, missing.message.as_str()),
            (ErrorCode::BadRequest, "missing field \"url\"")
        );
        let number = ClassifyRequest::from_json(br#"{"url":5}"#).unwrap_err();
        assert!(number.message.contains("must be a string"));
        assert_eq!(
            ClassifyRequest::from_json(b"{").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            ClassifyRequest::from_json(b"").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            ClassifyRequest::from_json(b"[1]").unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn payload_kind_follows_content_type() {
        let json = bytes::Bytes::from_static(br#"{"url":"http://h/x.png"}"#);
        assert_eq!(
            RequestPayload::parse(None, json.clone()).unwrap(),
            RequestPayload::Url(ClassifyRequest {
                url: "http://h/x.png".into(),
                model_version: None
            })
        );
        assert_eq!(
            RequestPayload::parse(Some("application/json; charset=utf-8"), json).unwrap(),
            RequestPayload::Url(ClassifyRequest {
                url: "http://h/x.png".into(),
                model_version: None
            })
        );
        let pinned = ClassifyRequest::from_json(br#"{"url":"u","model_version":"2"}"#).unwrap();
        assert_eq!(pinned.model_version.as_deref(), Some("2"));
        let bad = ClassifyRequest::from_json(br#"{"url":"u","model_version":2}"#).unwrap_err();
        assert_eq!(bad.code, ErrorCode::BadRequest);
        let img = RequestPayload::parse(Some("image/JPEG"), bytes::Bytes::from_static(b"\xff\xd8"))
            .unwrap();
        assert!(
            matches!(img, RequestPayload::Image { ref content_type, .. } if content_type == "image/jpeg")
        );
        let err = RequestPayload::parse(Some("text/plain"), bytes::Bytes::from_static(b"hi"))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedMediaType);
        let empty = RequestPayload::parse(Some("image/png"), bytes::Bytes::new()).unwrap_err();
        assert_eq!(empty.code, ErrorCode::NotAnImage);
    }

    #[test]
    fn tensor_round_trips_and_is_checked() {
        let t = TensorMessage::new(model(), &input(), vec![7; 24], 42, Timings::default());
        let back = TensorMessage::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        back.check(&model(), &input()).unwrap();

        let other = ModelRef {
            name: "m".into(),
            version: "2".into(),
        };
        assert_eq!(
            back.check(&other, &input()).unwrap_err().code,
            ErrorCode::BadTensor
        );
        let mut short = back.clone();
        short.data.pop();
        assert!(
            short
                .check(&model(), &input())
                .unwrap_err()
                .message
                .contains("23 bytes")
        );
        let mut wrong_shape = back.clone();
        wrong_shape.shape = vec![1, 2, 4, 3];
        assert_eq!(
            wrong_shape.check(&model(), &input()).unwrap_err().code,
            ErrorCode::BadTensor
        );

        let mut future = back;
        future.format_version = 99;
        assert_eq!(
            TensorMessage::decode(&future.encode()).unwrap_err().code,
            ErrorCode::BadTensor
        );
        assert_eq!(
            TensorMessage::decode(b"\xc1garbage").unwrap_err().code,
            ErrorCode::BadTensor
        );
    }

    #[test]
    fn reply_json_shape_is_stable() {
        let p = Prediction {
            model: model(),
            classes: vec!["a".into(), "b".into()],
            logits: vec![1.0, 3.0],
            timings: Timings {
                inference_ms: Some(2.5),
                ..Default::default()
            },
        };
        let json: serde_json::Value =
            serde_json::from_slice(&Reply::prediction("r1", p.clone()).encode()).unwrap();
        assert_eq!(json["request_id"], "r1");
        assert_eq!(json["prediction"]["logits"][1], 3.0);
        assert!(json["prediction"]["timings"].get("download_ms").is_none());
        assert_eq!(p.top(), Some(1));
        let probs = p.probabilities();
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-6 && probs[1] > probs[0]);

        let e = Reply::error("r2", Error::new(ErrorCode::OriginError, "404"));
        let json: serde_json::Value = serde_json::from_slice(&e.encode()).unwrap();
        assert_eq!(json["error"]["code"], "origin_error");
        assert_eq!(Reply::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn a_prediction_whose_logits_do_not_match_its_classes_decodes_as_an_internal_error() {
        let prediction = |classes: &[&str], logits: &[f32]| Prediction {
            model: model(),
            classes: classes.iter().map(|c| c.to_string()).collect(),
            logits: logits.to_vec(),
            timings: Timings::default(),
        };
        let fine = Reply::prediction("ok", prediction(&["a", "b"], &[1.0, 2.0]));
        assert_eq!(Reply::decode(&fine.encode()).unwrap(), fine);
        for (classes, logits, says) in [
            (
                &["a", "b"][..],
                &[1.0, 2.0, 3.0][..],
                "3 logits for 2 classes",
            ),
            (&["a", "b", "c"][..], &[1.0][..], "1 logits for 3 classes"),
            (&[][..], &[][..], "0 logits for 0 classes"),
        ] {
            let malformed = Reply::prediction("r3", prediction(classes, logits)).encode();
            let reply = Reply::decode(&malformed).unwrap();
            assert_eq!(reply.request_id, "r3");
            match reply.outcome {
                Outcome::Error(e) => {
                    assert_eq!(e.code, ErrorCode::Internal);
                    assert!(e.message.contains(says), "{}", e.message);
                }
                other => panic!("a malformed prediction was passed on: {other:?}"),
            }
        }
        assert_eq!(
            Reply::decode(b"{\"request_id\": 5}").unwrap_err().code,
            ErrorCode::Internal
        );
    }
}
