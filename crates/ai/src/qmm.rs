//! Our own products of quantized weight matrices with f32 activations, in the block
//! formats our GGUF files store (Q8_0, Q5_0, Q4_1, Q5_1), read as stored.
//!
//! Generating a token reads every weight once, so generation runs at memory bandwidth:
//! Q5_0 is 0.69 bytes per weight, Q4_1 0.63, Q8_0 1.06. candle 0.11 has SIMD on x86 for
//! Q8_0 only among these, and widening the others to Q8_0 to use it (what we did before)
//! reads 1.5 times the bytes per token.
//!
//! The activations are quantized per 32 values as ggml quantizes them for these formats
//! (i8 values with an f16 scale, and for the formats with a minimum, the block's f16
//! scaled sum), so products agree with llama.cpp's on the same file up to the order of
//! float additions.
//!
//! `unsafe` here, and only here:
//! * SIMD loads and stores (AVX2: 16 and 32 bytes; AVX-512: 64) from and into slices
//!   whose lengths are `assert!`ed first;
//! * calls of `#[target_feature]` kernels, made only after the CPU has been seen to have
//!   the features (AVX2, FMA, F16C; for AVX-512 also F, BW and VNNI);
//! * `Rows`, one output buffer that the pool's workers fill in disjoint row ranges.
#![allow(unsafe_code)]

use candle_core::quantized::GgmlDType;

/// A block format we multiply ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// d (f16) | 32 x i8: value = d * q.
    Q8_0,
    /// d (f16) | high bits (u32) | 16 bytes of nibbles: value = d * (q - 16), q in 0..32.
    Q5_0,
    /// d (f16) | m (f16) | 16 bytes of nibbles: value = d * q + m, q in 0..16.
    Q4_1,
    /// d (f16) | m (f16) | high bits (u32) | 16 bytes of nibbles: value = d * q + m.
    Q5_1,
}

impl Format {
    /// The format of a GGUF tensor type, if it is one of ours.
    pub(crate) fn of(t: GgmlDType) -> Option<Format> {
        match t {
            GgmlDType::Q8_0 => Some(Format::Q8_0),
            GgmlDType::Q5_0 => Some(Format::Q5_0),
            GgmlDType::Q4_1 => Some(Format::Q4_1),
            GgmlDType::Q5_1 => Some(Format::Q5_1),
            _ => None,
        }
    }

    /// Bytes per block of 32 values.
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            Format::Q8_0 => 34,
            Format::Q5_0 => 22,
            Format::Q4_1 => 20,
            Format::Q5_1 => 24,
        }
    }

    fn has_min(self) -> bool {
        matches!(self, Format::Q4_1 | Format::Q5_1)
    }
}

/// Activation integers as the bytes the SIMD loads take.
fn q_bytes(q: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment.
    unsafe { std::slice::from_raw_parts(q.as_ptr().cast(), q.len()) }
}

fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_le_bytes([lo, hi]).to_f32()
}

/// One block's integers (weights as stored: signed for Q8_0, offset by 16 for Q5_0,
/// unsigned for Q4_1/Q5_1), its scale and its minimum.
fn unpack(format: Format, b: &[u8], q: &mut [i8; 32]) -> (f32, f32) {
    if format == Format::Q8_0 {
        for (o, v) in q.iter_mut().zip(&b[2..34]) {
            *o = *v as i8;
        }
        return (f16(b[0], b[1]), 0.0);
    }
    let (min, qh, qs, offset) = match format {
        Format::Q5_0 => (0.0, Some(&b[2..6]), &b[6..22], 16i8),
        Format::Q4_1 => (f16(b[2], b[3]), None, &b[4..20], 0),
        _ => (f16(b[2], b[3]), Some(&b[4..8]), &b[8..24], 0),
    };
    let qh = qh.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    for j in 0..16 {
        let lo = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        q[j] = lo as i8 - offset;
        q[j + 16] = hi as i8 - offset;
    }
    (f16(b[0], b[1]), min)
}

/// Activations quantized per block of 32: values, f16-rounded scales, and the blocks'
/// f16-rounded scaled sums (for formats with a minimum).
struct Acts {
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// Sums of each block's integers.
    isum: Vec<i32>,
}

/// Activations laid out for the AVX-512 kernels, which take two blocks (64 values) at a
/// time: per pair of blocks, the values offset to unsigned (`q + 128`), the two scales
/// each repeated over the eight lanes their block sums into, and the Q5_0 correction
/// (`-16 * sum` spread over those lanes); for the formats with a minimum, the two
/// blocks' scaled sums in lanes 1 and 3 of sixteen (where a weight pair's f16 header
/// `[d0, m0, d1, m1]` puts the minimums).
struct Pairs {
    qu: Vec<u8>,
    d: Vec<f32>,
    corr: Vec<i32>,
    sm: Vec<f32>,
}

impl Pairs {
    fn new(a: &Acts) -> Pairs {
        let blocks = a.d.len();
        let mut p = Pairs {
            qu: a.q.iter().map(|v| (*v as u8) ^ 0x80).collect(),
            d: Vec::with_capacity(blocks * 8),
            corr: Vec::with_capacity(blocks * 8),
            sm: vec![0.0; blocks * 8],
        };
        for b in 0..blocks {
            p.d.extend(std::iter::repeat_n(a.d[b], 8));
            p.corr.extend(std::iter::repeat_n(-2 * a.isum[b], 8));
            p.sm[b / 2 * 16 + 1 + 2 * (b % 2)] = a.s[b];
        }
        p
    }
}

