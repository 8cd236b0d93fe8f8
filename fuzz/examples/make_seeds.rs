//! Writes the seed corpora of `request_parser` and `tensor_decoder` under `corpus/` (the image
//! seeds are made by `make_image_seeds.py`). Run from `fuzz/`:
//! `cargo +nightly run --example make_seeds`. Deterministic: rerunning rewrites the same files.

use std::fs;
use std::path::Path;

use clothesline_fuzz::{encode_request, shipped_input, shipped_model};
use protocol::ModelRef;
use protocol::messages::{TensorMessage, Timings};

const REQUEST_ID: usize = 0;
const REPLY_TO: usize = 1;
const DEADLINE: usize = 2;
const TRACEPARENT: usize = 3;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn requests(dir: &Path) {
    let url = br#"{"url":"http://x/a.jpg"}"#;
    let all_headers = [
        (REQUEST_ID, "req-0001"),
        (REPLY_TO, "clothesline.replies.abc"),
        (DEADLINE, "1893456000000"),
        (
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ];
    let cases: &[(&str, Option<&str>, bool, &[(usize, &str)], &[u8])] = &[
        ("url_no_content_type", None, false, &[], url),
        ("url_json", Some("application/json"), false, &[], url),
        (
            "url_json_charset_all_headers",
            Some("application/json; charset=utf-8"),
            true,
            &all_headers,
            br#"{"url":"https://example.com/shirts/1.png?size=large#x"}"#,
        ),
        ("url_uppercase_type", Some("APPLICATION/JSON"), true, &[], url),
        (
            "url_inline_type",
            Some("Application/Json ; q=0.9"),
            false,
            &[(REQUEST_ID, "  padded-id  ")],
            br#"{"url":"http://x/\u00e9.jpg","extra":[1,2.5e3,{"a":null,"b":true}]}"#,
        ),
        (
            "deadline_not_a_number",
            Some("application/json"),
            true,
            &[(DEADLINE, "soon")],
            url,
        ),
        (
            "deadline_overflow",
            None,
            false,
            &[(DEADLINE, "18446744073709551616")],
            url,
        ),
        ("json_truncated", Some("application/json"), false, &[], b"{"),
        ("json_array", None, false, &[], b"[1]"),
        ("json_url_number", None, false, &[], br#"{"url":5}"#),
        ("json_missing_url", None, false, &[], br#"{"uri":"x"}"#),
        ("json_empty_body", Some("application/json"), false, &[], b""),
        ("json_nested_deep", None, false, &[], b"[[[[[[[[[[[[[[[[{\"url\":\"x\"}]]]]]]]]]]]]]]]]"),
        (
            "image_jpeg_bytes",
            Some("image/jpeg"),
            true,
            &[(REQUEST_ID, "img-1")],
            b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9",
        ),
        ("image_png_empty", Some("image/png"), false, &[], b""),
        ("image_webp_params", Some(" Image/WebP ; q=1"), false, &[], b"RIFF\x10\0\0\0WEBPVP8 "),
        (
            "octet_stream",
            Some("application/octet-stream"),
            false,
            &[],
            b"BM\x00\x00\x00\x00",
        ),
        (
            "multipart",
            Some("multipart/form-data; boundary=xyz"),
            false,
            &[],
            b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff\xd9\r\n--xyz--\r\n",
        ),
        ("text_plain", Some("text/plain"), false, &[], b"hello"),
        ("empty_type", Some(""), true, &[], url),
        ("semicolon_type", Some(";"), false, &[], url),
        ("non_ascii_type", Some("\u{130}mage/png"), false, &[], b"\x89PNG\r\n\x1a\n"),
    ];
    for (name, ct, in_header, headers, payload) in cases {
        write(
            dir,
            name,
            &encode_request(*ct, *in_header, headers, payload),
        );
    }
    // The extra-header bit (5) with a name of its own, and a header value with CR/LF.
    let mut extra = vec![1u8, 0b10_0001, 7];
    extra.extend_from_slice(b"id\r\nbad");
    extra.push(11);
    extra.extend_from_slice(b"Nats-Msg-Id");
    extra.push(3);
    extra.extend_from_slice(b"abc");
    extra.extend_from_slice(url);
    write(dir, "extra_header", &extra);
}

fn tensors(dir: &Path) {
    let (model, input) = (shipped_model(), shipped_input());
    let full_len = (input.height * input.width * input.channels) as usize;
    let pixels: Vec<u8> = (0..full_len).map(|i| (i * 7 % 251) as u8).collect();
    let timings = Timings {
        request_queue_ms: Some(1.25),
        download_ms: Some(30.0),
        preprocess_ms: Some(4.5),
        tensor_queue_ms: None,
        inference_ms: None,
        batch_size: Some(8),
    };
    let tensor = |data: Vec<u8>| {
        TensorMessage::new(
            model.clone(),
            &input,
            data,
            1_780_000_000_000,
            timings.clone(),
        )
    };

    // The one message the shipped model accepts (about 150 KB).
    let full = tensor(pixels);
    write(dir, "valid_full", &full.encode());

    let small = tensor(vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    write(dir, "valid_header_small_data", &small.encode());
    write(
        dir,
        "positional_small_data",
        &rmp_serde::to_vec(&small).expect("serialize"),
    );

    let mut other_model = small.clone();
    other_model.model = ModelRef {
        name: "clothes-efficientnet-lite0".into(),
        version: "2.0.0".into(),
    };
    write(dir, "other_model_version", &other_model.encode());

    let mut future = small.clone();
    future.format_version = 2;
    write(dir, "format_version_2", &future.encode());

    let mut shape = small.clone();
    shape.shape = vec![1, 2, 2, 3];
    shape.layout = "NCHW".into();
    write(dir, "wrong_shape_layout", &shape.encode());

    let mut no_timings = small;
    no_timings.timings = Timings::default();
    no_timings.data.clear();
    write(dir, "empty_data_no_timings", &no_timings.encode());

    write(dir, "garbage", b"\xc1garbage");
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, make) in [
        ("request_parser", requests as fn(&Path)),
        ("tensor_decoder", tensors),
    ] {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        make(&dir);
        println!("wrote {}", dir.display());
    }
}
