//! Package URLs kept compactly: a shape shared by every URL of one kind, and
//! per URL only the numbers and hex digits that differ.
//!
//! A COS presigned URL is ~300 characters, yet the URLs one gateway caches
//! differ in little: the ids (already in the cache key), a version, the
//! signing window and the signature. Keeping the text around those once per
//! shape takes an entry's URL from ~330 to ~50 bytes (BENCHMARKS.md), and an
//! answer is rendered back byte for byte as it was packed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

/// Most shapes remembered for sharing; URLs of further shapes are still
/// stored exactly, just unshared. Bounds the table whatever upstream sends.
const MAX_SHARED_SHAPES: usize = 1024;

/// A hex run shorter than this stays literal text: words such as `cafe` or
/// `bad` are hex too, and packing them would split shapes for nothing.
const MIN_HEX_DIGITS: usize = 16;

/// Longest decimal run packed as a number (19 digits always fit a `u64`).
const MAX_DECIMAL_DIGITS: usize = 19;

/// Values up to this size live inside the entry, without an allocation of
/// their own; the simulator's (and COS's) URLs need about 47.
const INLINE_VALUE_BYTES: usize = 56;

/// One piece of a shape, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Piece {
    /// The next this-many bytes of the shape's literal text.
    Literal(u16),
    /// A decimal number without leading zeros; a LEB128 varint in the values.
    Decimal,
    /// This many bytes written as lowercase hex; raw bytes in the values.
    Hex(u8),
    /// The cache key's `PlatformId`.
    PlatformId,
    /// The cache key's `MNPId`.
    MnpId,
}

/// The text of a URL with its variable parts left out.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Shape {
    text: Box<[u8]>,
    pieces: Box<[Piece]>,
}

/// A URL (as its JSON string content, escapes included):
/// its shape and its own values. Rendering needs the key's ids back.
#[derive(Clone, Debug)]
pub struct PackedUrl {
    shape: Arc<Shape>,
    values: SmallVec<[u8; INLINE_VALUE_BYTES]>,
}

/// The ids a URL is packed against (those of its cache key).
#[derive(Clone, Copy, Debug)]
pub struct KeyIds<'a> {
    /// `PlatformId`.
    pub platform_id: &'a str,
    /// `MNPId`.
    pub mnp_id: &'a str,
}

/// The shapes seen so far, shared between the URLs that have them.
#[derive(Debug, Default)]
pub struct UrlShapes {
    known: Mutex<HashSet<Arc<Shape>>>,
}

impl UrlShapes {
    /// Packs `json` (the URL's JSON string content, without quotes), taking
    /// the text that `ids` spell out of it.
    pub fn pack(&self, json: &[u8], ids: KeyIds<'_>) -> PackedUrl {
        let mut text = Vec::new();
        let mut pieces = Vec::new();
        let mut values = SmallVec::new();
        let mut literal_from = 0;
        let mut i = 0;
        // Longer id first, so that one id containing the other is taken whole.
        let (first, second) = if ids.platform_id.len() >= ids.mnp_id.len() {
            (
                (ids.platform_id, Piece::PlatformId),
                (ids.mnp_id, Piece::MnpId),
            )
        } else {
            (
                (ids.mnp_id, Piece::MnpId),
                (ids.platform_id, Piece::PlatformId),
            )
        };
        while i < json.len() {
            let rest = &json[i..];
            let id = [first, second]
                .into_iter()
                .find(|(id, _)| !id.is_empty() && rest.starts_with(id.as_bytes()));
            if let Some((id, piece)) = id {
                push_literal(&mut text, &mut pieces, &json[literal_from..i]);
                pieces.push(piece);
                i += id.len();
                literal_from = i;
                continue;
            }
            let hex_run = rest
                .iter()
                .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
                .count();
            if hex_run >= MIN_HEX_DIGITS {
                push_literal(&mut text, &mut pieces, &json[literal_from..i]);
                let bytes = (hex_run / 2).min(usize::from(u8::MAX));
                for pair in rest[..bytes * 2].chunks_exact(2) {
                    values.push(hex_value(pair[0]) << 4 | hex_value(pair[1]));
                }
                pieces.push(Piece::Hex(bytes as u8));
                i += bytes * 2;
                literal_from = i;
                continue;
            }
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let packable =
                digits > 0 && digits <= MAX_DECIMAL_DIGITS && (digits == 1 || rest[0] != b'0');
            if packable {
                push_literal(&mut text, &mut pieces, &json[literal_from..i]);
                let number = rest[..digits]
                    .iter()
                    .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                push_varint(&mut values, number);
                pieces.push(Piece::Decimal);
                i += digits;
                literal_from = i;
                continue;
            }
            // A digit run that cannot be a number stays literal as a whole,
            // so that its tail is not taken for one.
            i += digits.max(1);
        }
        push_literal(&mut text, &mut pieces, &json[literal_from..]);
        let shape = self.intern(Shape {
            text: text.into_boxed_slice(),
            pieces: pieces.into_boxed_slice(),
        });
        values.shrink_to_fit();
        PackedUrl { shape, values }
    }