/// Quantizes `m` rows of `k` values (`k` a multiple of 32), as ggml's Q8_0 and Q8_1 do:
/// scale = max |x| / 127, values rounded half to even, scale and sum stored as f16.
fn quantize(x: &[f32]) -> Acts {
    let blocks = x.len() / 32;
    let mut a = Acts {
        q: vec![0; x.len()],
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
        isum: Vec::with_capacity(blocks),
    };
    for (xb, qb) in x.chunks_exact(32).zip(a.q.chunks_exact_mut(32)) {
        // Eight running maxima, so that the compiler keeps them in one vector register.
        let mut lanes = [0f32; 8];
        for c in xb.chunks_exact(8) {
            for (m, v) in lanes.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0f32, |m, v| m.max(*v));
        let d = amax / 127.0;
        let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
        let mut sum = 0i32;
        for (o, v) in qb.iter_mut().zip(xb) {
            let q = (v * id).round_ties_even() as i32;
            sum += q;
            *o = q as i8;
        }
        a.d.push(half::f16::from_f32(d).to_f32());
        a.s.push(half::f16::from_f32(d * sum as f32).to_f32());
        a.isum.push(sum);
    }
    a
}

/// The dot product of one weight row with one quantized activation row, in plain Rust.
fn dot_scalar(format: Format, w: &[u8], q: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let bb = format.block_bytes();
    let mut wq = [0i8; 32];
    let mut acc = 0f32;
    for (i, b) in w.chunks_exact(bb).enumerate() {
        let (dw, mw) = unpack(format, b, &mut wq);
        let isum: i32 = wq
            .iter()
            .zip(&q[i * 32..i * 32 + 32])
            .map(|(a, b)| i32::from(*a) * i32::from(*b))
            .sum();
        acc += dw * d[i] * isum as f32 + mw * s[i];
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Format;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16(lo: u8, hi: u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
            u16::from_le_bytes([lo, hi]),
        ))))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn load32(b: &[u8]) -> __m256i {
        assert!(b.len() >= 32);
        // SAFETY: 32 readable bytes (checked above); unaligned load.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn load16(b: &[u8]) -> __m128i {
        assert!(b.len() >= 16);
        // SAFETY: 16 readable bytes (checked above); unaligned load.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    /// 16 bytes of nibbles -> 32 bytes: low nibbles first, then high nibbles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn nibbles(qs: &[u8]) -> __m256i {
        let v = load16(qs);
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(v, m);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
        _mm256_set_m128i(hi, lo)
    }

    /// Bit `i` of `qh` -> 0x10 in byte `i`, else 0.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn high_bits(qh: &[u8]) -> __m256i {
        let v = _mm256_set1_epi32(i32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]));
        // Byte i takes byte i / 8 of qh...
        let spread = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let v = _mm256_shuffle_epi8(v, spread);
        // ...and is all ones when bit i % 8 of it is set.
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(v, others), _mm256_set1_epi64x(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// Eight partial sums of signed x signed bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mul_signed(x: __m256i, y: __m256i) -> __m256i {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
    }

    /// Eight partial sums of unsigned (< 32) x signed bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mul_unsigned(x: __m256i, y: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// See [`super::dot_scalar`]; the same result up to float summation order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot(format: Format, w: &[u8], q: &[i8], d: &[f32], s: &[f32]) -> f32 {
        let bb = format.block_bytes();
        let nb = d.len();
        assert!(w.len() == nb * bb && q.len() == nb * 32 && s.len() == nb);
        let q = super::q_bytes(q);
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        match format {
            Format::Q8_0 => {
                for (i, b) in w.chunks_exact(bb).enumerate() {
                    let p = mul_signed(load32(&b[2..]), load32(&q[i * 32..]));
                    let scale = _mm256_set1_ps(f16(b[0], b[1]) * d[i]);
                    acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc);
                }
            }
            Format::Q5_0 => {
                let sixteen = _mm256_set1_epi8(16);
                for (i, b) in w.chunks_exact(bb).enumerate() {
                    let x = _mm256_or_si256(nibbles(&b[6..22]), high_bits(&b[2..6]));
                    let x = _mm256_sub_epi8(x, sixteen);
                    let p = mul_signed(x, load32(&q[i * 32..]));
                    let scale = _mm256_set1_ps(f16(b[0], b[1]) * d[i]);
                    acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc);
                }
            }
            Format::Q4_1 => {
                for (i, b) in w.chunks_exact(bb).enumerate() {
                    let p = mul_unsigned(nibbles(&b[4..20]), load32(&q[i * 32..]));
                    let scale = _mm256_set1_ps(f16(b[0], b[1]) * d[i]);
                    acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc);
                    mins += f16(b[2], b[3]) * s[i];
                }
            }
            Format::Q5_1 => {
                for (i, b) in w.chunks_exact(bb).enumerate() {
                    let x = _mm256_or_si256(nibbles(&b[8..24]), high_bits(&b[4..8]));
                    let p = mul_unsigned(x, load32(&q[i * 32..]));
                    let scale = _mm256_set1_ps(f16(b[0], b[1]) * d[i]);
                    acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc);
                    mins += f16(b[2], b[3]) * s[i];
                }
            }
        }
        hsum(acc) + mins
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Format;
    use super::avx2::{load16, load32};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn load64(b: &[u8]) -> __m512i {
        assert!(b.len() >= 64);
        // SAFETY: 64 readable bytes (checked above); unaligned load.
        unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn load64_f32(b: &[f32]) -> __m512 {
        assert!(b.len() >= 16);
        // SAFETY: 16 readable floats (checked above); unaligned load.
        unsafe { _mm512_loadu_ps(b.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn load64_i32(b: &[i32]) -> __m512i {
        assert!(b.len() >= 16);
        // SAFETY: 16 readable integers (checked above); unaligned load.
        unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
    }

    /// Bytes ahead of the current pair of blocks to prefetch, per row (four rows in
    /// flight): enough to cover memory latency once the weights outgrow the last-level
    /// cache. Measured on Qwen2.5 0.5B (390 MB read per token), interleaved runs: 4096
    /// generates ~15% faster than 1024 and no slower on SmolLM2, which fits in cache.
    const PREFETCH: usize = 4096;

    #[inline]
    fn u16_at(b: &[u8], i: usize) -> u32 {
        u32::from(u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes")))
    }

    #[inline]
    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
    }

    /// Two f16 values -> each over eight lanes: [a x 8, b x 8].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn two_halves(a: u32, b: u32) -> __m512 {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128((a | (b << 16)) as i32));
        let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
    }

    /// The nibbles of two blocks (16 bytes each) -> 64 bytes: block 0's low nibbles, its
    /// high nibbles, then block 1's.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn nibbles2(qs0: &[u8], qs1: &[u8]) -> __m512i {
        let v = _mm512_castsi256_si512(_mm256_set_m128i(load16(qs1), load16(qs0)));
        // [qs0, qs0, qs1, qs1], the second copy of each shifted down a nibble.
        let z = _mm512_shuffle_i64x2(v, v, 0b01_01_00_00);
        let shift = _mm512_set_epi32(
            0x0004_0004,
            0x0004_0004,
            0x0004_0004,
            0x0004_0004,
            0,
            0,
            0,
            0,
            0x0004_0004,
            0x0004_0004,
            0x0004_0004,
            0x0004_0004,
            0,
            0,
            0,
            0,
        );
        _mm512_and_si512(_mm512_srlv_epi16(z, shift), _mm512_set1_epi8(0x0f))
    }

    /// Bit `i` of `qh` -> 0x10 in byte `i`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn high_bits2(qh: u64) -> __m512i {
        _mm512_maskz_mov_epi8(_cvtu64_mask64(qh), _mm512_set1_epi8(0x10))
    }

    /// `R` weight rows against one activation row, two blocks at a time (an even number
    /// of blocks), each activation load shared by the rows: see [`super::dot_scalar`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) fn dot<const R: usize>(
        format: Format,
        w: [&[u8]; R],
        qu: &[u8],
        q: &[i8],
        d: &[f32],
        corr: &[i32],
        sm: &[f32],
    ) -> [f32; R] {
        let bb = format.block_bytes();
        let nb = d.len() / 8;
        assert!(
            nb.is_multiple_of(2)
                && qu.len() == nb * 32
                && q.len() == nb * 32
                && d.len() == nb * 8
                && corr.len() == nb * 8
                && sm.len() == nb * 8
        );
        for w in &w {
            assert!(w.len() == nb * bb);
        }
        match format {
            Format::Q8_0 => rows_q8_0(w, qu, d),
            Format::Q5_0 => rows_q5_0(w, q, d, corr),
            Format::Q4_1 => rows_min::<R, false>(w, q, d, sm),
            Format::Q5_1 => rows_min::<R, true>(w, q, d, sm),
        }
    }

    /// The pair loop shared by the formats: `$step(b0, b1, row)` gives the pair's eight
    /// partial integer sums per block for one row; accumulators stay in registers (one
    /// loop body per format, the rows unrolled).
    macro_rules! pair_loop {
        ($w:ident, $d:ident, $bb:expr, |$b0:ident, $b1:ident, $i:ident, $r:ident| $step:expr) => {{
            let mut acc = [_mm512_setzero_ps(); R];
            let pairs = $d.len() / 16;
            for $i in 0..pairs {
                let da = load64_f32(&$d[$i * 16..]);
                for $r in 0..R {
                    let pair = &$w[$r][$i * 2 * $bb..($i + 1) * 2 * $bb];
                    // The rows are read once, in order: ask for the bytes a few pairs
                    // ahead (the next row's when this one ends; it is contiguous).
                    _mm_prefetch::<_MM_HINT_T0>(pair.as_ptr().wrapping_add(PREFETCH).cast());
                    let ($b0, $b1) = pair.split_at($bb);
                    let scale = _mm512_mul_ps(two_halves(u16_at($b0, 0), u16_at($b1, 0)), da);
                    let p = $step;
                    acc[$r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc[$r]);
                }
            }
            acc
        }};
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn rows_q8_0<const R: usize>(w: [&[u8]; R], qu: &[u8], d: &[f32]) -> [f32; R] {
        let zero = _mm512_setzero_si512();
        let offset = _mm512_set1_epi8(-128);
        let acc = pair_loop!(w, d, 34, |b0, b1, i, r| {
            // (q + 128) . w - 128 . w: dpbusd wants its first operand unsigned.
            let x = _mm512_inserti64x4(
                _mm512_castsi256_si512(load32(&b0[2..])),
                load32(&b1[2..]),
                1,
            );
            let p = _mm512_dpbusd_epi32(zero, load64(&qu[i * 64..]), x);
            _mm512_sub_epi32(p, _mm512_dpbusd_epi32(zero, offset, x))
        });
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]);
        }
        out
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn rows_q5_0<const R: usize>(w: [&[u8]; R], q: &[i8], d: &[f32], corr: &[i32]) -> [f32; R] {
        let q = super::q_bytes(q);
        let acc = pair_loop!(w, d, 22, |b0, b1, i, r| {
            let qh = u64::from(u32_at(b0, 2)) | (u64::from(u32_at(b1, 2)) << 32);
            let x = _mm512_or_si512(nibbles2(&b0[6..22], &b1[6..22]), high_bits2(qh));
            // The correction is the accumulator's starting value.
            _mm512_dpbusd_epi32(load64_i32(&corr[i * 16..]), x, load64(&q[i * 64..]))
        });
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]);
        }
        out
    }

    /// Q4_1 (`HIGH` false) and Q5_1 (`HIGH` true): unsigned values and a minimum. Both
    /// blocks' headers (`[d, m]` as f16 each) convert in one instruction; the minimums
    /// times the activations' block sums (`sm`, lanes 1 and 3) join the same accumulator.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn rows_min<const R: usize, const HIGH: bool>(
        w: [&[u8]; R],
        q: &[i8],
        d: &[f32],
        sm: &[f32],
    ) -> [f32; R] {
        let q = super::q_bytes(q);
        let zero = _mm512_setzero_si512();
        let bb = if HIGH { 24 } else { 20 };
        // [d0, m0, d1, m1] -> [d0 x 8, d1 x 8]
        let scales = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut acc = [_mm512_setzero_ps(); R];
        for i in 0..d.len() / 16 {
            let da = load64_f32(&d[i * 16..]);
            let sl = load64_f32(&sm[i * 16..]);
            let qa = load64(&q[i * 64..]);
            for r in 0..R {
                let pair = &w[r][i * 2 * bb..(i + 1) * 2 * bb];
                _mm_prefetch::<_MM_HINT_T0>(pair.as_ptr().wrapping_add(PREFETCH).cast());
                let (b0, b1) = pair.split_at(bb);
                let head = u64::from(u32_at(b0, 0)) | (u64::from(u32_at(b1, 0)) << 32);
                // Upper lanes zero: they meet `sl`'s zeros, never garbage.
                let dm = _mm512_zextps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128(head as i64)));
                let x = if HIGH {
                    let qh = u64::from(u32_at(b0, 4)) | (u64::from(u32_at(b1, 4)) << 32);
                    _mm512_or_si512(nibbles2(&b0[8..24], &b1[8..24]), high_bits2(qh))
                } else {
                    nibbles2(&b0[4..20], &b1[4..20])
                };
                let p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, x, qa));
                let scale = _mm512_mul_ps(_mm512_permutexvar_ps(scales, dm), da);
                acc[r] = _mm512_fmadd_ps(p, scale, _mm512_fmadd_ps(dm, sl, acc[r]));
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]);
        }
        out
    }

    /// [`super::Unpacked::fill`] two blocks at a time: the values expanded as the gen
    /// kernels expand them, Q5_0's offset of 16 then taken off; their lane sums from one
    /// `vpdpbusd` against ones.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) fn fill(format: Format, row: &[u8], u: &mut super::Unpacked) {
        let bb = format.block_bytes();
        let pairs = row.len() / (2 * bb);
        assert!(
            row.len() == pairs * 2 * bb
                && u.q.len() == pairs * 64
                && u.c.len() == pairs * 16
                && u.d.len() == pairs * 16
                && u.m.len() == pairs * 16
        );
        let ones = _mm512_set1_epi8(1);
        let zero = _mm512_setzero_si512();
        for i in 0..pairs {
            let (b0, b1) = row[i * 2 * bb..(i + 1) * 2 * bb].split_at(bb);
            let x = match format {
                Format::Q8_0 => _mm512_inserti64x4(
                    _mm512_castsi256_si512(load32(&b0[2..])),
                    load32(&b1[2..]),
                    1,
                ),
                Format::Q5_0 => {
                    let qh = u64::from(u32_at(b0, 2)) | (u64::from(u32_at(b1, 2)) << 32);
                    let v = _mm512_or_si512(nibbles2(&b0[6..22], &b1[6..22]), high_bits2(qh));
                    _mm512_sub_epi8(v, _mm512_set1_epi8(16))
                }
                Format::Q4_1 => nibbles2(&b0[4..20], &b1[4..20]),
                Format::Q5_1 => {
                    let qh = u64::from(u32_at(b0, 4)) | (u64::from(u32_at(b1, 4)) << 32);
                    _mm512_or_si512(nibbles2(&b0[8..24], &b1[8..24]), high_bits2(qh))
                }
            };
            let c = _mm512_sub_epi32(
                zero,
                _mm512_slli_epi32(_mm512_dpbusd_epi32(zero, ones, x), 7),
            );
            let d = two_halves(u16_at(b0, 0), u16_at(b1, 0));
            let (q, cs, ds) = (
                &mut u.q[i * 64..(i + 1) * 64],
                &mut u.c[i * 16..(i + 1) * 16],
                &mut u.d[i * 16..(i + 1) * 16],
            );
            // SAFETY: each destination is exactly one vector long (sliced above).
            unsafe {
                _mm512_storeu_si512(q.as_mut_ptr().cast(), x);
                _mm512_storeu_si512(cs.as_mut_ptr().cast(), c);
                _mm512_storeu_ps(ds.as_mut_ptr(), d);
            }
            if format.has_min() {
                u.m[i * 16 + 1] = super::f16(b0[2], b0[3]);
                u.m[i * 16 + 3] = super::f16(b1[2], b1[3]);
            }
        }
    }

    /// `R` unpacked weight rows (see [`super::Unpacked`]) against `T` activation rows:
    /// each weight load serves `T` tokens and each activation load `R` rows, so a prompt
    /// streams its activations through the cache `R` times fewer. `MIN`: add the rows'
    /// minimums times the activations' block sums (`sm`, lanes 1 and 3 of each pair).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) fn dot_tile<const R: usize, const T: usize, const MIN: bool>(
        w: [&super::Unpacked; R],
        qu: [&[u8]; T],
        d: [&[f32]; T],
        sm: [&[f32]; T],
    ) -> [[f32; T]; R] {
        let pairs = w[0].q.len() / 64;
        for u in &w {
            assert!(
                u.q.len() == pairs * 64
                    && u.c.len() == pairs * 16
                    && u.d.len() == pairs * 16
                    && u.m.len() == pairs * 16
            );
        }
        for t in 0..T {
            assert!(
                qu[t].len() == pairs * 64 && d[t].len() == pairs * 16 && sm[t].len() == pairs * 16
            );
        }
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        for i in 0..pairs {
            let mut x = [_mm512_setzero_si512(); R];
            let mut c = [_mm512_setzero_si512(); R];
            let mut dw = [_mm512_setzero_ps(); R];
            for r in 0..R {
                x[r] = load64(&w[r].q[i * 64..]);
                c[r] = load64_i32(&w[r].c[i * 16..]);
                dw[r] = load64_f32(&w[r].d[i * 16..]);
            }
            for t in 0..T {
                let a = load64(&qu[t][i * 64..]);
                let da = load64_f32(&d[t][i * 16..]);
                for r in 0..R {
                    // `c` (minus 128 times each lane's weights) starts the sum.
                    let p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(c[r], a, x[r]));
                    let mut v = _mm512_fmadd_ps(p, _mm512_mul_ps(dw[r], da), acc[r][t]);
                    if MIN {
                        let m = load64_f32(&w[r].m[i * 16..]);
                        v = _mm512_fmadd_ps(m, load64_f32(&sm[t][i * 16..]), v);
                    }
                    acc[r][t] = v;
                }
            }
        }
        let mut out = [[0f32; T]; R];
        for r in 0..R {
            for t in 0..T {
                out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
        out
    }
}

