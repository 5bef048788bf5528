//! HPACK (RFC 7541) as the `:authority` rewrite needs it: a decoder that keeps the sender's
//! dynamic table, and never-indexed literals for what it passes on. Huffman strings are decoded
//! by `httlib-huffman`'s table-driven decoder; the rest is small enough to own, and owning it
//! keeps a connection's first request cheap (the general-purpose HPACK crates rebuild a Huffman
//! map per string).

use std::borrow::Cow;
use std::collections::VecDeque;

/// RFC 7541 §4.1: an entry's size is its name, its value and 32 bytes of overhead.
const ENTRY_OVERHEAD: usize = 32;
/// HPACK "literal header field never indexed, new name" (§6.2.3).
const LITERAL_NEVER_INDEXED: u8 = 0x10;
/// Integers above this are refused: no table size, index or string length here comes close.
const MAX_INTEGER: usize = 1 << 24;

/// RFC 7541 Appendix A, indexes 1 to 61.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// A decoded literal's name and value (borrowed from the block unless Huffman-coded or
/// indexed), and the rest of the block.
type Literal<'b> = (Cow<'b, [u8]>, Cow<'b, [u8]>, &'b [u8]);

/// Why a header block does not decode (a COMPRESSION_ERROR in HTTP/2 terms).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    IntegerTooLarge,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("Huffman string does not decode")]
    Huffman,
    #[error("dynamic table size {0} above the {1} allowed")]
    TableTooLarge(usize, usize),
    #[error("dynamic table size update after a header field")]
    LateSizeUpdate,
}

/// The decoding side of one connection's header compression.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first, as HPACK indexes it (62 is the newest).
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE of the receiver: the most the sender may set `max_size` to.
    limit: usize,
}

// === impl Decoder ===

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// Decodes one complete header block, calling `field` with each name and value in order.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut fields_seen = false;
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let (index, rest) = integer(block, 7)?;
                block = rest;
                let (name, value) = self.get(index)?;
                field(name, value);
            } else if first & 0xc0 == 0x40 {
                let (name, value, rest) = self.literal(block, 6)?;
                block = rest;
                field(&name, &value);
                self.insert(name.into_owned(), value.into_owned());
            } else if first & 0xe0 == 0x20 {
                // §4.2: only at the start of a block.
                if fields_seen {
                    return Err(HpackError::LateSizeUpdate);
                }
                let (size, rest) = integer(block, 5)?;
                block = rest;
                if size > self.limit {
                    return Err(HpackError::TableTooLarge(size, self.limit));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Without indexing (0000) and never indexed (0001): a 4-bit prefix.
                let (name, value, rest) = self.literal(block, 4)?;
                block = rest;
                field(&name, &value);
            }
            fields_seen = true;
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => index
                .checked_sub(62)
                .and_then(|i| self.entries.get(i))
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    /// A literal field: a name (indexed, or a string when the index is 0), then a value.
    fn literal<'b>(&self, block: &'b [u8], prefix: u8) -> Result<Literal<'b>, HpackError> {
        let (index, rest) = integer(block, prefix)?;
        let (name, rest) = match index {
            0 => string(rest)?,
            index => (Cow::Owned(self.get(index)?.0.to_vec()), rest),
        };
        let (value, rest) = string(rest)?;
        Ok((name, value, rest))
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        // §4.4: an entry larger than the table empties it and is not added.
        if size > self.max_size {
            self.evict(self.max_size);
            return;
        }
        self.evict(size);
        self.size += size;
        self.entries.push_front((name, value));
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

/// §5.1: an integer with an N-bit prefix.
fn integer(block: &[u8], prefix: u8) -> Result<(usize, &[u8]), HpackError> {
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let mask = (1u8 << prefix) - 1;
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok((value, rest));
    }
    let mut shift = 0;
    loop {
        let (&byte, tail) = rest.split_first().ok_or(HpackError::Truncated)?;
        rest = tail;
        if shift > 21 {
            return Err(HpackError::IntegerTooLarge);
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if value > MAX_INTEGER {
            return Err(HpackError::IntegerTooLarge);
        }
        if byte & 0x80 == 0 {
            return Ok((value, rest));
        }
    }
}

/// §5.2: a string literal, Huffman-coded when its first bit says so.
fn string(block: &[u8]) -> Result<(Cow<'_, [u8]>, &[u8]), HpackError> {
    let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (len, rest) = integer(block, 7)?;
    if len > rest.len() {
        return Err(HpackError::Truncated);
    }
    let (bytes, rest) = rest.split_at(len);
    if !huffman {
        return Ok((Cow::Borrowed(bytes), rest));
    }
    // The shortest code is 5 bits.
    let mut decoded = Vec::with_capacity(len * 8 / 5 + 1);
    httlib_huffman::decode(bytes, &mut decoded, httlib_huffman::DecoderSpeed::FiveBits)
        .map_err(|_| HpackError::Huffman)?;
    Ok((Cow::Owned(decoded), rest))
}

/// Appends a never-indexed literal with a literal name and no Huffman coding: it changes no
/// table, so the receiver's stays empty.
pub fn put_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(LITERAL_NEVER_INDEXED);
    put_string(out, name);
    put_string(out, value);
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_integer(out, bytes.len(), 7, 0);
    out.extend_from_slice(bytes);
}