    /// Number of shapes shared at the moment.
    pub fn shared_shapes(&self) -> usize {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn intern(&self, shape: Shape) -> Arc<Shape> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = known.get(&shape) {
            return Arc::clone(found);
        }
        if known.len() >= MAX_SHARED_SHAPES {
            // Forget the shapes no cached URL uses any more.
            known.retain(|s| Arc::strong_count(s) > 1);
        }
        let shape = Arc::new(shape);
        if known.len() < MAX_SHARED_SHAPES {
            known.insert(Arc::clone(&shape));
        }
        shape
    }
}

impl PackedUrl {
    /// Appends the URL's JSON string content, byte for byte as it was packed.
    pub fn write_json(&self, ids: KeyIds<'_>, out: &mut Vec<u8>) {
        let mut text = &self.shape.text[..];
        let mut values = &self.values[..];
        for piece in self.shape.pieces.iter() {
            match *piece {
                Piece::Literal(len) => {
                    let (head, tail) = text.split_at(usize::from(len));
                    out.extend_from_slice(head);
                    text = tail;
                }
                Piece::Decimal => {
                    let (number, rest) = read_varint(values);
                    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
                    values = rest;
                }
                Piece::Hex(len) => {
                    let (bytes, rest) = values.split_at(usize::from(len).min(values.len()));
                    for b in bytes {
                        out.push(HEX_DIGITS[usize::from(b >> 4)]);
                        out.push(HEX_DIGITS[usize::from(b & 0x0f)]);
                    }
                    values = rest;
                }
                Piece::PlatformId => out.extend_from_slice(ids.platform_id.as_bytes()),
                Piece::MnpId => out.extend_from_slice(ids.mnp_id.as_bytes()),
            }
        }
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

fn push_literal(text: &mut Vec<u8>, pieces: &mut Vec<Piece>, literal: &[u8]) {
    for chunk in literal.chunks(usize::from(u16::MAX)) {
        text.extend_from_slice(chunk);
        pieces.push(Piece::Literal(chunk.len() as u16));
    }
}

fn push_varint(values: &mut SmallVec<[u8; INLINE_VALUE_BYTES]>, mut n: u64) {
    while n >= 0x80 {
        values.push((n as u8) | 0x80);
        n >>= 7;
    }
    values.push(n as u8);
}

fn read_varint(values: &[u8]) -> (u64, &[u8]) {
    let mut n = 0u64;
    for (i, b) in values.iter().enumerate() {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (n, &values[i + 1..]);
        }
    }
    (n, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: KeyIds<'static> = KeyIds {
        platform_id: "T04257DS9431720WTAG",
        mnp_id: "mpjl3td541qppx9k",
    };

    fn cos_url(mnp_id: &str, start: u64, signature: &str) -> String {
        format!(
            "https://tcsas-pkg-1250000000.cos.ap-singapore.myqcloud.com/T04257DS9431720WTAG/mnp/{mnp_id}/v3.zip?q-sign-algorithm=sha1&q-ak=AKIDsimulatedCOS&q-sign-time={start};{end}&q-key-time={start};{end}&q-header-list=host&q-url-param-list=&q-signature={signature}",
            end = start + 600
        )
    }

    fn round_trip(shapes: &UrlShapes, json: &str, ids: KeyIds<'_>) -> PackedUrl {
        let packed = shapes.pack(json.as_bytes(), ids);
        let mut out = Vec::new();
        packed.write_json(ids, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), json);
        packed
    }

