//! The HTTP/2 request byte stream, frame by frame: the connection preface, then frames passed
//! through untouched except header blocks (HEADERS + CONTINUATION), which are HPACK-decoded
//! with the client's table and re-encoded with `:authority` rewritten (see the parent module
//! for why).

use super::hpack;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// SETTINGS_MAX_FRAME_SIZE of the receiving end: h2's default, which neither the agent's
/// servers nor tonic's clients change. Larger header frames are refused, rewritten ones split.
const MAX_FRAME_SIZE: usize = 16_384;
/// The largest header block (all its frames) accepted: far above gRPC's 8 KiB metadata limit.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// SETTINGS_HEADER_TABLE_SIZE the receiving end advertises (the default), so the most the
/// sender's encoder may put in its dynamic table.
const HEADER_TABLE_SIZE: usize = 4096;

/// Why a connection was closed instead of passed on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    #[error("HPACK header block does not decode: {0}")]
    Hpack(#[from] hpack::HpackError),
    #[error("header frame of {0} bytes exceeds the {MAX_FRAME_SIZE}-byte frame size")]
    FrameTooLarge(usize),
    #[error("header block exceeds {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge,
    #[error(
        "frame type {0:#x} inside a header block (only CONTINUATION of its stream may follow)"
    )]
    InterleavedFrame(u8),
    #[error("HEADERS frame padding or priority longer than the frame")]
    BadPadding,
}

/// The HTTP/2 request byte stream, frame by frame; only header blocks are transcoded.
pub(super) struct FrameRewriter {
    /// What a present `:authority` becomes (`None`: it is dropped).
    authority: Option<Vec<u8>>,
    state: State,
    head: [u8; FRAME_HEAD_LEN],
    head_len: usize,
    /// The payload of the HEADERS/CONTINUATION frame being read.
    frame: Vec<u8>,
    /// The header block being assembled, between HEADERS and the frame with END_HEADERS.
    block: Option<HeaderBlock>,
    decoder: hpack::Decoder,
}

#[derive(Debug)]
enum State {
    /// The client connection preface; anything else turns the rewriter off for good (h2 then
    /// refuses the connection itself).
    Preface {
        matched: usize,
    },
    /// Reading a 9-byte frame header into `head`.
    FrameHead,
    /// Passing a frame's payload through.
    Payload {
        remaining: usize,
    },
    /// Reading a header frame's payload into `frame`.
    HeaderFrame {
        kind: u8,
        flags: u8,
        stream: u32,
        remaining: usize,
    },
    Transparent,
}

#[derive(Debug)]
struct HeaderBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

