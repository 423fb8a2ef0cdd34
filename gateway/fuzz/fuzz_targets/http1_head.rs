//! The raw HTTP/1 head scan (what hyper hides: CL with TE, duplicates): no panic, and the scan
//! (memchr, names filtered by length) agrees with the plain line-by-line reading it replaced.
//! (Path normalisation has its own target, `path_normalise`.)
#![no_main]

use gateway::edge::h1::scan_head;
use libfuzzer_sys::fuzz_target;

/// The first scan, byte by byte: the reference for the faster one.
fn reference_scan(head: &[u8]) -> Option<u8> {
    let (mut cl, mut te, mut host) = (0u32, 0u32, 0u32);
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        if name.eq_ignore_ascii_case(b"content-length") {
            cl += 1;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te += 1;
        } else if name.eq_ignore_ascii_case(b"host") {
            host += 1;
        }
    }
    if cl > 0 && te > 0 {
        Some(0)
    } else if cl > 1 {
        Some(1)
    } else if te > 1 {
        Some(2)
    } else if host > 1 {
        Some(3)
    } else {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(scan_head(data), reference_scan(data), "{:?}", String::from_utf8_lossy(data));
});