    #[test]
    fn a_cos_url_keeps_only_its_numbers_and_signature() {
        let shapes = UrlShapes::default();
        let url = cos_url(
            IDS.mnp_id,
            1_796_320_922,
            "dbb8fae31122456749d3dbb8fae31122456749d3",
        );
        let packed = round_trip(&shapes, &url, IDS);
        assert!(
            !packed.values.spilled(),
            "{} value bytes",
            packed.values.len()
        );
        assert!(
            packed.values.len() < 50,
            "{} value bytes",
            packed.values.len()
        );
    }

    #[test]
    fn urls_of_one_kind_share_one_shape() {
        let shapes = UrlShapes::default();
        let ids = |mnp_id| KeyIds { mnp_id, ..IDS };
        let a = round_trip(
            &shapes,
            &cos_url("mp-a", 1_700_000_000, &"ab".repeat(20)),
            ids("mp-a"),
        );
        let b = round_trip(
            &shapes,
            &cos_url("mpzz7", 1_700_000_123, &"9f".repeat(20)),
            ids("mpzz7"),
        );
        assert!(Arc::ptr_eq(&a.shape, &b.shape));
        assert_eq!(shapes.shared_shapes(), 1);
    }

    #[test]
    fn odd_text_round_trips_exactly() {
        let shapes = UrlShapes::default();
        for json in [
            "",
            "0",
            "007",
            "18446744073709551615",
            "99999999999999999999999",
            r#"a\"b\\c\u0026d"#,
            "http127.0.0.1/T04257DS9431720WTAG/mpp/mpjl3td541qppx9k_1.0.321.apkg",
            "deadbeefdeadbeefdeadbeefdeadbee",
            "DEADBEEFDEADBEEFDEADBEEF",
            "mpjl3td541qppx9kmpjl3td541qppx9k",
        ] {
            round_trip(&shapes, json, IDS);
        }
        let long_hex = "0123456789abcdef".repeat(40);
        round_trip(&shapes, &long_hex, IDS);
        round_trip(&shapes, &"x".repeat(70_000), IDS);
    }

    #[test]
    fn shapes_beyond_the_bound_are_stored_unshared() {
        let shapes = UrlShapes::default();
        let kept: Vec<_> = (0..MAX_SHARED_SHAPES + 10)
            .map(|n| {
                round_trip(
                    &shapes,
                    &format!("https://host-{}/x", "q".repeat(n % 3000)),
                    IDS,
                )
            })
            .collect();
        assert!(shapes.shared_shapes() <= MAX_SHARED_SHAPES);
        drop(kept);
        round_trip(&shapes, "https://fresh/x", IDS);
        assert!(
            shapes.shared_shapes() <= 1,
            "unused shapes are forgotten when full"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_round_trips(
            json in r#"([a-f0-9]{0,40}|[0-9]{0,25}|[A-Za-z/:?&=;._\\"-]{0,8}|mpjl3td541qppx9k|T04257DS9431720WTAG){0,12}"#,
        ) {
            let shapes = UrlShapes::default();
            let packed = shapes.pack(json.as_bytes(), IDS);
            let mut out = Vec::new();
            packed.write_json(IDS, &mut out);
            proptest::prop_assert_eq!(out, json.as_bytes());
        }
    }
}
