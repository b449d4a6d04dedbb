//! The subset of Python's pickle that `torch.save` writes, read as data and never executed,
//! and the few opcodes tessera writes.
//!
//! Reading builds a [`Value`] tree. Globals are names, not code: the only calls understood are
//! the ones that rebuild a tensor (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`) and
//! `collections.OrderedDict`; any other call becomes an opaque value that is refused only if it
//! is the array asked for. Storages are the persistent ids torch writes
//! (`('storage', torch.FloatStorage, '0', 'cpu', numel)`). Every count is checked against what is
//! left of the input, so a corrupt or hostile file ends in an error, never a panic or a huge
//! allocation.

use std::collections::HashMap;

/// A value of the pickled object tree.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A global name (`module.name`), not yet called.
    Global(String),
    /// A storage named by its persistent id.
    Storage(Storage),
    /// A tensor view of a storage.
    Tensor(Tensor),
    /// The result of calling a global tessera does not know (kept to say what it was).
    Opaque(String),
}

/// A storage record: `data/<key>` in the archive, `numel` elements of `class` (`FloatStorage`;
/// for `UntypedStorage`, `numel` counts bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct Storage {
    pub class: String,
    pub key: String,
    pub numel: u64,
}

/// A tensor: `size` elements of `dtype` (torch's name: `float32`, `uint16`, `bool`, ...) with
/// `stride` (in elements) from `offset` (in elements) into its storage.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub storage: Storage,
    pub dtype: String,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// Deepest nesting of tuples/lists/dicts accepted (torch's own files nest a few levels).
const MAX_DEPTH: usize = 256;

enum Item {
    Mark,
    Value(Value),
}

/// Reads a pickle into its value tree.
///
/// # Errors
/// What is wrong, for the caller to name the file: an opcode outside the subset, a truncated
/// stream, a malformed tensor call.
pub fn load(bytes: &[u8]) -> Result<Value, String> {
    Machine {
        input: bytes,
        at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        copies_left: MAX_MEMO_COPIES,
    }
    .run()
}

struct Machine<'a> {
    input: &'a [u8],
    at: usize,
    stack: Vec<Item>,
    memo: HashMap<u32, Value>,
    /// Values still allowed to be copied out of the memo (a hostile pickle could otherwise
    /// double its size with every few bytes).
    copies_left: usize,
}

/// Values (counted node by node) that reads of the memo may copy in one file: far above what a
/// state dict of many tensors needs, far below what exhausts memory.
const MAX_MEMO_COPIES: usize = 1 << 24;

