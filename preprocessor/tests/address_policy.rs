//! Which addresses and URLs downloads may reach.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use clothesline_preprocessor::net::address::{check_literal_host, is_allowed, parse_url};
use protocol::ErrorCode;

#[test]
fn address_table() {
    let table = [
        ("127.0.0.1", false),
        ("127.255.0.9", false),
        ("10.1.2.3", false),
        ("172.16.0.1", false),
        ("172.31.255.255", false),
        ("172.32.0.1", true),
        ("192.168.1.1", false),
        ("169.254.169.254", false),
        ("100.64.0.1", false),
        ("0.0.0.0", false),
        ("224.0.0.1", false),
        ("239.255.255.250", false),
        ("255.255.255.255", false),
        ("240.0.0.1", false),
        ("192.0.2.1", false),
        ("198.18.0.1", false),
        ("8.8.8.8", true),
        ("1.1.1.1", true),
        ("93.184.216.34", true),
        ("::", false),
        ("::1", false),
        ("fc00::1", false),
        ("fd12:3456::1", false),
        ("fe80::1", false),
        ("fec0::1", false),
        ("ff02::1", false),
        ("::ffff:127.0.0.1", false),
        ("::ffff:8.8.8.8", false),
        ("::127.0.0.1", false),
        ("2001:db8::1", false),
        ("2001::1", false),
        ("64:ff9b::a9fe:a9fe", false),
        ("64:ff9b::808:808", true),
        ("2002:7f00:1::", false),
        ("2002:808:808::", true),
        ("2606:4700::1", true),
        ("2a00:1450:4001::200e", true),
    ];
    for (ip, allowed) in table {
        let parsed: IpAddr = ip.parse().unwrap();
        assert_eq!(is_allowed(parsed), allowed, "{ip}");
    }
}

#[test]
fn only_http_and_https_urls_with_a_host() {
    assert!(parse_url("http://example.com/a.jpg").is_ok());
    assert!(parse_url("https://example.com:8443/a.jpg?x=1").is_ok());
    for bad in [
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "gopher://example.com/",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "example.com/a.jpg",
        "http://",
        "",
    ] {
        assert_eq!(
            parse_url(bad).unwrap_err().code,
            ErrorCode::InvalidUrl,
            "{bad:?}"
        );
    }
    let long = format!("http://example.com/{}", "a".repeat(10_000));
    assert_eq!(parse_url(&long).unwrap_err().code, ErrorCode::InvalidUrl);
}

#[test]
fn literal_hosts_are_checked_in_every_spelling() {
    for blocked in [
        "http://127.0.0.1/x",
        "http://2130706433/x", // 127.0.0.1 as one number
        "http://0x7f.1/x",
        "http://[::1]:8080/x",
        "http://[::ffff:169.254.169.254]/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://0/x",
    ] {
        let url = parse_url(blocked).unwrap();
        assert_eq!(
            check_literal_host(&url).unwrap_err().code,
            ErrorCode::BlockedAddress,
            "{blocked}"
        );
    }
    for fine in [
        "http://8.8.8.8/x",
        "http://[2606:4700::1]/x",
        "http://example.com/x",
    ] {
        check_literal_host(&parse_url(fine).unwrap()).unwrap();
    }
}
