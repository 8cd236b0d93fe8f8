//! Scan-bomb JPEGs, built by hand: a valid progressive grey JPEG whose every scan walks the
//! whole image. The pixels are flat grey, so each AC scan is a few end-of-band runs (a few bytes)
//! while a decoder still visits every block once per scan: a 6000x6000 image in 694 scans is
//! about 100 KB and costs a decoder without a scan limit seconds of CPU.
//!
//! Layout: one DC scan, then for each of the 63 AC coefficients its own band, first at
//! successive-approximation bit `refinements` and then refined bit by bit down to 0
//! (`1 + 63 x (1 + refinements)` scans; `refinements = 10` makes 694).

/// A `width x height` progressive grey JPEG of `1 + 63 * (1 + refinements)` scans
/// (`refinements` at most 13).
pub fn scan_bomb(width: u16, height: u16, refinements: u8) -> Vec<u8> {
    assert!(
        refinements <= 13,
        "successive approximation goes down from bit 13 at most"
    );
    let blocks = usize::from(width.div_ceil(8)) * usize::from(height.div_ceil(8));
    let mut jpeg = vec![0xff, 0xd8];
    // Quantization table 0: all ones.
    segment(&mut jpeg, 0xdb, &[&[0x00][..], &[1; 64]].concat());
    // SOF2: progressive, 8 bits, one component (id 1, 1x1 sampling, table 0).
    let [h1, h0] = height.to_be_bytes();
    let [w1, w0] = width.to_be_bytes();
    segment(&mut jpeg, 0xc2, &[8, h1, h0, w1, w0, 1, 1, 0x11, 0]);
    // DC table 0: one symbol (difference category 0) coded `0`.
    let mut dc = vec![0x00, 1];
    dc.extend_from_slice(&[0; 15]);
    dc.push(0x00);
    segment(&mut jpeg, 0xc4, &dc);
    // AC table 1: the end-of-band runs EOB0..EOB14, 4-bit codes 0000..1110.
    let mut ac = vec![0x11, 0, 0, 0, 15];
    ac.extend_from_slice(&[0; 12]);
    ac.extend((0..15u8).map(|r| r << 4));
    segment(&mut jpeg, 0xc4, &ac);
    // DC scan: every block's difference is 0.
    scan(&mut jpeg, 0x00, (0, 0), (0, 0));
    let mut bits = Bits::default();
    for _ in 0..blocks {
        bits.put(0, 1);
    }
    jpeg.extend_from_slice(&bits.finish());
    for k in 1..=63u8 {
        for bit in (0..=refinements).rev() {
            let ah = if bit == refinements { 0 } else { bit + 1 };
            scan(&mut jpeg, 0x01, (k, k), (ah, bit));
            jpeg.extend_from_slice(&end_of_band_runs(blocks));
        }
    }
    jpeg.extend_from_slice(&[0xff, 0xd9]);
    jpeg
}

fn segment(jpeg: &mut Vec<u8>, marker: u8, body: &[u8]) {
    let len = u16::try_from(body.len() + 2).expect("short segment");
    jpeg.extend_from_slice(&[0xff, marker]);
    jpeg.extend_from_slice(&len.to_be_bytes());
    jpeg.extend_from_slice(body);
}

/// A start-of-scan header for component 1 with `tables` (DC << 4 | AC), the spectral band
/// `(ss, se)` and successive approximation `(ah, al)`.
fn scan(jpeg: &mut Vec<u8>, tables: u8, (ss, se): (u8, u8), (ah, al): (u8, u8)) {
    segment(jpeg, 0xda, &[1, 1, tables, ss, se, (ah << 4) | al]);
}

/// Entropy-coded data saying "every one of `blocks` blocks ends here": runs of at most 32767.
fn end_of_band_runs(blocks: usize) -> Vec<u8> {
    let mut bits = Bits::default();
    let mut left = blocks;
    while left > 0 {
        let run = left.min(32_767);
        let r = usize::BITS - 1 - run.leading_zeros();
        bits.put(r, 4);
        bits.put((run - (1 << r)) as u32, r);
        left -= run;
    }
    bits.finish()
}

/// A JPEG entropy-coded bit writer: most significant bit first, `0xff` stuffed with `0x00`,
/// the last byte padded with ones.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        for i in (0..count).rev() {
            self.acc = (self.acc << 1) | ((value >> i) & 1);
            self.n += 1;
            if self.n == 8 {
                self.byte();
            }
        }
    }

    fn byte(&mut self) {
        let b = self.acc as u8;
        self.out.push(b);
        if b == 0xff {
            self.out.push(0);
        }
        self.acc = 0;
        self.n = 0;
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            let pad = 8 - self.n;
            self.put((1 << pad) - 1, pad);
        }
        self.out
    }
}
