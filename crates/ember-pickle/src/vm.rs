//! The restricted pickle machine: interprets only the opcodes a `torch.save`d state dict uses, and only
//! "calls" the allowlisted globals, which it evaluates itself (it never runs anything named by the file).

use crate::error::{malformed, Error, Result};
use crate::value::{drop_flat, DictObj, Global, StorageRef, TensorInfo, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Most values the stack may hold at once, and most memo entries (a state dict needs tens of thousands).
const MAX_STACK: usize = 4_000_000;
const MAX_MEMO: usize = 4_000_000;
/// Most dimensions of a tensor.
const MAX_DIMS: usize = 16;

/// Runs the pickle and returns its result's tensors, with their dict keys.
///
/// The result must be a dict of tensors, or a dict with such a dict under `"state_dict"` (or, failing both, with
/// dicts of tensors as values: their tensors are named `outer.inner`); other entries (step counters, metadata) are
/// skipped.
pub fn parse_state_dict(pickle: &[u8]) -> Result<Vec<(String, TensorInfo)>> {
    let mut vm = Machine::new(pickle);
    let result = vm.run();
    let out = result.and_then(|top| {
        let tensors = extract(&top);
        vm.stack.push(top);
        tensors
    });
    drop(vm);
    out
}

/// Finds the tensor dict in the pickle's result.
fn extract(top: &Value) -> Result<Vec<(String, TensorInfo)>> {
    let Value::Dict(dict) = top else {
        return Err(malformed(format!(
            "the pickle holds a {}, not a dict of tensors",
            top.kind()
        )));
    };
    let dict = dict.borrow();
    let nested = dict.items.iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), Value::Dict(d)) if &**k == "state_dict" => Some(d.clone()),
        _ => None,
    });
    let collect = |d: &DictObj| -> Vec<(String, TensorInfo)> {
        // Later entries win, as in a Python dict with a repeated key.
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut out: Vec<(String, TensorInfo)> = Vec::new();
        for (k, v) in &d.items {
            if let (Value::Str(k), Value::Tensor(t)) = (k, v) {
                match index.get(&**k) {
                    Some(&i) => out[i].1 = (**t).clone(),
                    None => {
                        index.insert(k.to_string(), out.len());
                        out.push((k.to_string(), (**t).clone()));
                    }
                }
            }
        }
        out
    };
    let mut tensors = match nested {
        Some(inner) => collect(&inner.borrow()),
        None => collect(&dict),
    };
    if tensors.is_empty() {
        // Dicts of tensors one level down, as `outer.inner` (A1111's embeddings keep theirs under
        // `string_to_param`, next to ints and strings).
        for (k, v) in &dict.items {
            if let (Value::Str(outer), Value::Dict(inner)) = (k, v) {
                let inner = collect(&inner.borrow());
                tensors.extend(inner.into_iter().map(|(name, t)| (format!("{outer}.{name}"), t)));
            }
        }
    }
    if tensors.is_empty() {
        return Err(malformed("the pickle holds no tensors (is this a model checkpoint?)"));
    }
    Ok(tensors)
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl Drop for Machine<'_> {
    fn drop(&mut self) {
        let mut all = std::mem::take(&mut self.stack);
        all.extend(self.memo.drain().map(|(_, v)| v));
        drop_flat(all);
    }
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| malformed("the pickle ends in the middle of an instruction (truncated file?)"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A newline-terminated line (text opcodes).
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| malformed("unterminated text field in the pickle"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| malformed("text field is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(Error::Limit(format!(
                "more than {MAX_STACK} values on the pickle stack"
            )));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        // Never pop below the innermost mark: that would be a malformed pickle.
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(malformed("stack underflow in the pickle"));
        }
        self.stack
            .pop()
            .ok_or_else(|| malformed("stack underflow in the pickle"))
    }

    fn top(&self) -> Result<&Value> {
        self.stack
            .last()
            .ok_or_else(|| malformed("stack underflow in the pickle"))
    }

    /// Pops everything above the innermost mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| malformed("the pickle closes a MARK it never opened"))?;
        if m > self.stack.len() {
            return Err(malformed("inconsistent MARK in the pickle"));
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(Error::Limit(format!("more than {MAX_MEMO} memo entries in the pickle")));
        }
        if let Some(old) = self.memo.insert(idx, v) {
            drop_flat(vec![old]);
        }
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = self.memo.get(&idx).cloned();
        let v = v.ok_or_else(|| malformed(format!("the pickle reads memo entry {idx}, which was never stored")))?;
        self.push(v)
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO: versions 2..=5 share the binary opcodes used here.
                    let v = self.u8()?;
                    if !(2..=5).contains(&v) {
                        return Err(Error::Unsupported(format!("pickle protocol {v}")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(), // STOP
                b'}' => self.push(Value::Dict(Rc::default()))?,
                b']' => self.push(Value::List(Rc::default()))?,
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())))?,
                b'(' => self.marks.push(self.stack.len()),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(items)))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.take(n)?;
                    self.push_str(s)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?;
                    self.push_str(s)?;
                }
                b'V' => {
                    let s = unescape_raw_unicode(self.line()?)?;
                    self.push(Value::Str(s.into()))?;
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let i = parse_index(self.line()?)?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    // MEMOIZE: the next free index.
                    let i = u32::try_from(self.memo.len()).map_err(|_| Error::Limit("memo too large".into()))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'g' => {
                    let i = parse_index(self.line()?)?;
                    self.memo_get(i)?;
                }
                b'J' => {
                    let b = self.take(4)?;
                    self.push(Value::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.push(Value::Int(long1(b)?))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let _ = f64::from_be_bytes(a); // floats are metadata here; only their presence matters
                    self.push(Value::Float)?;
                }
                0x88 | 0x89 => self.push(Value::Bool)?, // NEWTRUE, NEWFALSE
                b'N' => self.push(Value::None)?,
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_load(&pid)?;
                    drop_flat(vec![pid]);
                    self.push(Value::Storage(Rc::new(storage)))?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = reduce(&func, &args)?;
                    drop_flat(vec![args]);
                    self.push(v)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.push_global(&m, &n)?;
                        }
                        _ => return Err(malformed("STACK_GLOBAL needs two strings")),
                    }
                }
                0x81 => {
                    // NEWOBJ: only for the allowlisted dict subclasses, built empty.
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let empty = matches!(&args, Value::Tuple(t) if t.is_empty());
                    match cls {
                        Value::Global(Global::AttributeDict) if empty => self.push(Value::Dict(Rc::default()))?,
                        Value::Global(Global::OrderedDict) if empty => self.push(ordered_dict())?,
                        _ => return Err(Error::UnsafeOpcode("NEWOBJ".into())),
                    }
                }
                b'b' => self.build()?,
                b'i' => return Err(Error::UnsafeOpcode("INST".into())),
                b'o' => return Err(Error::UnsafeOpcode("OBJ".into())),
                0x92 => return Err(Error::UnsafeOpcode("NEWOBJ_EX".into())),
                0x82..=0x84 => return Err(Error::UnsafeOpcode("EXT".into())),
                b'P' => return Err(Error::UnsafeOpcode("PERSID".into())),
                other => {
                    return Err(malformed(format!(
                        "unexpected pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    )))
                }
            }
        }
    }

    fn push_str(&mut self, bytes: &[u8]) -> Result<()> {
        let s = std::str::from_utf8(bytes).map_err(|_| malformed("a string in the pickle is not UTF-8"))?;
        self.push(Value::Str(s.into()))
    }

    fn push_global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::resolve(module, name) {
            Some(g) => self.push(Value::Global(g)),
            None => Err(Error::UnsafeGlobal(format!("{module}.{name}"))),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if items.chunks_exact(2).remainder().len() == 1 {
            return Err(malformed("SETITEMS with an odd number of values"));
        }
        let Value::Dict(d) = self.top()? else {
            return Err(malformed(format!("SETITEM on a {}", self.top()?.kind())));
        };
        let d = d.clone();
        let mut d = d
            .try_borrow_mut()
            .map_err(|_| malformed("dict modified while in use"))?;
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if !matches!(
                k,
                Value::Str(_) | Value::Int(_) | Value::Bool | Value::None | Value::Float
            ) {
                return Err(malformed(format!("a dict key is a {}", k.kind())));
            }
            d.items.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let Value::List(l) = self.top()? else {
            return Err(malformed(format!("APPEND on a {}", self.top()?.kind())));
        };
        let l = l.clone();
        let mut l = l
            .try_borrow_mut()
            .map_err(|_| malformed("list modified while in use"))?;
        l.extend(items);
        Ok(())
    }

    /// BUILD sets an object's state. Only an `OrderedDict`'s plain attributes (torch's `_metadata`) are
    /// accepted, and ignored; on anything else BUILD could call `__setstate__`, so it is refused.
    fn build(&mut self) -> Result<()> {
        let state = self.pop()?;
        let ok = match (self.top()?, &state) {
            (Value::Dict(d), Value::Dict(_)) => d.borrow().build_ok,
            _ => false,
        };
        drop_flat(vec![state]);
        if ok {
            Ok(())
        } else {
            Err(Error::UnsafeOpcode(format!("BUILD (on a {})", self.top()?.kind())))
        }
    }
}

