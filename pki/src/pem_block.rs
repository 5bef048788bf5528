//! The first PEM block of a text, read the way the `pem` crate reads it but in one pass. Every
//! `CreateCertificate` carries its CSR as PEM, and the general parser searched its markers a
//! byte at a time, scanned the body twice for RFC 1421 headers and copied it as `char`s before
//! decoding: ~30,000 instructions per call (callgrind), 1.9 % of a whole issuance's; this
//! takes ~6,000. Files (`cacerts`, keys, bundles) are read once and keep the `pem` crate.

use base64::Engine;

const BEGIN: &str = "-----BEGIN ";
const END: &str = "-----END ";
const DASHES: &str = "-----";

/// A block's label (`CERTIFICATE REQUEST` for `-----BEGIN CERTIFICATE REQUEST-----`) and its
/// decoded contents.
#[derive(Debug, PartialEq, Eq)]
pub struct PemBlock<'a> {
    pub label: &'a str,
    pub contents: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PemError {
    #[error("no \"-----BEGIN ...-----\" line")]
    NoBegin,
    #[error("no \"-----END {0}-----\" line after its BEGIN line")]
    NoEnd(String),
    #[error("the body is not base64: {0}")]
    NotBase64(String),
}

/// The first `-----BEGIN label-----` … `-----END label-----` block, text before and after it
/// ignored, its body's ASCII whitespace (any line length, LF or CRLF, blank lines) dropped
/// before base64 decoding with padding, as Go's `encoding/pem` reads a block without headers.
/// Where the `pem` crate reads a block from the same BEGIN line, this reads the same one (that
/// crate's marker search misses a BEGIN line after a sixth dash). It differs in refusing RFC 1421
/// headers (`Proc-Type: …`) and non-ASCII whitespace, which no CSR has, and in reading a body
/// with a blank line, which the `pem` crate takes for the end of (invalid) headers.
pub fn first(text: &str) -> Result<PemBlock<'_>, PemError> {
    let after_begin = &text[text.find(BEGIN).ok_or(PemError::NoBegin)? + BEGIN.len()..];
    let label_len = after_begin.find(DASHES).ok_or(PemError::NoBegin)?;
    let label = &after_begin[..label_len];
    let body_and_end = &after_begin[label_len + DASHES.len()..];
    let no_end = || PemError::NoEnd(label.to_string());
    let body_len = body_and_end.find(END).ok_or_else(no_end)?;
    let end_label = &body_and_end[body_len + END.len()..];
    if !end_label
        .strip_prefix(label)
        .is_some_and(|rest| rest.starts_with(DASHES))
    {
        return Err(no_end());
    }
    let body: Vec<u8> = body_and_end[..body_len]
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let contents = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .map_err(|e| PemError::NotBase64(e.to_string()))?;
    Ok(PemBlock { label, contents })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the `pem` crate makes of `text`, as a `PemBlock` would hold it.
    fn pem_crate(text: &str) -> Option<(String, Vec<u8>)> {
        pem::parse(text)
            .ok()
            .map(|p| (p.tag().to_string(), p.contents().to_vec()))
    }

    fn ours(text: &str) -> Option<(String, Vec<u8>)> {
        first(text).ok().map(|b| (b.label.to_string(), b.contents))
    }

    /// 300 bytes, so the body runs over several lines (Go's `pem.Encode` wraps at 64 columns).
    fn sample() -> Vec<u8> {
        (0..300u16).map(|i| (i * 7 % 256) as u8).collect()
    }

    /// `sample()` as Go's `pem.Encode` writes it: LF line ends, 64 columns.
    fn sample_pem() -> String {
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE REQUEST", sample()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    #[test]
    fn reads_what_go_and_openssl_write() {
        let contents = sample();
        let lf = sample_pem();
        let crlf = lf.replace('\n', "\r\n");
        let one_line = format!(
            "-----BEGIN NEW CERTIFICATE REQUEST-----{}-----END NEW CERTIFICATE REQUEST-----",
            base64::engine::general_purpose::STANDARD.encode(&contents)
        );
        let with_text_around = format!("subject=/CN=web\n{lf}\ntrailing words\n");
        let two_blocks = format!("{lf}{}", lf.replace("CERTIFICATE REQUEST", "OTHER"));
        for text in [&lf, &crlf, &one_line, &with_text_around, &two_blocks] {
            let block = first(text).unwrap();
            assert!(block.label.ends_with("CERTIFICATE REQUEST"), "{text}");
            assert_eq!(block.contents, contents, "{text}");
            assert_eq!(ours(text), pem_crate(text), "{text}");
        }
    }

    #[test]
    fn a_broken_block_is_refused_with_what_is_wrong() {
        let good = sample_pem();
        assert!(first(&good).is_ok(), "the control parses");
        let cases = [
            (String::new(), PemError::NoBegin),
            (
                "MIIBIjANBgkqhkiG9w0BAQEFAAOC".to_string(),
                PemError::NoBegin,
            ),
            (
                good.replace("-----END CERTIFICATE REQUEST-----", ""),
                PemError::NoEnd("CERTIFICATE REQUEST".into()),
            ),
            (
                good.replace("END CERTIFICATE REQUEST", "END CERTIFICATE"),
                PemError::NoEnd("CERTIFICATE REQUEST".into()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(first(&text), Err(expected), "{text:?}");
            assert_eq!(pem_crate(&text), None, "the pem crate refuses {text:?} too");
        }
        let not_base64 = good.replacen("-----\n", "-----\n!", 1);
        assert!(matches!(first(&not_base64), Err(PemError::NotBase64(_))));
        assert_eq!(pem_crate(&not_base64), None);
        // Where it parts from the pem crate: RFC 1421 headers refused, a blank line read.
        let with_headers = good.replacen('\n', "\nProc-Type: 4,ENCRYPTED\n\n", 1);
        assert!(pem_crate(&with_headers).is_some());
        assert!(matches!(first(&with_headers), Err(PemError::NotBase64(_))));
        let blank_line = good.replacen('\n', "\n\n", 2);
        assert_eq!(pem_crate(&blank_line), None);
        assert_eq!(first(&blank_line).unwrap().contents, sample());
    }

    /// Every byte of a block changed three ways, and the block cut at every length: whatever
    /// this reads, the `pem` crate reads the same way (none of these makes a blank line).
    #[test]
    fn never_reads_a_block_otherwise_than_the_pem_crate() {
        let good = sample_pem();
        let bytes = good.as_bytes();
        let mut variants: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
        variants.extend(crate::test_support::every_byte_changed(
            bytes,
            &[0x01, 0x20, 0x7f],
        ));
        let mut accepted = 0;
        for variant in variants {
            let Ok(text) = std::str::from_utf8(&variant) else {
                continue;
            };
            if let Some(block) = ours(text) {
                accepted += 1;
                assert_eq!(Some(block), pem_crate(text), "{text:?}");
            }
        }
        assert!(accepted > 10, "some variants still read ({accepted})");
    }
}
