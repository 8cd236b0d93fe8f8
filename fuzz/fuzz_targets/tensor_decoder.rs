//! The tensor message the preprocessor publishes and the gpu-worker reads:
//! `TensorMessage::decode` on arbitrary bytes and, when it decodes, `check` against the shipped
//! model (`model/manifest.json`: clothes-efficientnet-lite0 1.0.0, 224x224x3 uint8 NHWC).
//!
//! Asserts no panic, and: errors are `bad_tensor`; a decoded message has the current format
//! version and re-encodes stably (encode . decode . encode = encode); a message that passes
//! `check` has exactly the shape and byte count the model needs.

#![no_main]

use clothesline_fuzz::{shipped_input, shipped_model};
use libfuzzer_sys::fuzz_target;
use protocol::messages::TENSOR_FORMAT_VERSION;
use protocol::{ErrorCode, TensorMessage};

fuzz_target!(|data: &[u8]| {
    let msg = match TensorMessage::decode(data) {
        Ok(msg) => msg,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadTensor, "{e:?}");
            return;
        }
    };
    assert_eq!(msg.format_version, TENSOR_FORMAT_VERSION);

    let encoded = msg.encode();
    let again = TensorMessage::decode(&encoded).expect("an encoded tensor decodes");
    assert_eq!(again.encode(), encoded, "re-encoding is not stable");

    let (model, input) = (shipped_model(), shipped_input());
    match msg.check(&model, &input) {
        Ok(()) => {
            assert_eq!(msg.shape, [1, 224, 224, 3]);
            assert_eq!(msg.data.len(), 224 * 224 * 3);
            assert_eq!(msg.model, model);
        }
        Err(e) => assert_eq!(e.code, ErrorCode::BadTensor, "{e:?}"),
    }
});
