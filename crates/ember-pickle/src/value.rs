//! The values the restricted pickle machine can hold, and the tensor descriptions it produces.
//!
//! Only data is representable: there is no "object" value, so nothing the pickle builds can carry code.

use std::cell::RefCell;
use std::rc::Rc;

/// Element type of a PyTorch storage (`torch.FloatStorage` → `F32`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// The storage class named by a `torch.<Name>Storage` global.
    pub(crate) fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => StorageDtype::F32,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "DoubleStorage" => StorageDtype::F64,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }

    /// The dtype named by a `torch.<name>` global such as `torch.float16` (only ever used as data).
    pub(crate) fn from_torch_dtype(name: &str) -> Option<Self> {
        Some(match name {
            "float64" | "double" => StorageDtype::F64,
            "float32" | "float" => StorageDtype::F32,
            "float16" | "half" => StorageDtype::F16,
            "bfloat16" => StorageDtype::BF16,
            "int64" | "long" => StorageDtype::I64,
            "int32" | "int" => StorageDtype::I32,
            "int16" | "short" => StorageDtype::I16,
            "int8" => StorageDtype::I8,
            "uint8" => StorageDtype::U8,
            "bool" => StorageDtype::Bool,
            _ => return None,
        })
    }
}

/// Where one tensor's elements live: a view (shape, strides, offset in elements) into a storage of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: StorageDtype,
    pub shape: Vec<usize>,
    /// In elements, as PyTorch reports them.
    pub strides: Vec<usize>,
    /// Name of the storage's file under `<archive>/data/`.
    pub storage_key: String,
    /// Offset of the first element in the storage, in elements.
    pub storage_offset: usize,
    /// Number of elements the pickle says the storage holds.
    pub storage_numel: usize,
}

impl TensorInfo {
    /// Number of elements of the view.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the view is laid out row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&dim, &stride) in self.shape.iter().zip(&self.strides).rev() {
            if dim != 1 && stride != expected {
                return false;
            }
            expected = expected.saturating_mul(dim);
        }
        true
    }
}

/// Callables and classes the machine accepts from `GLOBAL`; everything else is refused when it is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    StorageClass(StorageDtype),
    TorchDtype(StorageDtype),
    /// pytorch_lightning's `AttributeDict`: a plain dict subclass, accepted only as data (no BUILD).
    AttributeDict,
}

impl Global {
    /// Resolves `module.name`; `None` means the global is not allowed.
    pub(crate) fn resolve(module: &str, name: &str) -> Option<Global> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("pytorch_lightning.utilities.parsing", "AttributeDict")
            | ("lightning_fabric.utilities.data", "AttributeDict")
            | ("lightning.fabric.utilities.data", "AttributeDict") => Some(Global::AttributeDict),
            ("torch", n) => StorageDtype::from_storage_class(n)
                .map(Global::StorageClass)
                .or_else(|| StorageDtype::from_torch_dtype(n).map(Global::TorchDtype)),
            _ => None,
        }
    }
}

/// A dict built by the pickle; `build_ok` marks an `OrderedDict`, whose BUILD only sets plain attributes
/// (torch stores the state dict's `_metadata` that way) and is therefore ignored rather than refused.
#[derive(Debug, Default)]
pub(crate) struct DictObj {
    pub items: Vec<(Value, Value)>,
    pub build_ok: bool,
}

/// A storage reference from a persistent id: `('storage', torch.FloatStorage, '0', 'cpu', numel)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub dtype: StorageDtype,
    pub key: String,
    pub numel: usize,
}

/// One value on the machine's stack or in its memo. Containers are shared (`Rc`) as in Python, so that
/// `GET` is O(1) and mutation through one reference is seen through the others.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    /// Booleans and floats only occur in metadata (flags, learning rates): their values are never needed.
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<DictObj>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorInfo>),
}

impl Value {
    /// A short description for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class or function",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Drops values without recursion: a hostile pickle can nest containers millions deep (or make cycles through
/// the memo), which the default recursive drop would turn into a stack overflow (or a leak).
pub(crate) fn drop_flat(mut work: Vec<Value>) {
    while let Some(v) = work.pop() {
        match v {
            Value::Tuple(rc) => {
                if let Ok(items) = Rc::try_unwrap(rc) {
                    work.extend(items);
                }
            }
            Value::List(rc) => {
                // Taking the contents even when shared also breaks reference cycles.
                if let Ok(mut items) = rc.try_borrow_mut() {
                    work.append(&mut items);
                }
            }
            Value::Dict(rc) => {
                if let Ok(mut d) = rc.try_borrow_mut() {
                    for (k, v) in d.items.drain(..) {
                        work.push(k);
                        work.push(v);
                    }
                }
            }
            _ => {}
        }
    }
}
