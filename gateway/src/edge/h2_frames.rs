//! (1) HTTP/2 frame headers watched on the wire, for abuse rules hyper's h2 does not have.
//!
//! `io.rs` feeds it the plaintext bytes each way (after TLS). It reads only the 9-byte frame
//! headers, never payloads, so it costs a few comparisons per frame. Rule (SPEC §8.2): a
//! connection whose WINDOW_UPDATE frames received exceed `h2_max_window_updates_per_data` ×
//! DATA frames sent + 1,000 over its life is a flood (each costs the server work, the client
//! nothing) and gets GOAWAY ENHANCE_YOUR_CALM.

/// The client connection preface (RFC 9113 §3.4), which comes before the first frame.
const PREFACE_LEN: usize = 24;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const WINDOW_UPDATE: u8 = 0x8;
/// WINDOW_UPDATE frames allowed on top of the ratio (connection start-up, small answers).
const WINDOW_UPDATE_ALLOWANCE: u64 = 1_000;
/// RFC 9113 §7.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Finds frame headers in a byte stream split anywhere.
#[derive(Debug, Default)]
pub struct FrameScan {
    preface_left: usize,
    hdr: [u8; 9],
    hdr_len: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
}

impl FrameScan {
    /// What a server reads: the preface, then frames.
    pub fn client_side() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            ..Self::default()
        }
    }

    /// What a server writes: frames.
    pub fn server_side() -> Self {
        Self::default()
    }

    /// Between two frames (a frame of our own may be written here).
    pub fn at_boundary(&self) -> bool {
        self.preface_left == 0 && self.hdr_len == 0 && self.skip == 0
    }

    /// Calls `on(type, flags, stream id)` for every frame header completed by `bytes`.
    pub fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(u8, u8, u32)) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let k = self.preface_left.min(bytes.len());
                self.preface_left -= k;
                bytes = &bytes[k..];
            } else if self.skip > 0 {
                let k = self.skip.min(bytes.len());
                self.skip -= k;
                bytes = &bytes[k..];
            } else {
                let k = (9 - self.hdr_len).min(bytes.len());
                self.hdr[self.hdr_len..self.hdr_len + k].copy_from_slice(&bytes[..k]);
                self.hdr_len += k;
                bytes = &bytes[k..];
                if self.hdr_len == 9 {
                    let h = self.hdr;
                    self.hdr_len = 0;
                    self.skip =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    on(h[3], h[4], stream);
                }
            }
        }
    }
}

/// The frame counts of one HTTP/2 connection and the WINDOW_UPDATE rule.
#[derive(Debug)]
pub struct H2Watch {
    pub read: FrameScan,
    pub write: FrameScan,
    window_updates: u64,
    data_sent: u64,
    /// 0 = rule off.
    per_data: u64,
    /// The highest client stream id seen (for GOAWAY's last-stream-id).
    last_stream: u32,
}

impl H2Watch {
    pub fn new(per_data: u32) -> Self {
        Self {
            read: FrameScan::client_side(),
            write: FrameScan::server_side(),
            window_updates: 0,
            data_sent: 0,
            per_data: u64::from(per_data),
            last_stream: 0,
        }
    }

    /// Bytes read from the client. Returns true when the connection just became a flood.
    pub fn on_read(&mut self, bytes: &[u8]) -> bool {
        let (mut wu, mut last) = (0u64, self.last_stream);
        self.read.feed(bytes, |kind, _, stream| match kind {
            WINDOW_UPDATE => wu += 1,
            HEADERS => last = last.max(stream),
            _ => {}
        });
        self.last_stream = last;
        self.window_updates += wu;
        wu > 0 && self.is_flood()
    }

    /// Bytes written to the client.
    pub fn on_write(&mut self, bytes: &[u8]) {
        let mut data = 0u64;
        self.write.feed(bytes, |kind, _, _| {
            if kind == DATA {
                data += 1;
            }
        });
        self.data_sent += data;
    }

    fn is_flood(&self) -> bool {
        self.per_data > 0
            && self.window_updates
                > self
                    .per_data
                    .saturating_mul(self.data_sent)
                    .saturating_add(WINDOW_UPDATE_ALLOWANCE)
    }

    /// A GOAWAY ENHANCE_YOUR_CALM frame naming the last stream the client opened.
    pub fn goaway(&self) -> [u8; 17] {
        let mut f = [0u8; 17];
        f[2] = 8; // payload length
        f[3] = 0x7; // GOAWAY
        f[9..13].copy_from_slice(&(self.last_stream & 0x7fff_ffff).to_be_bytes());
        f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0xAA, len));
        f
    }

    #[test]
    fn finds_frames_split_at_any_byte() {
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(0x4, 0, 6));
        wire.extend(frame(HEADERS, 1, 20));
        wire.extend(frame(WINDOW_UPDATE, 0, 4));
        wire.extend(frame(DATA, 1, 300));
        for chunk in [1, 2, 5, 9, 10, 64, wire.len()] {
            let mut scan = FrameScan::client_side();
            let mut seen = Vec::new();
            for piece in wire.chunks(chunk) {
                scan.feed(piece, |k, _, s| seen.push((k, s)));
            }
            assert_eq!(
                seen,
                vec![(0x4, 0), (HEADERS, 1), (WINDOW_UPDATE, 0), (DATA, 1)]
            );
            assert!(scan.at_boundary());
        }
    }

    #[test]
    fn window_updates_past_the_ratio_plus_allowance_are_a_flood() {
        let mut w = H2Watch::new(10);
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(HEADERS, 3, 10));
        assert!(!w.on_read(&wire));
        w.on_write(&frame(DATA, 3, 100).repeat(5));
        // 10 x 5 + 1,000 allowed.
        let wu = frame(WINDOW_UPDATE, 0, 4);
        for _ in 0..1_050 {
            assert!(!w.on_read(&wu));
        }
        assert!(w.on_read(&wu));
        let g = w.goaway();
        assert_eq!(&g[3..5], &[0x7, 0]);
        assert_eq!(u32::from_be_bytes([g[9], g[10], g[11], g[12]]), 3);
        assert_eq!(u32::from_be_bytes([g[13], g[14], g[15], g[16]]), 0xb);
    }

    #[test]
    fn the_rule_is_off_at_zero() {
        let mut w = H2Watch::new(0);
        w.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let wu = frame(WINDOW_UPDATE, 0, 4);
        for _ in 0..5_000 {
            assert!(!w.on_read(&wu));
        }
    }
}