/// A weight row unpacked once for a prompt's many tokens: its values as i8 (the stored
/// integers, Q5_0's offset removed), per lane of each block the block's scale and
/// `-128 * sum` of the lane's four values (what the activations' `+ 128` adds to a lane,
/// taken back), and the blocks' minimums in lanes 1 and 3 of sixteen per pair of blocks.
struct Unpacked {
    avx512: bool,
    q: Vec<u8>,
    c: Vec<i32>,
    d: Vec<f32>,
    m: Vec<f32>,
}

impl Unpacked {
    /// Room for a row of `k` values; `avx512` if the CPU runs those kernels (and `k`
    /// is a whole number of pairs of blocks).
    fn new(k: usize, avx512: bool) -> Unpacked {
        assert!(
            !avx512 || (kernel() == Kernel::Avx512 && (k / 32).is_multiple_of(2)),
            "the AVX-512 unpacking needs the CPU's AVX-512 kernels and pairs of blocks"
        );
        Unpacked {
            avx512,
            q: vec![0; k],
            c: vec![0; k / 4],
            d: vec![0.0; k / 4],
            m: vec![0.0; k / 4],
        }
    }

    fn fill(&mut self, format: Format, row: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: `avx512` is set only when the CPU runs the AVX-512 kernels.
            unsafe { avx512::fill(format, row, self) };
            return;
        }
        let mut q = [0i8; 32];
        for (b, blk) in row.chunks_exact(format.block_bytes()).enumerate() {
            let (d, m) = unpack(format, blk, &mut q);
            for (o, v) in self.q[b * 32..b * 32 + 32].iter_mut().zip(q) {
                *o = v as u8;
            }
            for j in 0..8 {
                let lane: i32 = q[4 * j..4 * j + 4].iter().map(|v| i32::from(*v)).sum();
                self.c[b * 8 + j] = -128 * lane;
                self.d[b * 8 + j] = d;
            }
            self.m[b / 2 * 16 + 1 + 2 * (b % 2)] = m;
        }
    }
}

