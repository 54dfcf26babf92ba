//! The GDB remote protocol's framing: `$data#cs` packets, acknowledgements, the interrupt byte,
//! and the hexadecimal encodings inside packets. Pure functions, no I/O.
//!
//! gdb sends `$` + data + `#` + two hex digits of the data's byte sum. Inside data, `}` escapes
//! the next byte (XOR 0x20) and `X*c` repeats X (c − 29) more times. Outside a packet, `+`
//! acknowledges, `-` asks again, and the byte 0x03 is gdb's Ctrl-C.

/// The largest packet we accept and announce (`PacketSize`, in hex in `qSupported`).
pub const PACKET_SIZE: usize = 0x4000;

/// What the byte stream from gdb decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A packet with a good checksum: its data, unescaped and run-length decoded.
    Packet(Vec<u8>),
    /// A packet whose checksum was wrong (or that was too long): answer `-`.
    BadChecksum,
    /// The interrupt byte 0x03 outside a packet (gdb's Ctrl-C).
    Interrupt,
    /// `+`: gdb got our last packet.
    Ack,
    /// `-`: gdb wants our last packet again.
    Nack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// Between packets: everything but `$`, `+`, `-` and 0x03 is skipped.
    Idle,
    Data,
    /// After `*`: the next byte is a repeat count.
    Repeat,
    /// After `#`: the first, then the second checksum digit.
    Sum1,
    Sum2(u8),
}

/// Turns the bytes gdb sends into [`Input`]s, one byte at a time. Never panics: garbage is
/// skipped, a bad checksum or an oversized packet becomes [`Input::BadChecksum`].
#[derive(Debug)]
pub struct Decoder {
    state: DecodeState,
    data: Vec<u8>,
    sum: u8,
    escape: bool,
    too_long: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: DecodeState::Idle, data: Vec::new(), sum: 0, escape: false, too_long: false }
    }
}

impl Decoder {
    /// Takes the next byte from gdb: what it completes, if anything.
    pub fn push(&mut self, b: u8) -> Option<Input> {
        match self.state {
            DecodeState::Idle => return self.idle(b),
            DecodeState::Data => self.data_byte(b),
            DecodeState::Repeat => self.repeat(b),
            DecodeState::Sum1 => match hex_digit(b) {
                Some(hi) => self.state = DecodeState::Sum2(hi),
                None => return self.bad(),
            },
            DecodeState::Sum2(hi) => {
                let Some(lo) = hex_digit(b) else { return self.bad() };
                self.state = DecodeState::Idle;
                if self.too_long || hi << 4 | lo != self.sum {
                    self.data.clear();
                    return Some(Input::BadChecksum);
                }
                return Some(Input::Packet(std::mem::take(&mut self.data)));
            }
        }
        None
    }

    fn idle(&mut self, b: u8) -> Option<Input> {
        match b {
            b'$' => self.start(),
            b'+' => return Some(Input::Ack),
            b'-' => return Some(Input::Nack),
            0x03 => return Some(Input::Interrupt),
            _ => {}
        }
        None
    }

    fn data_byte(&mut self, b: u8) {
        match b {
            b'#' => self.state = DecodeState::Sum1,
            // A new start: gdb gave up on the packet we were reading.
            b'$' => self.start(),
            _ => {
                self.sum = self.sum.wrapping_add(b);
                if self.escape {
                    self.escape = false;
                    self.put(b ^ 0x20);
                } else if b == b'}' {
                    self.escape = true;
                } else if b == b'*' {
                    self.state = DecodeState::Repeat;
                } else {
                    self.put(b);
                }
            }
        }
    }

    /// `X*c`: X once more for each of (c − 29).
    fn repeat(&mut self, b: u8) {
        self.sum = self.sum.wrapping_add(b);
        self.state = DecodeState::Data;
        match self.data.last() {
            Some(&last) if b >= 29 => {
                for _ in 0..(b - 29) {
                    self.put(last);
                }
            }
            _ => self.too_long = true, // malformed: reject the packet
        }
    }

    fn start(&mut self) {
        self.state = DecodeState::Data;
        self.data.clear();
        self.sum = 0;
        self.escape = false;
        self.too_long = false;
    }

    fn put(&mut self, b: u8) {
        if self.data.len() < PACKET_SIZE {
            self.data.push(b);
        } else {
            self.too_long = true;
        }
    }

    fn bad(&mut self) -> Option<Input> {
        self.state = DecodeState::Idle;
        self.data.clear();
        Some(Input::BadChecksum)
    }
}

/// A packet's checksum: the sum of its data bytes, modulo 256.
pub fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |s, &b| s.wrapping_add(b))
}

/// `$data#cs`, with `$ # } *` escaped as `}` + (byte ^ 0x20).
pub fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 4);
    out.push(b'$');
    for &b in data {
        if matches!(b, b'$' | b'#' | b'}' | b'*') {
            out.extend_from_slice(&[b'}', b ^ 0x20]);
        } else {
            out.push(b);
        }
    }
    let sum = checksum(&out[1..]);
    out.push(b'#');
    out.extend_from_slice(&to_hex(&[sum]));
    out
}

/// The text of a `monitor` answer as `O` packets (console output, hex-encoded), each well
/// inside [`PACKET_SIZE`].
pub fn console_packets(text: &str) -> Vec<Vec<u8>> {
    const CHUNK: usize = 1024;
    text.as_bytes()
        .chunks(CHUNK)
        .map(|chunk| {
            let mut p = b"O".to_vec();
            p.extend_from_slice(&to_hex(chunk));
            p
        })
        .collect()
}

