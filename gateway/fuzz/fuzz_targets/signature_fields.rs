//! RFC 8941 dictionaries as Signature-Input / Signature carry them, and the whole RFC 9421
//! verification path over them: no panic, and nothing verifies without the key.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use gateway::config::{CheckMode, IntegrityPolicy};
use gateway::policy::integrity::{sf, IntegrityRt};
use libfuzzer_sys::fuzz_target;

fn rt() -> &'static IntegrityRt {
    static RT: OnceLock<IntegrityRt> = OnceLock::new();
    RT.get_or_init(|| {
        IntegrityRt::new(IntegrityPolicy {
            content_digest: CheckMode::IfPresent,
            signature: CheckMode::Required,
            keys: vec![("k".into(), b"fuzzing secret".to_vec())],
            required_components: vec!["@method".into()],
            max_skew: Duration::from_secs(u64::MAX / 4),
            max_nonces: 1000,
            json: true,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sf::dictionary(text);
    // Split into Signature-Input and Signature at the first newline.
    let (input, sig) = text.split_once('\n').unwrap_or((text, ""));
    let (Ok(input), Ok(sig)) = (
        http::HeaderValue::from_str(input),
        http::HeaderValue::from_str(sig),
    ) else {
        return;
    };
    let (mut parts, ()) = http::Request::builder()
        .method("POST")
        .uri("https://example.com/a/b?c=d&e")
        .header("host", "example.com")
        .header("content-type", "application/json")
        .body(())
        .map(|r| r.into_parts())
        .unwrap_or_else(|_| http::Request::new(()).into_parts());
    parts.headers.insert("signature-input", input);
    parts.headers.insert("signature", sig);
    // A valid signature needs the secret: the fuzzer cannot produce one.
    assert!(rt().check(&parts, b"{}", true).is_err());
});