/// How many values `v` holds, itself included.
fn weight(v: &Value) -> usize {
    1 + match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(weight).sum(),
        Value::Dict(items) => items.iter().map(|(k, v)| weight(k) + weight(v)).sum(),
        _ => 0,
    }
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or("truncated pickle")?;
        let out = &self.input[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.input[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle")?;
        let text = std::str::from_utf8(&rest[..end])
            .map_err(|_| "a global name is not UTF-8")?
            .to_string();
        self.at += end + 1;
        Ok(text)
    }

    fn text(&mut self, n: u64) -> Result<Value, String> {
        let n = usize::try_from(n).map_err(|_| "string longer than the file")?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .map_err(|_| "a string is not UTF-8".into())
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Item::Value(v));
    }

    fn pop(&mut self) -> Result<Value, String> {
        match self.stack.pop() {
            Some(Item::Value(v)) => Ok(v),
            Some(Item::Mark) => Err("a mark where a value was expected".into()),
            None => Err("pickle stack underflow".into()),
        }
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        match self.stack.last_mut() {
            Some(Item::Value(v)) => Ok(v),
            _ => Err("pickle stack underflow".into()),
        }
    }

    /// The values above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or("no mark on the pickle stack")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|i| match i {
                Item::Value(v) => v,
                Item::Mark => unreachable!("marks above the topmost one"),
            })
            .collect())
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>, String> {
        let mut out = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn memo_get(&mut self, key: u32) -> Result<Value, String> {
        let v = self
            .memo
            .get(&key)
            .ok_or_else(|| format!("memo entry {key} read before it was written"))?;
        self.copies_left = self
            .copies_left
            .checked_sub(weight(v))
            .ok_or("the pickle copies more values from its memo than any tensor file needs")?;
        Ok(v.clone())
    }

    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let v = self.top()?.clone();
        self.copies_left = self
            .copies_left
            .checked_sub(weight(&v))
            .ok_or("the pickle copies more values into its memo than any tensor file needs")?;
        self.memo.insert(key, v);
        Ok(())
    }

    /// Runs the pickle to its STOP and returns the value it leaves.
    ///
    /// Long on purpose: an interpreter's dispatch, one short match arm per opcode of the
    /// subset `torch.save` writes; splitting the table would scatter the opcodes a reader
    /// checks against pickle's own list.
    fn run(mut self) -> Result<Value, String> {
        loop {
            if self.stack.len() > MAX_DEPTH * 64 {
                return Err("pickle stack too deep".into());
            }
            let op = self.byte()?;
            match op {
                0x80 => {
                    let version = self.byte()?;
                    if version > 5 {
                        return Err(format!("pickle protocol {version} is not known"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Item::Mark),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.le(1)?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.le(2)?;
                    self.push(Value::Int(v as i64));
                }
                b'J' => {
                    let v = self.le(4)? as u32 as i32;
                    self.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    let n = self.byte()? as usize;
                    let v = long(self.take(n)?)?;
                    self.push(Value::Int(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.le(4)?;
                    let v = self.text(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.le(1)?;
                    let v = self.text(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.le(8)?;
                    let v = self.text(n)?;
                    self.push(v);
                }
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => self.le(1)?,
                        b'B' => self.le(4)?,
                        _ => self.le(8)?,
                    };
                    let n = usize::try_from(n).map_err(|_| "bytes longer than the file")?;
                    let v = self.take(n)?.to_vec();
                    self.push(Value::Bytes(v));
                }
                b')' => self.push(Value::Tuple(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b'}' => self.push(Value::Dict(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                0x85..=0x87 => {
                    let items = self.pop_n(usize::from(op - 0x84))?;
                    self.push(Value::Tuple(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    list_of(self.top()?)?.push(v);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    list_of(self.top()?)?.extend(items);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    dict_of(self.top()?)?.push((k, v));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of values".into());
                    }
                    let mut it = items.into_iter();
                    let dict = dict_of(self.top()?)?;
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.push((k, v));
                    }
                }
                b'q' => {
                    let key = self.le(1)? as u32;
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = self.le(4)? as u32;
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key = u32::try_from(self.memo.len()).map_err(|_| "memo too large")?;
                    self.memo_put(key)?;
                }
                b'h' => {
                    let key = self.le(1)? as u32;
                    let v = self.memo_get(key)?;
                    self.push(v);
                }
                b'j' => {
                    let key = self.le(4)? as u32;
                    let v = self.memo_get(key)?;
                    self.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.push(Value::Global(format!("{m}.{n}")))
                        }
                        _ => return Err("STACK_GLOBAL of names that are not strings".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent(pid)?;
                    self.push(Value::Storage(storage));
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = call(callable, args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: an object's state; tensors' and dicts' states carry nothing tessera
                    // reads (OrderedDict's is empty, a Parameter's is its hooks).
                    self.pop()?;
                    self.top()?;
                }
                0x8f => self.push(Value::List(Vec::new())), // EMPTY_SET, kept as a list
                0x90 => {
                    let items = self.pop_mark()?;
                    list_of(self.top()?)?.extend(items);
                }
                _ => {
                    return Err(format!(
                        "pickle opcode 0x{op:02x} at byte {} is outside what torch.save writes",
                        self.at - 1
                    ))
                }
            }
        }
    }
}

fn long(bytes: &[u8]) -> Result<i64, String> {
    if bytes.len() > 8 {
        return Err("an integer wider than 64 bits".into());
    }
    if bytes.is_empty() {
        return Ok(0);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = [if negative { 0xff } else { 0 }; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(i64::from_le_bytes(buf))
}

fn list_of(v: &mut Value) -> Result<&mut Vec<Value>, String> {
    match v {
        Value::List(items) => Ok(items),
        _ => Err("APPEND to something that is not a list".into()),
    }
}

fn dict_of(v: &mut Value) -> Result<&mut Vec<(Value, Value)>, String> {
    match v {
        Value::Dict(items) => Ok(items),
        _ => Err("SETITEM on something that is not a dict".into()),
    }
}

fn persistent(pid: Value) -> Result<Storage, String> {
    let bad = || "a persistent id that is not ('storage', class, key, location, numel)".to_string();
    let Value::Tuple(items) = pid else {
        return Err(bad());
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(class), Value::Str(key), _, Value::Int(numel)]
            if tag == "storage" && *numel >= 0 =>
        {
            Ok(Storage {
                class: class.rsplit('.').next().unwrap_or(class).to_string(),
                key: key.clone(),
                numel: *numel as u64,
            })
        }
        _ => Err(bad()),
    }
}

fn call(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = callable else {
        return Ok(Value::Opaque(
            "a call of something that is not a global".into(),
        ));
    };
    let Value::Tuple(args) = args else {
        return Ok(Value::Opaque(name));
    };
    match name.as_str() {
        "torch._utils._rebuild_tensor_v2" => rebuild_tensor(&args, None).map(Value::Tensor),
        "torch._utils._rebuild_tensor_v3" => match args.get(6) {
            Some(Value::Global(dtype)) => {
                let dtype = dtype.strip_prefix("torch.").unwrap_or(dtype);
                rebuild_tensor(&args, Some(dtype)).map(Value::Tensor)
            }
            _ => Err("a tensor (_rebuild_tensor_v3) without its dtype".into()),
        },
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.into_iter().next() {
                Some(Value::Tensor(t)) => Ok(Value::Tensor(t)),
                _ => Ok(Value::Opaque(name)),
            }
        }
        "collections.OrderedDict" if args.is_empty() => Ok(Value::Dict(Vec::new())),
        _ => Ok(Value::Opaque(name)),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<u64>, String> {
    let Value::Tuple(items) = v else {
        return Err(format!("a tensor's {what} is not a tuple"));
    };
    items
        .iter()
        .map(|i| match i {
            Value::Int(n) if *n >= 0 => Ok(*n as u64),
            _ => Err(format!(
                "a tensor's {what} holds something other than a count"
            )),
        })
        .collect()
}

/// torch's typed storage classes and the dtype each holds (torch's names).
const TYPED_STORAGES: [(&str, &str); 10] = [
    ("ByteStorage", "uint8"),
    ("CharStorage", "int8"),
    ("ShortStorage", "int16"),
    ("IntStorage", "int32"),
    ("LongStorage", "int64"),
    ("FloatStorage", "float32"),
    ("DoubleStorage", "float64"),
    ("HalfStorage", "float16"),
    ("BFloat16Storage", "bfloat16"),
    ("BoolStorage", "bool"),
];

/// torch's dtype name for a typed storage class (`FloatStorage` -> `float32`); other classes
/// keep their own name, which no reader accepts.
fn storage_dtype(class: &str) -> &str {
    TYPED_STORAGES
        .iter()
        .find(|(c, _)| *c == class)
        .map_or(class, |(_, d)| d)
}

/// The typed storage class torch writes a `dtype` through (`float32` -> `FloatStorage`);
/// `None` for the dtypes it writes through an untyped storage (uint16/32/64).
pub fn storage_class(dtype: &str) -> Option<&'static str> {
    TYPED_STORAGES
        .iter()
        .find(|(_, d)| *d == dtype)
        .map(|(c, _)| *c)
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
/// metadata])`, or `_rebuild_tensor_v3(..., dtype[, metadata])` (an untyped storage, the dtype
/// given; torch writes it for uint16/32/64).
fn rebuild_tensor(args: &[Value], dtype: Option<&str>) -> Result<Tensor, String> {
    let [Value::Storage(storage), Value::Int(offset), size, stride, ..] = args else {
        return Err("a tensor rebuilt from arguments tessera cannot read".into());
    };
    if *offset < 0 {
        return Err("a tensor with a negative storage offset".into());
    }
    let (size, stride) = (ints(size, "size")?, ints(stride, "stride")?);
    if size.len() != stride.len() {
        return Err(format!(
            "a tensor with {} sizes but {} strides",
            size.len(),
            stride.len()
        ));
    }
    Ok(Tensor {
        dtype: dtype.unwrap_or(storage_dtype(&storage.class)).to_string(),
        storage: storage.clone(),
        offset: *offset as u64,
        size,
        stride,
    })
}

/// The argument-free opcodes the writer uses.
pub const MARK: u8 = b'(';
pub const TUPLE: u8 = b't';
pub const EMPTY_DICT: u8 = b'}';
pub const SETITEM: u8 = b's';
pub const REDUCE: u8 = b'R';
pub const BINPERSID: u8 = b'Q';

/// Writes the pickle of one tensor (or a one-entry dict of it) in protocol 2, as `torch.save`
/// does, with the opcodes `torch.load(weights_only=True)` accepts.
pub struct Writer {
    out: Vec<u8>,
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

impl Writer {
    pub fn new() -> Self {
        Writer { out: vec![0x80, 2] }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }

    pub fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    /// One opcode without arguments ([`MARK`], [`TUPLE`], [`EMPTY_DICT`], [`SETITEM`],
    /// [`REDUCE`], [`BINPERSID`]).
    pub fn op(&mut self, code: u8) {
        self.out.push(code);
    }

    pub fn bool(&mut self, v: bool) {
        self.out.push(if v { 0x88 } else { 0x89 });
    }

    pub fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    pub fn int(&mut self, v: u64) {
        match v {
            0..=0xff => self.out.extend_from_slice(&[b'K', v as u8]),
            0x100..=0xffff => {
                self.out.push(b'M');
                self.out.extend_from_slice(&(v as u16).to_le_bytes());
            }
            0x1_0000..=0x7fff_ffff => {
                self.out.push(b'J');
                self.out.extend_from_slice(&(v as u32).to_le_bytes());
            }
            _ => {
                // LONG1: little-endian two's complement; a ninth byte keeps the sign positive.
                let mut bytes = v.to_le_bytes().to_vec();
                while bytes.len() > 1
                    && bytes[bytes.len() - 1] == 0
                    && bytes[bytes.len() - 2] & 0x80 == 0
                {
                    bytes.pop();
                }
                if bytes[bytes.len() - 1] & 0x80 != 0 {
                    bytes.push(0);
                }
                self.out.extend_from_slice(&[0x8a, bytes.len() as u8]);
                self.out.extend_from_slice(&bytes);
            }
        }
    }

    pub fn int_tuple(&mut self, values: &[u64]) {
        self.op(MARK);
        for &v in values {
            self.int(v);
        }
        self.op(TUPLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor_pickle(key: Option<&str>) -> Vec<u8> {
        let mut w = Writer::new();
        if let Some(k) = key {
            w.op(EMPTY_DICT);
            w.str(k);
        }
        w.global("torch._utils", "_rebuild_tensor_v2");
        w.op(MARK);
        w.op(MARK);
        w.str("storage");
        w.global("torch", "FloatStorage");
        w.str("0");
        w.str("cpu");
        w.int(6);
        w.op(TUPLE);
        w.op(BINPERSID);
        w.int(0);
        w.int_tuple(&[2, 3]);
        w.int_tuple(&[3, 1]);
        w.bool(false);
        w.global("collections", "OrderedDict");
        w.op(MARK);
        w.op(TUPLE);
        w.op(REDUCE);
        w.op(TUPLE);
        w.op(REDUCE);
        if key.is_some() {
            w.op(SETITEM);
        }
        w.finish()
    }

    #[test]
    fn what_the_writer_writes_reads_back() {
        let want = Tensor {
            storage: Storage {
                class: "FloatStorage".into(),
                key: "0".into(),
                numel: 6,
            },
            dtype: "float32".into(),
            offset: 0,
            size: vec![2, 3],
            stride: vec![3, 1],
        };
        assert_eq!(load(&tensor_pickle(None)), Ok(Value::Tensor(want.clone())));
        assert_eq!(
            load(&tensor_pickle(Some("x"))),
            Ok(Value::Dict(vec![(
                Value::Str("x".into()),
                Value::Tensor(want)
            )]))
        );
    }

    #[test]
    fn integers_of_every_width_round_trip() {
        for v in [
            0,
            1,
            255,
            256,
            65535,
            65536,
            0x7fff_ffff,
            0x8000_0000,
            1 << 40,
            i64::MAX as u64,
        ] {
            let mut w = Writer::new();
            w.int(v);
            assert_eq!(load(&w.finish()), Ok(Value::Int(v as i64)), "{v}");
        }
        assert_eq!(long(&[0xff]), Ok(-1));
        assert_eq!(long(&[0x00, 0x80]), Ok(-32768));
    }

    #[test]
    fn memo_and_protocol_4_opcodes_are_read() {
        // b'\x80\x04\x95...' with SHORT_BINUNICODE, MEMOIZE, BINGET, TUPLE2, STOP.
        let p = [
            0x80, 4, 0x95, 0, 0, 0, 0, 0, 0, 0, 0, 0x8c, 1, b'a', 0x94, b'h', 0, 0x86, b'.',
        ];
        assert_eq!(
            load(&p),
            Ok(Value::Tuple(vec![
                Value::Str("a".into()),
                Value::Str("a".into())
            ]))
        );
    }

    #[test]
    fn corrupt_pickles_are_errors_not_panics() {
        let good = tensor_pickle(Some("x"));
        for cut in 0..good.len() {
            assert!(load(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(load(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.")
            .is_ok_and(|v| v == Value::Opaque("os.system".into())));
        assert!(load(b"\x80\x02i").unwrap_err().contains("opcode 0x69"));
        assert!(load(b"h\x05.").unwrap_err().contains("memo entry 5"));
        assert!(load(b"X\xff\xff\xff\xff")
            .unwrap_err()
            .contains("truncated"));
        // A list that doubles with every few bytes stops at the copy budget.
        let mut bomb = b"\x80\x02]\x94".to_vec();
        for i in 0..40u8 {
            bomb.extend_from_slice(&[b'h', i, b'h', i, 0x86, 0x94]);
        }
        bomb.push(b'.');
        assert!(load(&bomb).unwrap_err().contains("memo"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = load(&bytes);
        }

        #[test]
        fn mutated_tensor_pickles_never_panic(at in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut p = tensor_pickle(Some("k"));
            let i = at % p.len();
            p[i] = byte;
            let _ = load(&p);
        }
    }
}