impl std::fmt::Debug for FrameRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameRewriter")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl FrameRewriter {
    pub(super) fn new(authority: Option<Vec<u8>>) -> Self {
        Self {
            authority,
            state: State::Preface { matched: 0 },
            head: [0; FRAME_HEAD_LEN],
            head_len: 0,
            frame: Vec::new(),
            block: None,
            decoder: hpack::Decoder::new(HEADER_TABLE_SIZE),
        }
    }

    /// Takes the next bytes of the stream and appends to `out` what the receiver should read.
    pub(super) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Transparent => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Preface { matched } => {
                    let n = (PREFACE.len() - *matched).min(input.len());
                    let (now, rest) = input.split_at(n);
                    out.extend_from_slice(now);
                    input = rest;
                    if now != &PREFACE[*matched..*matched + n] {
                        self.state = State::Transparent;
                    } else {
                        *matched += n;
                        if *matched == PREFACE.len() {
                            self.state = State::FrameHead;
                        }
                    }
                }
                State::FrameHead => {
                    let n = (FRAME_HEAD_LEN - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                    self.head_len += n;
                    input = &input[n..];
                    if self.head_len == FRAME_HEAD_LEN {
                        self.head_len = 0;
                        self.on_frame_head(out)?;
                    }
                }
                State::Payload { remaining } => {
                    let n = (*remaining).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *remaining -= n;
                    if *remaining == 0 {
                        self.state = State::FrameHead;
                    }
                }
                State::HeaderFrame { remaining, .. } => {
                    let n = (*remaining).min(input.len());
                    self.frame.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *remaining -= n;
                    if *remaining == 0 {
                        self.on_header_frame(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn on_frame_head(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let h = self.head;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let is_header_frame = match &self.block {
            Some(block) if kind == CONTINUATION && stream == block.stream => true,
            Some(_) => return Err(RewriteError::InterleavedFrame(kind)),
            // A CONTINUATION with no block before it goes on to h2, which refuses it.
            None => kind == HEADERS,
        };
        if !is_header_frame {
            out.extend_from_slice(&h);
            self.state = match len {
                0 => State::FrameHead,
                remaining => State::Payload { remaining },
            };
            return Ok(());
        }
        if len > MAX_FRAME_SIZE {
            return Err(RewriteError::FrameTooLarge(len));
        }
        self.state = State::HeaderFrame {
            kind,
            flags,
            stream,
            remaining: len,
        };
        if len == 0 {
            self.on_header_frame(out)?;
        }
        Ok(())
    }

    fn on_header_frame(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let State::HeaderFrame {
            kind,
            flags,
            stream,
            ..
        } = self.state
        else {
            unreachable!("called only for a complete header frame")
        };
        self.state = State::FrameHead;
        let payload = std::mem::take(&mut self.frame);
        if kind == HEADERS {
            let mut body = &payload[..];
            let padding = if flags & PADDED != 0 {
                let (&padding, rest) = body.split_first().ok_or(RewriteError::BadPadding)?;
                body = rest;
                usize::from(padding)
            } else {
                0
            };
            let priority = if flags & PRIORITY != 0 {
                let (priority, rest) = body
                    .split_first_chunk::<PRIORITY_LEN>()
                    .ok_or(RewriteError::BadPadding)?;
                body = rest;
                Some(*priority)
            } else {
                None
            };
            let fragment = body
                .get(
                    ..body
                        .len()
                        .checked_sub(padding)
                        .ok_or(RewriteError::BadPadding)?,
                )
                .ok_or(RewriteError::BadPadding)?;
            self.block = Some(HeaderBlock {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
            });
        } else if let Some(block) = &mut self.block {
            block.fragment.extend_from_slice(&payload);
        }
        let block = self.block.as_ref().map_or(0, |b| b.fragment.len());
        if block > MAX_HEADER_BLOCK {
            return Err(RewriteError::BlockTooLarge);
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.emit(block, out)?;
            }
        }
        Ok(())
    }

    /// Decodes the block with the sender's table, rewrites `:authority`, and writes it out as
    /// HEADERS + CONTINUATION frames of never-indexed literals.
    fn emit(&mut self, block: HeaderBlock, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut fields = Vec::with_capacity(block.fragment.len() + 64);
        let authority = self.authority.as_deref();
        self.decoder.decode(&block.fragment, |name, value| {
            if name != b":authority" {
                hpack::put_literal(&mut fields, name, value);
            } else if let Some(authority) = authority {
                hpack::put_literal(&mut fields, name, authority);
            }
        })?;

        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first_len = fields.len().min(MAX_FRAME_SIZE - priority.len());
        let (first, mut rest) = fields.split_at(first_len);
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if !priority.is_empty() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        put_frame_head(
            out,
            priority.len() + first.len(),
            HEADERS,
            flags,
            block.stream,
        );
        out.extend_from_slice(priority);
        out.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_SIZE));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            put_frame_head(out, chunk.len(), CONTINUATION, flags, block.stream);
            out.extend_from_slice(chunk);
        }
        Ok(())
    }
}