/// §5.1, the other way: `value` in an N-bit prefix after the representation's `first` bits.
pub fn put_integer(out: &mut Vec<u8>, mut value: usize, prefix: u8, first: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(first | value as u8);
        return;
    }
    out.push(first | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An encoder that indexes every field it has not sent before, as grpc-core's and h2's
    /// do, so blocks after the first refer to the dynamic table.
    #[derive(Default)]
    pub struct IndexingEncoder {
        sent: Vec<(Vec<u8>, Vec<u8>)>,
    }

    impl IndexingEncoder {
        pub fn encode(&mut self, fields: &[(&str, &str)], huffman: bool) -> Vec<u8> {
            let mut out = Vec::new();
            for &(name, value) in fields {
                let field = (name.as_bytes().to_vec(), value.as_bytes().to_vec());
                if let Some(age) = self.sent.iter().rev().position(|f| *f == field) {
                    put_integer(&mut out, 62 + age, 7, 0x80);
                    continue;
                }
                out.push(0x40);
                for s in [name, value] {
                    if huffman {
                        let mut coded = Vec::new();
                        httlib_huffman::encode(s.as_bytes(), &mut coded).unwrap();
                        put_integer(&mut out, coded.len(), 7, 0x80);
                        out.extend(coded);
                    } else {
                        put_string(&mut out, s.as_bytes());
                    }
                }
                self.sent.push(field);
            }
            out
        }
    }

    fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut fields = Vec::new();
        decoder.decode(block, |n, v| {
            fields.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })?;
        Ok(fields)
    }

    fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// RFC 7541 Appendix C.3 and C.4: three requests on one connection, without and with
    /// Huffman coding; the later ones index the earlier ones' entries.
    #[test]
    fn decodes_the_rfc_examples() {
        let requests = [
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]),
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ]),
            owned(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ]),
        ];
        let plain = [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ];
        let huffman = [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ];
        for blocks in [plain, huffman] {
            let mut decoder = Decoder::new(4096);
            for (block, expected) in blocks.iter().zip(&requests) {
                assert_eq!(&decode(&mut decoder, &hex(block)).unwrap(), expected);
            }
            assert_eq!(decoder.size, 164, "C.3.3 / C.4.3 table size");
        }
    }

    #[test]
    fn the_static_table_is_rfc_7541s() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(decoder.get(1).unwrap(), (&b":authority"[..], &b""[..]));
        assert_eq!(decoder.get(16).unwrap().1, b"gzip, deflate");
        assert_eq!(decoder.get(31).unwrap().0, b"content-type");
        assert_eq!(decoder.get(58).unwrap().0, b"user-agent");
        assert_eq!(decoder.get(61).unwrap().0, b"www-authenticate");
        assert_eq!(decoder.get(62), Err(HpackError::BadIndex(62)));
        assert_eq!(decoder.get(0), Err(HpackError::BadIndex(0)));
        assert_eq!(decode(&mut decoder, &[0xc0]), Err(HpackError::BadIndex(64)));
    }

    #[test]
    fn entries_are_evicted_oldest_first_and_size_updates_are_bounded() {
        let mut encoder = IndexingEncoder::default();
        let mut decoder = Decoder::new(100);
        // Each entry is 1 + 30 + 32 = 63 bytes: one fits in 100, the second evicts the first.
        let a = [("a", &*"x".repeat(30))];
        let b = [("b", &*"y".repeat(30))];
        decode(&mut decoder, &encoder.encode(&a, false)).unwrap();
        decode(&mut decoder, &encoder.encode(&b, false)).unwrap();
        assert_eq!(decoder.entries.len(), 1);
        assert_eq!(decoder.get(62).unwrap().0, b"b");
        // A size update to 0 empties the table; one above the limit is refused.
        assert_eq!(decode(&mut decoder, &[0x20]).unwrap(), vec![]);
        assert_eq!((decoder.entries.len(), decoder.size), (0, 0));
        assert_eq!(
            decode(&mut decoder, &[0x3f, 0x46]),
            Err(HpackError::TableTooLarge(101, 100))
        );
        assert_eq!(
            decode(&mut decoder, &[0x82, 0x20]),
            Err(HpackError::LateSizeUpdate)
        );
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut decoder = Decoder::new(4096);
        for (block, error) in [
            (&[0x40, 0x05, b'a'][..], HpackError::Truncated),
            (&[0xff][..], HpackError::Truncated),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
                HpackError::IntegerTooLarge,
            ),
            // Continuation bytes that add nothing must still end.
            (
                &[
                    0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                ][..],
                HpackError::IntegerTooLarge,
            ),
            // A Huffman string of all ones is EOS padding longer than 7 bits.
            (&[0x00, 0x82, 0xff, 0xff, 0x00][..], HpackError::Huffman),
        ] {
            assert_eq!(decode(&mut decoder, block), Err(error), "{block:x?}");
        }
    }

    #[test]
    fn literals_round_trip_through_a_fresh_decoder() {
        let mut out = Vec::new();
        let long = "v".repeat(300);
        put_literal(&mut out, b":authority", b"localhost");
        put_literal(&mut out, b"x-long", long.as_bytes());
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode(&mut decoder, &out).unwrap(),
            owned(&[(":authority", "localhost"), ("x-long", &long)])
        );
        assert!(
            decoder.entries.is_empty(),
            "never-indexed literals add nothing"
        );
    }
}