/// The value of one hexadecimal digit (either case).
pub fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Two lowercase hexadecimal digits per byte.
pub fn to_hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|&b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]).collect()
}

/// The bytes of pairs of hexadecimal digits; `None` for an odd count or a non-digit.
pub fn from_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2).map(|p| Some(hex_digit(p[0])? << 4 | hex_digit(p[1])?)).collect()
}

/// A hexadecimal number as gdb writes addresses and lengths (at most 16 digits).
pub fn parse_hex(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    text.iter().try_fold(0u64, |v, &b| Some(v << 4 | u64::from(hex_digit(b)?)))
}

/// `ADDR,LEN` (as in `m`, `Z`), each hexadecimal.
pub fn parse_addr_len(text: &[u8]) -> Option<(u64, u64)> {
    let (addr, len) = split(text, b',')?;
    Some((parse_hex(addr)?, parse_hex(len)?))
}

/// Splits `head:tail` at the first `sep`.
pub fn split(text: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = text.iter().position(|&b| b == sep)?;
    Some((&text[..at], &text[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Vec<Input> {
        let mut d = Decoder::default();
        bytes.iter().filter_map(|&b| d.push(b)).collect()
    }

    #[test]
    fn framing_checksums_and_acks() {
        assert_eq!(frame(b"OK"), b"$OK#9a");
        assert_eq!(checksum(b"qSupported"), 0x37);
        assert_eq!(decode(b"$g#67"), vec![Input::Packet(b"g".to_vec())]);
        assert_eq!(decode(b"$g#68"), vec![Input::BadChecksum]);
        assert_eq!(decode(b"$g#6"), vec![]);
        assert_eq!(decode(b"$g#zz"), vec![Input::BadChecksum]);
        assert_eq!(decode(b"+-\x03"), vec![Input::Ack, Input::Nack, Input::Interrupt]);
        // Bytes before `$` are skipped; a `$` inside a packet starts it again.
        assert_eq!(decode(b"garbage\xff\x00$OK#9a"), vec![Input::Packet(b"OK".to_vec())]);
        assert_eq!(decode(b"$abc$OK#9a"), vec![Input::Packet(b"OK".to_vec())]);
        // 0x03 inside a packet is data, not an interrupt.
        let p = [b'$', b'X', 3, b'#'];
        let sum = format!("{:02x}", checksum(&[b'X', 3]));
        let all: Vec<u8> = p.iter().copied().chain(sum.bytes()).collect();
        assert_eq!(decode(&all), vec![Input::Packet(vec![b'X', 3])]);
    }

    #[test]
    fn escaping_and_run_length_round_trip() {
        let data = b"a$b#c}d*e".to_vec();
        let framed = frame(&data);
        assert!(!framed[1..framed.len() - 3].iter().any(|&b| b == b'$' || b == b'#'));
        assert_eq!(decode(&framed), vec![Input::Packet(data)]);
        // "0* " = '0' and 32 - 29 = 3 more.
        let body = b"0* ";
        let mut pkt = b"$".to_vec();
        pkt.extend_from_slice(body);
        pkt.extend_from_slice(format!("#{:02x}", checksum(body)).as_bytes());
        assert_eq!(decode(&pkt), vec![Input::Packet(b"0000".to_vec())]);
        // A repeat with nothing to repeat is refused, not a panic.
        assert_eq!(decode(format!("$* #{:02x}", checksum(b"* ")).as_bytes()), vec![Input::BadChecksum]);
    }

    #[test]
    fn garbage_never_panics_and_long_packets_are_refused() {
        let mut d = Decoder::default();
        let mut x: u32 = 12345;
        for _ in 0..200_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let _ = d.push((x >> 16) as u8);
        }
        let mut long = vec![b'$'];
        long.extend(std::iter::repeat_n(b'a', 1 << 20));
        long.extend_from_slice(b"#00");
        assert!(decode(&long) == [Input::BadChecksum], "a 1 MiB packet");
        // Run-length expansion cannot grow a packet past the limit either.
        let mut rle = b"$a".to_vec();
        for _ in 0..PACKET_SIZE / 90 {
            rle.extend_from_slice(b"*~a");
        }
        let sum = checksum(&rle[1..]);
        rle.extend_from_slice(format!("#{sum:02x}").as_bytes());
        assert!(decode(&rle) == [Input::BadChecksum], "16 KiB and more after run-length expansion");
    }

    #[test]
    fn console_output_is_hex_in_o_packets() {
        assert_eq!(console_packets("hi\n"), vec![b"O68690a".to_vec()]);
        let long = "x".repeat(2500);
        let packets = console_packets(&long);
        assert_eq!(packets.len(), 3);
        assert!(packets.iter().all(|p| p.len() <= PACKET_SIZE && p[0] == b'O'));
        assert!(console_packets("").is_empty());
    }

    #[test]
    fn hex_numbers_and_fields() {
        assert_eq!(parse_hex(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_hex(b"10000000000000000"), None, "17 digits");
        assert_eq!(parse_hex(b""), None);
        assert_eq!(parse_hex(b"-1"), None);
        assert_eq!(parse_addr_len(b"1000,20"), Some((0x1000, 0x20)));
        assert_eq!(parse_addr_len(b"1000"), None);
        assert_eq!(from_hex(b"0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(from_hex(b"0"), None);
        assert_eq!(to_hex(&[0, 0xab]), b"00ab");
        assert_eq!(split(b"a:b:c", b':'), Some((&b"a"[..], &b"b:c"[..])));
    }
}