/// Which kernels this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Scalar,
    Avx2,
    Avx512,
}

fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if have_avx2()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
        {
            return Kernel::Avx512;
        }
    }
    if have_avx2() {
        Kernel::Avx2
    } else {
        Kernel::Scalar
    }
}

/// Whether this CPU runs the AVX2 kernels.
fn have_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One weight row against activation row `t` with AVX2 or plain Rust (the AVX-512 paths
/// are taken in [`QMatrix::matmul`]).
fn dot(kernel: Kernel, format: Format, w: &[u8], a: &Acts, t: usize) -> f32 {
    let k = w.len() / format.block_bytes() * 32;
    let blocks = t * k / 32..(t + 1) * k / 32;
    let (q, d, s) = (&a.q[t * k..(t + 1) * k], &a.d[blocks.clone()], &a.s[blocks]);
    #[cfg(target_arch = "x86_64")]
    if matches!(kernel, Kernel::Avx512 | Kernel::Avx2) {
        // SAFETY: `Kernel::Avx2` or better is chosen only when the CPU has AVX2, FMA and F16C.
        return unsafe { avx2::dot(format, w, q, d, s) };
    }
    let _ = kernel;
    dot_scalar(format, w, q, d, s)
}

/// `R` weight rows against activation row `t` with the AVX-512 kernel.
#[cfg(target_arch = "x86_64")]
fn dot_avx512<const R: usize>(
    w: [&[u8]; R],
    a: &Acts,
    p: &Pairs,
    format: Format,
    t: usize,
) -> [f32; R] {
    let k = w[0].len() / format.block_bytes() * 32;
    let blocks = t * k / 32..(t + 1) * k / 32;
    let lanes = blocks.start * 8..blocks.end * 8;
    // SAFETY: `Pairs` exist only for `Kernel::Avx512`, chosen only when the CPU has
    // AVX-512 F, BW and VNNI, AVX2, FMA and F16C, and only for an even number of blocks.
    unsafe {
        avx512::dot(
            format,
            w,
            &p.qu[t * k..(t + 1) * k],
            &a.q[t * k..(t + 1) * k],
            &p.d[lanes.clone()],
            &p.corr[lanes.clone()],
            &p.sm[lanes],
        )
    }
}

/// An output buffer of rows of `m` values that several threads fill, each its own rows.
struct Rows<'a> {
    ptr: *mut f32,
    len: usize,
    m: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: `Rows` only hands out disjoint row ranges (see `rows`), like `chunks_mut`.
unsafe impl Sync for Rows<'_> {}

impl<'a> Rows<'a> {
    fn new(buf: &'a mut [f32], m: usize) -> Rows<'a> {
        Rows {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            m,
            _buf: std::marker::PhantomData,
        }
    }

    /// Rows `r` of the buffer.
    ///
    /// # Safety
    /// No two calls may ask for overlapping ranges while the slices live.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows(&self, r: std::ops::Range<usize>) -> &mut [f32] {
        let (start, end) = (r.start * self.m, r.end * self.m);
        assert!(start <= end && end <= self.len, "rows out of range");
        // SAFETY: in bounds (checked above); disjoint from every other live slice (the
        // caller's promise); the buffer outlives `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

/// A weight matrix of `n` rows of `k` values, in a block format, as the file stores it.
#[derive(Debug)]
pub(crate) struct QMatrix {
    format: Format,
    n: usize,
    k: usize,
    data: Vec<u8>,
    kernel: Kernel,
}

impl QMatrix {
    /// Takes the stored bytes of an `n` x `k` matrix; checks the size.
    pub(crate) fn new(
        format: Format,
        n: usize,
        k: usize,
        data: Vec<u8>,
    ) -> candle_core::Result<Self> {
        if !k.is_multiple_of(32) || n == 0 || data.len() != n * k / 32 * format.block_bytes() {
            candle_core::bail!("{format:?} matrix {n}x{k} cannot have {} bytes", data.len());
        }
        Ok(QMatrix {
            format,
            n,
            k,
            data,
            kernel: kernel(),
        })
    }

    /// Output rows, input width.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    fn row(&self, r: usize) -> &[u8] {
        let rb = self.k / 32 * self.format.block_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let mut q = [0i8; 32];
        for (b, o) in self
            .row(r)
            .chunks_exact(self.format.block_bytes())
            .zip(out.chunks_exact_mut(32))
        {
            let (d, m) = unpack(self.format, b, &mut q);
            for (o, v) in o.iter_mut().zip(q) {
                *o = d * f32::from(v) + m;
            }
        }
    }

    /// Up to four unpacked rows against every activation row, four tokens at a time
    /// (short groups repeat their last row or token and drop the copies); `out` holds
    /// `us.len()` rows of `m` outputs. `pairs` exist only with AVX-512.
    #[cfg(target_arch = "x86_64")]
    fn dot_prompt(&self, us: &[Unpacked], p: &Pairs, out: &mut [f32]) {
        let (k, kb) = (self.k, self.k / 32);
        let m = out.len() / us.len();
        let w: [&Unpacked; 4] = std::array::from_fn(|j| &us[j.min(us.len() - 1)]);
        for t0 in (0..m).step_by(4) {
            let ts: [usize; 4] = std::array::from_fn(|i| (t0 + i).min(m - 1));
            let qu = ts.map(|t| &p.qu[t * k..(t + 1) * k]);
            let d = ts.map(|t| &p.d[t * kb * 8..(t + 1) * kb * 8]);
            let sm = ts.map(|t| &p.sm[t * kb * 8..(t + 1) * kb * 8]);
            // SAFETY: `pairs` exist only for `Kernel::Avx512` (see `dot_avx512`).
            let v = unsafe {
                if self.format.has_min() {
                    avx512::dot_tile::<4, 4, true>(w, qu, d, sm)
                } else {
                    avx512::dot_tile::<4, 4, false>(w, qu, d, sm)
                }
            };
            let n = (m - t0).min(4);
            for (j, row) in out.chunks_exact_mut(m).enumerate() {
                row[t0..t0 + n].copy_from_slice(&v[j][..n]);
            }
        }
    }

    /// Rows `r0..r0 + out.len()` against one quantized activation row; four rows at a
    /// time share each activation load on AVX-512 (`pairs` exist only there).
    fn matvec_rows(&self, r0: usize, a: &Acts, pairs: Option<&Pairs>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = pairs {
            let mut r = r0;
            for o in out.chunks_mut(4) {
                if let Ok(o4) = <&mut [f32; 4]>::try_from(&mut *o) {
                    let w = [
                        self.row(r),
                        self.row(r + 1),
                        self.row(r + 2),
                        self.row(r + 3),
                    ];
                    *o4 = dot_avx512(w, a, p, self.format, 0);
                } else {
                    for (i, o) in o.iter_mut().enumerate() {
                        *o = dot_avx512([self.row(r + i)], a, p, self.format, 0)[0];
                    }
                }
                r += o.len();
            }
            return;
        }
        let _ = pairs;
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot(self.kernel, self.format, self.row(r0 + i), a, 0);
        }
    }

    /// `m` rows of `k` activations (row-major) times the transpose of this matrix: `m`
    /// rows of `n` outputs. Runs on candle's thread pool.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(
            x.len(),
            m * self.k,
            "activations are {m} rows of {}",
            self.k
        );
        if m == 1 {
            return matvec_many(&[self], x)
                .pop()
                .expect("one matrix, one output");
        }
        let a = quantize(x);
        let pairs = (self.kernel == Kernel::Avx512 && (self.k / 32).is_multiple_of(2))
            .then(|| Pairs::new(&a));
        let mut out_t = vec![0f32; self.n * m];
        let out = Rows::new(&mut out_t, m);
        // candle's pool: the one its own operations between ours run on, so the two never
        // compete for the cores (a second pool would, while candle's workers spin).
        candle_core::utils::barrier_pool().execute_chunked(self.n, |rows| {
            // SAFETY: `execute_chunked` hands out every row index exactly once.
            let chunk = unsafe { out.rows(rows.clone()) };
            // A prompt: unpack four rows at a time, then take the tokens four at a time.
            #[cfg(target_arch = "x86_64")]
            if m > 1
                && let Some(p) = pairs.as_ref()
            {
                let mut us: Vec<Unpacked> = (0..4).map(|_| Unpacked::new(self.k, true)).collect();
                for (g, o) in chunk.chunks_mut(4 * m).enumerate() {
                    let r0 = rows.start + 4 * g;
                    let nr = o.len() / m;
                    for (j, u) in us[..nr].iter_mut().enumerate() {
                        u.fill(self.format, self.row(r0 + j));
                    }
                    self.dot_prompt(&us[..nr], p, o);
                }
                return;
            }
            for (r, o) in rows.zip(chunk.chunks_mut(m)) {
                let w = self.row(r);
                for (t, o) in o.iter_mut().enumerate() {
                    *o = dot(self.kernel, self.format, w, &a, t);
                }
            }
        });
        let mut out = vec![0f32; m * self.n];
        for (r, row) in out_t.chunks_exact(m).enumerate() {
            for (t, v) in row.iter().enumerate() {
                out[t * self.n + r] = *v;
            }
        }
        out
    }
}

