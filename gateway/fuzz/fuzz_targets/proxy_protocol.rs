//! PROXY protocol v1 lines and v2 headers: no panic on any input.
#![no_main]

use gateway::edge::proxy_protocol::{parse_v1, parse_v2};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_v1(data);
    if data.len() >= 16 {
        let mut head = [0u8; 16];
        head.copy_from_slice(&data[..16]);
        head[..12].copy_from_slice(&gateway::edge::proxy_protocol::V2_SIGNATURE);
        let _ = parse_v2(&head, &data[16..]);
    }
});