fn ordered_dict() -> Value {
    Value::Dict(Rc::new(RefCell::new(DictObj {
        items: Vec::new(),
        build_ok: true,
    })))
}

/// Evaluates an allowlisted call.
fn reduce(func: &Value, args: &Value) -> Result<Value> {
    let Value::Tuple(args) = args else {
        return Err(malformed("REDUCE arguments are not a tuple"));
    };
    let Value::Global(g) = func else {
        return Err(malformed(format!("REDUCE calls a {}", func.kind())));
    };
    match g {
        Global::OrderedDict | Global::AttributeDict if args.is_empty() => Ok(match g {
            Global::OrderedDict => ordered_dict(),
            _ => Value::Dict(Rc::default()),
        }),
        Global::RebuildTensorV2 => rebuild_tensor(args),
        Global::RebuildParameter => match args.first() {
            Some(Value::Tensor(t)) => Ok(Value::Tensor(t.clone())),
            _ => Err(malformed("_rebuild_parameter without a tensor")),
        },
        _ => Err(malformed(format!(
            "unexpected call of {g:?} with {} arguments",
            args.len()
        ))),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
fn rebuild_tensor(args: &[Value]) -> Result<Value> {
    if !(6..=7).contains(&args.len()) {
        return Err(malformed(format!("_rebuild_tensor_v2 with {} arguments", args.len())));
    }
    let Value::Storage(storage) = &args[0] else {
        return Err(malformed("_rebuild_tensor_v2 without a storage"));
    };
    let offset = as_usize(&args[1], "storage offset")?;
    let shape = usize_tuple(&args[2], "size")?;
    let strides = usize_tuple(&args[3], "stride")?;
    if shape.len() != strides.len() || shape.len() > MAX_DIMS {
        return Err(malformed("tensor size and stride disagree"));
    }
    // The view must lie inside the storage (unless it is empty).
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let numel = numel.ok_or_else(|| Error::Limit("tensor size overflows".into()))?;
    if numel > 0 {
        let mut last = offset;
        for (&d, &s) in shape.iter().zip(&strides) {
            let span = (d - 1).checked_mul(s).and_then(|x| last.checked_add(x));
            last = span.ok_or_else(|| Error::Limit("tensor extent overflows".into()))?;
        }
        if last >= storage.numel {
            return Err(malformed(format!(
                "a tensor view reaches element {last} of storage {} holding {} elements",
                storage.key, storage.numel
            )));
        }
    }
    Ok(Value::Tensor(Rc::new(TensorInfo {
        dtype: storage.dtype,
        shape,
        strides,
        storage_key: storage.key.clone(),
        storage_offset: offset,
        storage_numel: storage.numel,
    })))
}

/// `('storage', torch.FloatStorage, key, location, numel)`.
fn persistent_load(pid: &Value) -> Result<StorageRef> {
    let Value::Tuple(t) = pid else {
        return Err(malformed("persistent id is not a tuple"));
    };
    match t.as_slice() {
        [Value::Str(kind), Value::Global(Global::StorageClass(dtype)), Value::Str(key), Value::Str(_), numel]
            if &**kind == "storage" =>
        {
            if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
                return Err(malformed(format!("invalid storage key {key:?}")));
            }
            Ok(StorageRef {
                dtype: *dtype,
                key: key.to_string(),
                numel: as_usize(numel, "storage size")?,
            })
        }
        _ => Err(malformed("unrecognised persistent id (expected a tensor storage)")),
    }
}

fn as_usize(v: &Value, what: &str) -> Result<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| malformed(format!("negative {what}"))),
        _ => Err(malformed(format!("{what} is a {}, not an int", v.kind()))),
    }
}

