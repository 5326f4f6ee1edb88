//! A bound on the work a change chunk can ask for, checked before Automerge parses it.
//!
//! Automerge stores a change's operations in columns, most of them run-length encoded: a
//! run is a count and one value, so about ten bytes can declare 2^60 rows. When Automerge
//! parses a change it walks every row, and it gathers each operation's predecessor list
//! (a group column whose counts are also run-length encoded) into memory. An envelope of a
//! hundred bytes could therefore hold a node's channel task for hours, or exhaust its
//! memory, on every node that opens it and again at every rebuild.
//!
//! [`check`] reads the chunk's layout (it does not interpret operations) and counts the
//! rows of every column and the entries of every group, refusing a change that declares
//! more than [`MAX_CHANGE_OPS`]. The counting itself is linear in the chunk's bytes.
//!
//! Layout, as Automerge writes it (all integers LEB128):
//!
//! ```text
//! magic[4] checksum[4] type=1 len
//!   deps: count, 32 bytes each      actor: len, bytes     seq  start_op  time(signed)
//!   message: len, bytes             other actors: count, (len, bytes) each
//!   columns: count, (spec, len) each      column data      extra bytes
//! ```
//!
//! A column spec is `id << 4 | deflate << 3 | type`. Run-length columns are a sequence of
//! runs, each a signed count: `n > 0` is one value repeated `n` times, `n < 0` is `-n`
//! literal values, `0` is followed by an unsigned count of nulls. A boolean column is a
//! sequence of unsigned run lengths, alternating from `false`.

/// Most operations (rows), and most predecessor entries, one change may declare. A post
/// with the most attachments a node writes is under 1,300 operations.
pub const MAX_CHANGE_OPS: u64 = 4096;

/// Most columns in a change; Automerge writes at most thirteen today.
const MAX_COLUMNS: u64 = 64;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_CHANGE: u8 = 1;

/// How a column's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Run-length encoded unsigned integers; for a group column, each value counts the
    /// entries of the grouped columns in that row.
    RleUnsigned { group: bool },
    /// Run-length encoded signed integers (delta columns).
    RleSigned,
    /// Run-length encoded length-prefixed strings.
    RleString,
    /// Alternating run lengths of `false` and `true`.
    Boolean,
    /// Raw value bytes, sized by a metadata column: no rows of its own.
    Raw,
}