/// Matrices of the same width, each times one activation row (a generated token's Q, K
/// and V projections, or its gate and up): the activations are quantized once and the
/// rows of all of them share one pass over the thread pool, so the workers wake once.
pub(crate) fn matvec_many(ms: &[&QMatrix], x: &[f32]) -> Vec<Vec<f32>> {
    let Some(first) = ms.first() else {
        return Vec::new();
    };
    for m in ms {
        assert_eq!(m.k, x.len(), "activations are one row of {}", m.k);
        assert_eq!(m.kernel, first.kernel, "one kernel for all the matrices");
    }
    let a = quantize(x);
    let pairs = (first.kernel == Kernel::Avx512 && (first.k / 32).is_multiple_of(2))
        .then(|| Pairs::new(&a));
    let mut outs: Vec<Vec<f32>> = ms.iter().map(|m| vec![0f32; m.n]).collect();
    // Work items of four rows; matrix `j`'s items are `starts[j]..starts[j + 1]`.
    let mut starts = vec![0usize];
    for m in ms {
        starts.push(starts[starts.len() - 1] + m.n.div_ceil(4));
    }
    let total = starts[ms.len()];
    let rows: Vec<Rows<'_>> = outs.iter_mut().map(|o| Rows::new(o, 1)).collect();
    candle_core::utils::barrier_pool().execute_chunked(total, |items| {
        let mut i = items.start;
        while i < items.end {
            let j = starts.partition_point(|s| *s <= i) - 1;
            let end = items.end.min(starts[j + 1]);
            let m = ms[j];
            let (r0, r1) = ((i - starts[j]) * 4, ((end - starts[j]) * 4).min(m.n));
            // SAFETY: `execute_chunked` hands out every item exactly once, and an item is
            // four rows of one matrix's output, so no two live slices overlap.
            let out = unsafe { rows[j].rows(r0..r1) };
            m.matvec_rows(r0, &a, pairs.as_ref(), out);
            i = end;
        }
    });
    drop(rows);
    outs
}