fn usize_tuple(v: &Value, what: &str) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| as_usize(x, what)).collect(),
        _ => Err(malformed(format!("tensor {what} is a {}, not a tuple", v.kind()))),
    }
}

/// LONG1: little-endian two's complement, at most 8 bytes here.
fn long1(b: &[u8]) -> Result<i64> {
    if b.is_empty() {
        return Ok(0);
    }
    if b.len() > 8 {
        return Err(Error::Unsupported("integer wider than 64 bits in the pickle".into()));
    }
    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
    let mut a = [fill; 8];
    a[..b.len()].copy_from_slice(b);
    Ok(i64::from_le_bytes(a))
}

fn parse_index(s: &str) -> Result<u32> {
    s.trim().parse().map_err(|_| malformed(format!("bad memo index {s:?}")))
}

/// Decodes pickle's raw-unicode-escape text (`\uXXXX`, `\UXXXXXXXX`; other characters as they are).
fn unescape_raw_unicode(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let width = match (c, chars.clone().next()) {
            ('\\', Some('u')) => 4,
            ('\\', Some('U')) => 8,
            _ => {
                out.push(c);
                continue;
            }
        };
        chars.next();
        let hex: String = chars.by_ref().take(width).collect();
        let code = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
        out.push(code.ok_or_else(|| malformed("bad escape in a text string"))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
