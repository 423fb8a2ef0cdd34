//! The one normalised path (SPEC §8.2): no panic on any input; normalising twice gives the
//! same path; the output never holds `//`, a dot segment (before a `;`), or an escape of an
//! unreserved character; the match path never holds a `;`.
#![no_main]

use gateway::config::EncodedSlashes;
use gateway::path::{match_path, normalise};
use libfuzzer_sys::fuzz_target;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for mode in [EncodedSlashes::Reject, EncodedSlashes::Keep] {
        let Ok(once) = normalise(path, mode) else {
            continue;
        };
        let twice = normalise(&once, mode).expect("a normal path stays valid");
        assert_eq!(once, twice, "not idempotent: {path:?}");
        assert!(once.starts_with('/'));
        assert!(!once.contains("//"), "{path:?} -> {once:?}");
        for seg in once.split('/') {
            let head = seg.split(';').next().unwrap_or(seg);
            assert!(head != "." && head != "..", "{path:?} -> {once:?}");
        }
        let b = once.as_bytes();
        for (i, _) in once.match_indices('%') {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
            let v = u8::from_str_radix(hex, 16).expect("valid escape");
            assert!(!unreserved(v), "{path:?} -> {once:?}");
            assert_eq!(hex, hex.to_ascii_uppercase(), "{path:?} -> {once:?}");
        }
        let m = match_path(&once);
        assert!(!m.contains(';') && m.starts_with('/'), "{once:?} -> {m:?}");
    }
});