fn put_frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = u32::try_from(len).expect("frame length below MAX_FRAME_SIZE");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::hpack::tests::IndexingEncoder;
    use super::*;

    /// Frames as (type, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_frame_head(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    fn request(authority: &str) -> Vec<(String, String)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (
                ":path",
                "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
            ),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    }

    fn encode(encoder: &mut IndexingEncoder, fields: &[(String, String)]) -> Vec<u8> {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        encoder.encode(&fields, true)
    }

    /// What the receiver decodes from the rewritten header frames, with a fresh decoder per
    /// connection as h2 has.
    fn decoded(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(String, String)>> {
        let mut decoder = hpack::Decoder::new(HEADER_TABLE_SIZE);
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        for (kind, flags, _, payload) in frames {
            if *kind == HEADERS || *kind == CONTINUATION {
                let skip = if *kind == HEADERS && flags & PRIORITY != 0 {
                    PRIORITY_LEN
                } else {
                    0
                };
                block.extend_from_slice(&payload[skip..]);
                if flags & END_HEADERS != 0 {
                    let mut fields = Vec::new();
                    decoder
                        .decode(&block, |n, v| {
                            let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                            fields.push((text(n), text(v)))
                        })
                        .unwrap();
                    blocks.push(fields);
                    block.clear();
                }
            }
        }
        blocks
    }

    fn rewrite_in_pieces(input: &[u8], piece: usize) -> Vec<u8> {
        let mut rewriter = FrameRewriter::new(Some(b"localhost".to_vec()));
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            rewriter.feed(chunk, &mut out).unwrap();
        }
        out
    }

    /// Two requests from an encoder that indexes (as grpc-core's does), so the second refers
    /// to the first's dynamic-table entries; a DATA frame between them.
    fn two_requests(authority: &str) -> Vec<u8> {
        let mut encoder = IndexingEncoder::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let first = encode(&mut encoder, &request(authority));
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\x05hello"));
        let second = encode(&mut encoder, &request(authority));
        assert_eq!(
            second.len(),
            6,
            "the second block only indexes the first's entries"
        );
        input.extend(frame(HEADERS, END_HEADERS, 3, &second));
        input
    }

    #[test]
    fn every_authority_becomes_localhost_and_other_bytes_pass_through() {
        for authority in [
            "%2Ftmp%2Fmeshca-dev%2Fagent%2Fsds.sock",
            "/run/spire/agent.sock",
            "localhost",
        ] {
            let input = two_requests(authority);
            // Whole, byte by byte, and in odd pieces: the same output.
            let whole = rewrite_in_pieces(&input, input.len());
            assert_eq!(rewrite_in_pieces(&input, 1), whole);
            assert_eq!(rewrite_in_pieces(&input, 7), whole);

            let out = frames(&whole);
            assert_eq!(out.len(), 4);
            assert_eq!((out[0].0, out[0].3.len()), (0x4, 0), "SETTINGS untouched");
            assert_eq!(out[2], (0x0, END_STREAM, 1, b"\0\0\0\0\x05hello".to_vec()));
            for block in decoded(&out) {
                assert_eq!(block, request("localhost"), "{authority}");
            }
        }
    }

    #[test]
    fn an_absent_authority_stays_absent() {
        let mut headers = request("x");
        headers.retain(|(n, _)| n != ":authority");
        let block = encode(&mut IndexingEncoder::default(), &headers);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        let out = frames(&rewrite_in_pieces(&input, 5));
        assert_eq!(out[0].1, END_HEADERS | END_STREAM);
        assert_eq!(decoded(&out), vec![headers]);
    }

    #[test]
    fn padding_priority_and_continuations_are_read_and_large_blocks_are_split() {
        let mut headers = request("/run/x.sock");
        headers.push(("x-large".into(), "a".repeat(20_000)));
        let mut encoder = IndexingEncoder::default();
        let fields: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let block = encoder.encode(&fields, false);
        let (a, b) = block.split_at(100);
        let mut first = vec![3]; // pad length
        first.extend([0, 0, 0, 0, 15]); // priority: no dependency, weight 16
        first.extend(a);
        first.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY, 5, &first));
        let (b, c) = b.split_at(10_000);
        input.extend(frame(CONTINUATION, 0, 5, b));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, c));
        let out = frames(&rewrite_in_pieces(&input, 1000));
        let kinds: Vec<_> = out.iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(
            kinds,
            [(HEADERS, PRIORITY, 5), (CONTINUATION, END_HEADERS, 5)],
            "padding dropped, priority kept, split at the frame size"
        );
        assert_eq!(out[0].3[..PRIORITY_LEN], [0, 0, 0, 0, 15]);
        assert!(out.iter().all(|f| f.3.len() <= MAX_FRAME_SIZE));
        headers[3].1 = "localhost".into();
        assert_eq!(decoded(&out), vec![headers]);
    }

    #[test]
    fn broken_streams_are_refused_not_passed_on() {
        let feed = |frames: &[Vec<u8>]| {
            let mut input = PREFACE.to_vec();
            frames.iter().for_each(|f| input.extend(f));
            FrameRewriter::new(Some(b"localhost".to_vec())).feed(&input, &mut Vec::new())
        };
        // An index the tables do not hold.
        assert!(matches!(
            feed(&[frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f])]),
            Err(RewriteError::Hpack(_))
        ));
        // A DATA frame where the block's CONTINUATION belongs.
        assert!(matches!(
            feed(&[frame(HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, b"x")]),
            Err(RewriteError::InterleavedFrame(0))
        ));
        // More padding than payload.
        assert!(matches!(
            feed(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82])]),
            Err(RewriteError::BadPadding)
        ));
        assert!(matches!(
            feed(&[frame(HEADERS, END_HEADERS, 1, &vec![0; MAX_FRAME_SIZE + 1])]),
            Err(RewriteError::FrameTooLarge(_))
        ));
        // A table larger than the receiver allows.
        assert!(matches!(
            feed(&[frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x3f, 0x82])]),
            Err(RewriteError::Hpack(_))
        ));
    }

    #[test]
    fn a_stream_that_is_not_http2_passes_through_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: /run/x.sock\r\n\r\n";
        assert_eq!(rewrite_in_pieces(input, 3), input);
    }
}
