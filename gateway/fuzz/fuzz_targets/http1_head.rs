//! The raw HTTP/1 head scan (what hyper hides: CL with TE, duplicates, obs-fold) and path
//! normalisation: no panic; a normalised path never keeps a dot segment.
#![no_main]

use gateway::edge::h1::scan_head;
use gateway::route::rewrite::{has_encoded_traversal, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scan_head(data);
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = has_encoded_traversal(path);
        if let Some(n) = normalize_path(path) {
            assert!(
                !n.split('/').any(|seg| seg == ".." || seg == "."),
                "{path:?} -> {n:?}"
            );
        }
    }
});