/// Times each of our kernels against candle's kernel for the same format on one matrix
/// larger than the caches (65536 x 640, one token, candle's thread pool): one printable
/// line per measurement, with the ratio to candle. For `fieldmesh bench ai --only kernels`.
pub fn kernel_bench() -> Vec<String> {
    use candle_core::Module;
    let time = |f: &dyn Fn()| {
        f();
        let t = std::time::Instant::now();
        for _ in 0..20 {
            f();
        }
        t.elapsed().as_secs_f64() / 20.0
    };
    let (n, k) = (65536, 640);
    let dev = candle_core::Device::Cpu;
    let mut lines = Vec::new();
    for (format, ggml) in [
        (Format::Q8_0, GgmlDType::Q8_0),
        (Format::Q5_0, GgmlDType::Q5_0),
        (Format::Q4_1, GgmlDType::Q4_1),
    ] {
        let data: Vec<u8> = (0..n * k / 32 * format.block_bytes())
            .map(|i| (i * 7 % 251) as u8 & 0x3f)
            .collect();
        let Ok(mut ours) = QMatrix::new(format, n, k, data.clone()) else {
            continue;
        };
        let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 / 13.0).collect();
        let theirs =
            candle_core::quantized::QStorage::from_data(std::borrow::Cow::Owned(data), &dev, ggml)
                .and_then(|st| candle_core::quantized::QTensor::new(st, (n, k)))
                .and_then(candle_core::quantized::QMatMul::from_qtensor);
        let xt = candle_core::Tensor::from_vec(x.clone(), (1, k), &dev);
        let (Ok(theirs), Ok(xt)) = (theirs, xt) else {
            continue;
        };
        let candle = time(&|| {
            std::hint::black_box(theirs.forward(&xt).ok());
        });
        lines.push(format!(
            "{format:?} {n}x{k}: candle {:.2} ms ({:.1} GB/s)",
            candle * 1e3,
            ours.bytes() as f64 / candle / 1e9
        ));
        for kern in [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512] {
            if kern == Kernel::Avx512 && kernel() != Kernel::Avx512
                || kern == Kernel::Avx2 && !have_avx2()
            {
                continue;
            }
            ours.kernel = kern;
            let t = time(&|| {
                std::hint::black_box(ours.matmul(&x, 1));
            });
            lines.push(format!(
                "  ours {kern:?}: {:.2} ms ({:.1} GB/s), {:.2}x candle's speed",
                t * 1e3,
                ours.bytes() as f64 / t / 1e9,
                candle / t
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{QMatMul, QStorage, QTensor};
    use candle_core::{Device, Module, Tensor};

    /// A random matrix in `format`, as raw blocks with sane scales.
    fn random_blocks(format: Format, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut out = Vec::new();
        for _ in 0..n * k / 32 {
            let start = out.len();
            for _ in 0..format.block_bytes() {
                out.push(next() as u8);
            }
            let scale = half::f16::from_f32(0.001 + (next() % 1000) as f32 / 50_000.0);
            out[start..start + 2].copy_from_slice(&scale.to_le_bytes());
            if format.has_min() {
                let min = half::f16::from_f32((next() % 1000) as f32 / 20_000.0 - 0.025);
                out[start + 2..start + 4].copy_from_slice(&min.to_le_bytes());
            }
        }
        out
    }

    /// The same bytes as candle's quantized tensor.
    fn candle_matrix(format: Format, n: usize, k: usize, data: Vec<u8>) -> QTensor {
        let storage =
            QStorage::from_data(std::borrow::Cow::Owned(data), &Device::Cpu, ggml(format)).unwrap();
        QTensor::new(storage, (n, k)).unwrap()
    }

    fn ggml(format: Format) -> GgmlDType {
        match format {
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q4_1 => GgmlDType::Q4_1,
            Format::Q5_1 => GgmlDType::Q5_1,
        }
    }

    /// Against candle's own kernel for each format (its reference for ggml's), for one
    /// token (generation) and several (a prompt); and the SIMD path against plain Rust.
    #[test]
    fn products_match_candles_kernels_and_the_scalar_path() {
        let dev = Device::Cpu;
        // A width that is not a multiple of 256: on CPUs with AVX-512 VNNI, candle multiplies
        // Q8_0 matrices of such widths against activations quantized per 256, not per 32.
        // 203 rows: one token's rows go in items of four, and the last item's three take
        // the single-row kernel; a prompt's rows come in chunks of 13 on two threads (four
        // groups of four rows, the last short) and its 5 tokens as four and one.
        let (n, k) = (203, 192);
        for format in [Format::Q8_0, Format::Q5_0, Format::Q4_1, Format::Q5_1] {
            let data = random_blocks(format, n, k, 7);
            let mut ours = QMatrix::new(format, n, k, data.clone()).unwrap();
            let theirs = QMatMul::from_qtensor(candle_matrix(format, n, k, data)).unwrap();
            for m in [1, 5] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.9)
                    .collect();
                let want = theirs
                    .forward(&Tensor::from_vec(x.clone(), (m, k), &dev).unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let a = quantize(&x);
                // Every kernel this CPU can run (the best one is what `new` picks).
                let best = kernel();
                let kernels = [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512]
                    .into_iter()
                    .filter(|k| {
                        *k == Kernel::Scalar || *k == Kernel::Avx2 && have_avx2() || *k == best
                    });
                for kern in kernels {
                    ours.kernel = kern;
                    let got = ours.matmul(&x, m);
                    for t in 0..m {
                        for r in 0..n {
                            let (g, w) = (got[t * n + r], want[t * n + r]);
                            assert!(
                                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                                "{format:?} {kern:?} m={m} [{t},{r}]: ours {g}, candle {w}"
                            );
                            let kb = k / 32;
                            let plain = dot_scalar(
                                format,
                                ours.row(r),
                                &a.q[t * k..(t + 1) * k],
                                &a.d[t * kb..(t + 1) * kb],
                                &a.s[t * kb..(t + 1) * kb],
                            );
                            assert!(
                                (g - plain).abs() <= 1e-5 * plain.abs().max(1.0),
                                "{format:?} {kern:?}: {g}, scalar {plain}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 unpacking of a row for prompts against the plain one.
    #[test]
    fn vector_unpacking_matches_the_plain_one() {
        if kernel() != Kernel::Avx512 {
            eprintln!("this CPU does not run the AVX-512 kernels; nothing to compare");
            return;
        }
        let k = 256;
        for format in [Format::Q8_0, Format::Q5_0, Format::Q4_1, Format::Q5_1] {
            let row = random_blocks(format, 1, k, 11);
            let (mut plain, mut vector) = (Unpacked::new(k, false), Unpacked::new(k, true));
            plain.fill(format, &row);
            vector.fill(format, &row);
            assert_eq!(plain.q, vector.q, "{format:?}");
            assert_eq!(plain.c, vector.c, "{format:?}");
            assert_eq!(plain.d, vector.d, "{format:?}");
            assert_eq!(plain.m, vector.m, "{format:?}");
        }
    }

    #[test]
    fn dequantized_rows_match_candle() {
        let dev = Device::Cpu;
        let (n, k) = (4, 64);
        for format in [Format::Q8_0, Format::Q5_0, Format::Q4_1, Format::Q5_1] {
            let data = random_blocks(format, n, k, 3);
            let ours = QMatrix::new(format, n, k, data.clone()).unwrap();
            let want = candle_matrix(format, n, k, data)
                .dequantize(&dev)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let mut row = vec![0f32; k];
            for (r, w) in want.iter().enumerate() {
                ours.dequantize_row(r, &mut row);
                assert_eq!(&row, w, "{format:?} row {r}");
            }
        }
    }

    #[test]
    fn a_malformed_matrix_is_refused() {
        assert!(QMatrix::new(Format::Q5_0, 2, 64, vec![0; 10]).is_err());
        assert!(QMatrix::new(Format::Q8_0, 2, 40, vec![0; 68]).is_err());
    }
}
