//! The reader on real `torch.save` files made by tools/oracle/make_bad_checkpoints.py: values must match what
//! torch reads back (tests/fixtures/pickle/views.json), hostile files must be refused without running anything.

use ember_pickle::{Checkpoint, Error, StorageDtype};
use std::path::PathBuf;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/")).join(rel)
}

fn as_f64(dtype: StorageDtype, bytes: &[u8]) -> Vec<f64> {
    let es = dtype.size_in_bytes();
    bytes
        .chunks_exact(es)
        .map(|c| match dtype {
            StorageDtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            StorageDtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
            StorageDtype::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
            StorageDtype::I64 => i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
            other => panic!("unexpected dtype {other:?}"),
        })
        .collect()
}

fn check_views(file: &str) {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pickle/views.json")).expect("views.json"))
            .expect("json");
    let ckpt = Checkpoint::open(fixture(file)).expect("checkpoint opens");
    let names: Vec<&str> = ckpt.tensors().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "transposed",
            "row_view",
            "sliced",
            "half",
            "bf16",
            "long",
            "scalar",
            "param"
        ]
    );
    for (name, info) in ckpt.tensors() {
        let e = &expected[name];
        let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).expect("shape");
        let stride: Vec<usize> = serde_json::from_value(e["stride"].clone()).expect("stride");
        assert_eq!(info.shape, shape, "{name}");
        assert_eq!(info.strides, stride, "{name}");
        assert_eq!(
            info.storage_offset as u64,
            e["offset"].as_u64().expect("offset"),
            "{name}"
        );
        let values: Vec<f64> = serde_json::from_value(e["values"].clone()).expect("values");
        let got = as_f64(info.dtype, &ckpt.tensor_bytes(info).expect("tensor bytes"));
        // Exact: the bytes are torch's own; float16/bfloat16 values were widened losslessly by torch.
        assert_eq!(got, values, "{name}");
    }
}

#[test]
fn strided_offset_and_narrow_dtypes_match_torch() {
    check_views("pickle/views.ckpt");
}

#[test]
fn protocol_4_matches_torch() {
    check_views("pickle/proto4.ckpt");
}

#[test]
fn hostile_pickles_are_refused_and_never_run() {
    let markers = ["/tmp/ember-pwned-5b1e0c7d-os-system", "/tmp/ember-pwned-5b1e0c7d-eval"];
    for m in markers {
        let _ = std::fs::remove_file(m);
    }
    for (file, global) in [
        ("bad/pwned_os_system.ckpt", "`posix.system`"),
        ("bad/pwned_eval.ckpt", "`__builtin__.eval`"),
        ("bad/unknown_class.ckpt", "`__main__.Unknown`"),
    ] {
        let err = Checkpoint::open(fixture(file)).err().expect("hostile file refused");
        assert!(matches!(err, Error::UnsafeGlobal(_)), "{file}: {err}");
        assert!(err.to_string().contains(global), "{file}: {err}");
    }
    let err = Checkpoint::open(fixture("bad/build_list.ckpt"))
        .err()
        .expect("BUILD refused");
    assert!(err.to_string().contains("BUILD"), "{err}");
    for m in markers {
        assert!(!std::path::Path::new(m).exists(), "{m} was created");
    }
}

#[test]
fn corrupt_files_are_errors() {
    for file in [
        "bad/truncated.ckpt",
        "bad/garbage.ckpt",
        "bad/empty.ckpt",
        "bad/garbage.safetensors",
    ] {
        let err = Checkpoint::open(fixture(file)).err().expect("corrupt file refused");
        assert!(matches!(err, Error::Malformed(_)), "{file}: {err}");
    }
    // The pickle is fine but a storage is short: the error comes when the tensor is read.
    let ckpt = Checkpoint::open(fixture("bad/short_storage.ckpt")).expect("pickle is valid");
    let (_, info) = &ckpt.tensors()[0];
    let err = ckpt.tensor_bytes(info).expect_err("short storage refused");
    assert!(err.to_string().contains("truncated"), "{err}");
}