fn layout(spec: u64) -> Layout {
    match spec & 0b111 {
        0 => Layout::RleUnsigned { group: true },
        1 | 2 | 6 => Layout::RleUnsigned { group: false },
        3 => Layout::RleSigned,
        4 => Layout::Boolean,
        5 => Layout::RleString,
        _ => Layout::Raw,
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { bytes, what }
    }

    fn done(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or_else(|| format!("{} ends early", self.what))?;
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// An unsigned LEB128 integer of at most 64 bits.
    fn unsigned(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for (i, &b) in self.bytes.iter().enumerate().take(10) {
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(format!("{}: integer over 64 bits", self.what));
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        Err(format!("{}: unterminated integer", self.what))
    }

    /// A signed LEB128 integer of at most 64 bits.
    fn signed(&mut self) -> Result<i64, String> {
        let mut value = 0i64;
        for (i, &b) in self.bytes.iter().enumerate().take(10) {
            let bits = i64::from(b & 0x7f);
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                // The tenth byte holds only the sign bit: 0x00 or 0x7f.
                if i == 9 && b != 0 && b != 0x7f {
                    return Err(format!("{}: integer over 64 bits", self.what));
                }
                if i < 9 && b & 0x40 != 0 {
                    value |= -1i64 << (7 * (i + 1));
                }
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        Err(format!("{}: unterminated integer", self.what))
    }

    /// Skips a length-prefixed byte string.
    fn skip_prefixed(&mut self) -> Result<(), String> {
        let n = self.unsigned()?;
        self.take(n).map(|_| ())
    }

    /// A count of items, each at least `min_item` bytes, that the rest must hold.
    fn count(&mut self, min_item: u64) -> Result<u64, String> {
        let n = self.unsigned()?;
        if n.saturating_mul(min_item) > self.bytes.len() as u64 {
            return Err(format!("{}: {n} items cannot fit", self.what));
        }
        Ok(n)
    }
}

/// What one column declares.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counted {
    rows: u64,
    /// For a group column, the sum of its values.
    grouped: u64,
}

fn too_many(what: &str, n: u64) -> String {
    format!("{what} declares more than {MAX_CHANGE_OPS} entries ({n} at least)")
}

/// Counts a column's rows, stopping as soon as either count passes the cap.
fn count_column(data: &[u8], layout: Layout) -> Result<Counted, String> {
    let mut r = Reader::new(data, "column");
    let mut c = Counted::default();
    let add_rows = |c: &mut Counted, n: u64| -> Result<(), String> {
        c.rows = c.rows.saturating_add(n);
        if c.rows > MAX_CHANGE_OPS {
            return Err(too_many("a column", c.rows));
        }
        Ok(())
    };
    let add_grouped = |c: &mut Counted, value: u64, times: u64| -> Result<(), String> {
        c.grouped = c.grouped.saturating_add(value.saturating_mul(times));
        if c.grouped > MAX_CHANGE_OPS {
            return Err(too_many("a group column", c.grouped));
        }
        Ok(())
    };
    let value = |r: &mut Reader<'_>| -> Result<u64, String> {
        match layout {
            Layout::RleUnsigned { .. } => r.unsigned(),
            Layout::RleSigned => r.signed().map(|_| 0),
            Layout::RleString => r.skip_prefixed().map(|_| 0),
            Layout::Boolean | Layout::Raw => Ok(0),
        }
    };
    match layout {
        Layout::Raw => {}
        Layout::Boolean => {
            while !r.done() {
                let n = r.unsigned()?;
                add_rows(&mut c, n)?;
            }
        }
        Layout::RleUnsigned { .. } | Layout::RleSigned | Layout::RleString => {
            let group = layout == Layout::RleUnsigned { group: true };
            while !r.done() {
                let run = r.signed()?;
                if run > 0 {
                    let n = run.unsigned_abs();
                    add_rows(&mut c, n)?;
                    let v = value(&mut r)?;
                    if group {
                        add_grouped(&mut c, v, n)?;
                    }
                } else if run < 0 {
                    let n = run.unsigned_abs();
                    add_rows(&mut c, n)?;
                    for _ in 0..n {
                        let v = value(&mut r)?;
                        if group {
                            add_grouped(&mut c, v, 1)?;
                        }
                    }
                } else {
                    let n = r.unsigned()?;
                    add_rows(&mut c, n)?;
                }
            }
        }
    }
    Ok(c)
}

/// Checks that `raw`, an uncompressed Automerge change chunk, is laid out as a change and
/// declares at most [`MAX_CHANGE_OPS`] operations and predecessor entries. Returns the
/// number of operations (rows of the longest column).
pub fn check(raw: &[u8]) -> Result<u64, String> {
    let mut r = Reader::new(raw, "change chunk");
    if r.take(4)? != MAGIC {
        return Err("not an Automerge chunk".into());
    }
    r.take(4)?; // checksum: Automerge verifies it
    if r.take(1)? != [CHUNK_CHANGE] {
        return Err("not an uncompressed Automerge change".into());
    }
    let len = r.unsigned()?;
    if len != r.bytes.len() as u64 {
        return Err(format!(
            "change chunk says {len} bytes but carries {}",
            r.bytes.len()
        ));
    }
    let deps = r.count(32)?;
    r.take(deps * 32)?;
    r.skip_prefixed()?; // actor
    r.unsigned()?; // seq
    r.unsigned()?; // start op
    r.signed()?; // time
    r.skip_prefixed()?; // message
    let actors = r.count(1)?;
    for _ in 0..actors {
        r.skip_prefixed()?;
    }
    let columns = r.count(2)?;
    if columns > MAX_COLUMNS {
        return Err(format!("{columns} columns; at most {MAX_COLUMNS}"));
    }
    let mut specs = Vec::with_capacity(columns as usize);
    for _ in 0..columns {
        let spec = r.unsigned()?;
        let len = r.unsigned()?;
        if spec & 0b1000 != 0 {
            return Err("a compressed column".into());
        }
        specs.push((spec, len));
    }
    let mut ops = 0;
    for (spec, len) in specs {
        let data = r.take(len)?;
        let c = count_column(data, layout(spec))?;
        ops = ops.max(c.rows);
    }
    Ok(ops)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn uleb(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    pub(crate) fn sleb(mut v: i64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            let done = (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0);
            out.push(if done { b } else { b | 0x80 });
            if done {
                return;
            }
        }
    }

    #[test]
    fn leb128_round_trips_at_the_edges() {
        for v in [0, 1, 63, 64, 127, 128, 1 << 35, u64::MAX - 1, u64::MAX] {
            let mut b = Vec::new();
            uleb(v, &mut b);
            let mut r = Reader::new(&b, "t");
            assert_eq!(r.unsigned(), Ok(v));
            assert!(r.done());
        }
        for v in [0, 1, -1, 63, 64, -64, -65, i64::MAX, i64::MIN, -(1 << 40)] {
            let mut b = Vec::new();
            sleb(v, &mut b);
            let mut r = Reader::new(&b, "t");
            assert_eq!(r.signed(), Ok(v), "{v}");
            assert!(r.done());
        }
        // Eleven bytes, or a tenth byte carrying more than the top bit, is refused.
        assert!(Reader::new(&[0xff; 11], "t").unsigned().is_err());
        assert!(
            Reader::new(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                "t"
            )
            .unsigned()
            .is_err()
        );
        assert!(Reader::new(&[0x80], "t").unsigned().is_err());
    }

    #[test]
    fn counts_runs_literals_and_nulls() {
        let mut col = Vec::new();
        sleb(3, &mut col);
        uleb(7, &mut col); // 7, 7, 7
        sleb(-2, &mut col);
        uleb(1, &mut col);
        uleb(300, &mut col); // 1, 300
        sleb(0, &mut col);
        uleb(5, &mut col); // five nulls
        let plain = count_column(&col, Layout::RleUnsigned { group: false }).unwrap();
        assert_eq!(
            plain,
            Counted {
                rows: 10,
                grouped: 0
            }
        );
        let group = count_column(&col, Layout::RleUnsigned { group: true }).unwrap();
        assert_eq!(
            group,
            Counted {
                rows: 10,
                grouped: 3 * 7 + 1 + 300
            }
        );
        let mut bools = Vec::new();
        for n in [0, 4, 2] {
            uleb(n, &mut bools);
        }
        assert_eq!(count_column(&bools, Layout::Boolean).unwrap().rows, 6);
    }

    #[test]
    fn a_long_run_is_refused_whatever_its_kind() {
        for layout in [
            Layout::RleUnsigned { group: false },
            Layout::RleSigned,
            Layout::RleString,
        ] {
            let mut col = Vec::new();
            sleb(1 << 40, &mut col);
            match layout {
                Layout::RleString => col.extend([1, b'a']),
                _ => col.push(0),
            }
            assert!(
                count_column(&col, layout)
                    .unwrap_err()
                    .contains("more than")
            );
            let mut nulls = Vec::new();
            sleb(0, &mut nulls);
            uleb(u64::MAX, &mut nulls);
            assert!(count_column(&nulls, layout).is_err());
        }
        let mut bools = Vec::new();
        uleb(1 << 40, &mut bools);
        assert!(count_column(&bools, Layout::Boolean).is_err());
        // One row whose group value asks for 2^40 predecessors.
        let mut group = Vec::new();
        sleb(1, &mut group);
        uleb(1 << 40, &mut group);
        let e = count_column(&group, Layout::RleUnsigned { group: true }).unwrap_err();
        assert!(e.contains("group"), "{e}");
        // A literal run declaring more values than the bytes hold ends early.
        let mut lit = Vec::new();
        sleb(-4, &mut lit);
        lit.push(1);
        assert!(count_column(&lit, Layout::RleUnsigned { group: false }).is_err());
        // i64::MIN as a literal count must not overflow.
        let mut min = Vec::new();
        sleb(i64::MIN, &mut min);
        assert!(count_column(&min, Layout::RleSigned).is_err());
    }
}
