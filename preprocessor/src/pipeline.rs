//! A request's payload -> the tensor message, without NATS, in two steps so the caller can look
//! in between (e.g. whether the request was cancelled during its download): [`Pipeline::fetch`]
//! (deadline check, payload parsing, download for a URL), then [`Pipeline::finish`] (decode and
//! resize on the blocking pool, at most `cpu-threads` at once). A decode that waited for a CPU
//! checks its [`Gate`] when its turn comes: a request whose deadline passed or whose caller gave
//! up meanwhile costs no decode. (TurboJPEG decodes in one call, with no hook between scans or
//! rows; the scan limits bound a decode once it has started.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::manifest::InputSpec;
use protocol::messages::RequestPayload;
use protocol::{Error, ErrorCode, ModelRef, RequestMeta, TensorMessage, Timings};
use tokio::sync::Semaphore;

use crate::imaging::{ImageSpec, Preprocessed, preprocess_image_timed};
use crate::metrics::Metrics;
use crate::net::Downloader;
use crate::router::Target;

/// Turns request payloads into tensors for a model version (by default the one given to
/// [`Pipeline::new`]). Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    target: Target,
    downloader: Downloader,
    cpu: Arc<Semaphore>,
    metrics: Metrics,
}

/// When and how a request arrived, for the tensor's timings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Arrival {
    /// When this tier received the request, in ms since the Unix epoch.
    pub received_at_ms: u64,
    /// How long the request waited in the requests stream.
    pub queue_ms: Option<f64>,
}

/// What a decode checks when its turn comes.
#[derive(Clone, Copy)]
pub struct Gate<'a> {
    /// The request, for its deadline.
    pub meta: &'a RequestMeta,
    /// Whether its caller gave up.
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
}

impl Gate<'_> {
    /// `Ok(false)` when the caller gave up, `deadline_exceeded` when the deadline passed.
    fn still_wanted(&self) -> Result<bool, Error> {
        if (self.cancelled)() {
            return Ok(false);
        }
        check_deadline(self.meta, "while waiting to be decoded")?;
        Ok(true)
    }
}

/// The encoded image of a request, fetched.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub image: Bytes,
    /// Time spent downloading it (none when the request carried the image).
    pub download_ms: Option<f64>,
    /// The model version its JSON body pinned it to, if any.
    pub model_version: Option<String>,
}

impl Pipeline {
    /// `cpu_threads` bounds the decodes running at once.
    pub fn new(
        model: ModelRef,
        input: InputSpec,
        spec: ImageSpec,
        downloader: Downloader,
        cpu_threads: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            target: Target { model, input, spec },
            downloader,
            cpu: Arc::new(Semaphore::new(cpu_threads.max(1))),
            metrics,
        }
    }

    pub fn spec(&self) -> &ImageSpec {
        &self.target.spec
    }

    /// The tensor for one request: [`Pipeline::fetch`] then [`Pipeline::finish`], never
    /// cancelled.
    pub async fn tensor(
        &self,
        meta: &RequestMeta,
        content_type: Option<&str>,
        payload: Bytes,
        arrival: Arrival,
    ) -> Result<TensorMessage, Error> {
        let fetched = self.fetch(meta, content_type, payload).await?;
        let gate = Gate {
            meta,
            cancelled: &|| false,
        };
        self.finish(fetched, arrival, gate)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::Internal, "cancelled without a cancellation"))
    }

    /// The encoded image of one request: `content_type` and `payload` as the request message
    /// carries them; `meta`'s deadline is checked before and after the download and caps it.
    pub async fn fetch(
        &self,
        meta: &RequestMeta,
        content_type: Option<&str>,
        payload: Bytes,
    ) -> Result<Fetched, Error> {
        check_deadline(meta, "before preprocessing")?;
        let (image, download_ms, model_version) = match RequestPayload::parse(
            content_type,
            payload,
        )? {
            RequestPayload::Image { bytes, .. } => (bytes, None, None),
            RequestPayload::Url(request) => {
                let url = request.url;
                let downloaded = self.downloader.download(&url, meta.remaining()).await?;
                self.metrics
                    .download_seconds
                    .observe(downloaded.elapsed.as_secs_f64());
                self.metrics
                    .downloaded_bytes
                    .inc_by(downloaded.bytes.len() as u64);
                tracing::debug!(
                    request_id = %meta.request_id, url = %protocol::redact::redact_urls(downloaded.url.as_str()),
                    bytes = downloaded.bytes.len(), redirects = downloaded.redirects,
                    "downloaded"
                );
                (
                    downloaded.bytes,
                    Some(millis(downloaded.elapsed)),
                    request.model_version,
                )
            }
        };
        check_deadline(meta, "after downloading")?;
        Ok(Fetched {
            image,
            download_ms,
            model_version,
        })
    }

    /// Decodes and resizes a fetched image into the tensor message for the default model;
    /// `None` when `gate` says the caller gave up before the decode's turn came.
    pub async fn finish(
        &self,
        fetched: Fetched,
        arrival: Arrival,
        gate: Gate<'_>,
    ) -> Result<Option<TensorMessage>, Error> {
        self.finish_for(fetched, arrival, gate, &self.target).await
    }

    /// [`Pipeline::finish`] for the model version `target`.
    pub async fn finish_for(
        &self,
        fetched: Fetched,
        arrival: Arrival,
        gate: Gate<'_>,
        target: &Target,
    ) -> Result<Option<TensorMessage>, Error> {
        let Fetched {
            image, download_ms, ..
        } = fetched;
        let Some(pre) = self.preprocess_for(image, gate, &target.spec).await? else {
            return Ok(None);
        };
        crate::trace::decode_and_resize(pre.decode, pre.resize);
        self.metrics
            .decode_seconds
            .observe(pre.decode.as_secs_f64());
        self.metrics
            .resize_seconds
            .observe(pre.resize.as_secs_f64());
        let timings = Timings {
            request_queue_ms: arrival.queue_ms,
            download_ms,
            preprocess_ms: Some(millis(pre.decode + pre.resize)),
            ..Timings::default()
        };
        Ok(Some(TensorMessage::new(
            target.model.clone(),
            &target.input,
            pre.data,
            arrival.received_at_ms,
            timings,
        )))
    }

    /// Decodes and resizes `bytes` on the blocking pool, waiting for a CPU slot first; `None`
    /// (no decode) when `gate` says the caller gave up meanwhile.
    pub async fn preprocess(
        &self,
        bytes: Bytes,
        gate: Gate<'_>,
    ) -> Result<Option<Preprocessed>, Error> {
        self.preprocess_for(bytes, gate, &self.target.spec).await
    }

    async fn preprocess_for(
        &self,
        bytes: Bytes,
        gate: Gate<'_>,
        spec: &ImageSpec,
    ) -> Result<Option<Preprocessed>, Error> {
        let permit =
            self.cpu.clone().acquire_owned().await.map_err(|_| {
                Error::new(ErrorCode::Unavailable, "the preprocessor is shutting down")
            })?;
        if !gate.still_wanted()? {
            return Ok(None);
        }
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the work is done, even if the awaiting task is cancelled.
            let _permit = permit;
            preprocess_image_timed(&bytes, &spec)
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("preprocessing task failed: {e}"),
            )
        })?
        .map(Some)
    }
}

fn check_deadline(meta: &RequestMeta, when: &str) -> Result<(), Error> {
    if meta.expired() {
        return Err(Error::new(
            ErrorCode::DeadlineExceeded,
            format!("the request's deadline passed {when}"),
        ));
    }
    Ok(())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
