//! The machine on hand-assembled pickles: what it accepts, what it refuses, and that garbage never panics.

use super::*;
use crate::value::StorageDtype;

/// `{'w': _rebuild_tensor_v2(persid(('storage', torch.HalfStorage, '0', 'cpu', 6)), 0, (2, 3), (3, 1), False,
/// OrderedDict())}`, the way torch.save (protocol 2) writes it.
fn tensor_dict() -> Vec<u8> {
    let mut p =
        b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storage"
            .to_vec();
    p.extend_from_slice(
        b"ctorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86",
    );
    p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtRu.");
    p
}

#[test]
fn reads_a_tensor_dict() {
    let t = parse_state_dict(&tensor_dict()).expect("valid pickle");
    assert_eq!(t.len(), 1);
    let (name, info) = &t[0];
    assert_eq!(name, "w");
    assert_eq!(info.dtype, StorageDtype::F16);
    assert_eq!(info.shape, [2, 3]);
    assert_eq!(info.strides, [3, 1]);
    assert_eq!(
        (info.storage_key.as_str(), info.storage_offset, info.storage_numel),
        ("0", 0, 6)
    );
    assert!(info.is_contiguous());
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let p = tensor_dict();
    for n in 0..p.len() {
        assert!(parse_state_dict(&p[..n]).is_err(), "prefix of {n} bytes accepted");
    }
}

#[test]
fn random_mutations_never_panic() {
    // Deterministic xorshift: flips bytes of a valid pickle and also feeds pure noise.
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let base = tensor_dict();
    for _ in 0..20_000 {
        let mut p = base.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % p.len();
            p[i] = next() as u8;
        }
        let _ = parse_state_dict(&p);
        let noise: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
        let _ = parse_state_dict(&noise);
    }
}

fn refused(p: &[u8]) -> String {
    match parse_state_dict(p) {
        Ok(t) => panic!("accepted: {t:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn refuses_unlisted_globals_by_name() {
    let msg = refused(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueR.");
    assert!(msg.contains("`posix.system`") && msg.contains(".safetensors"), "{msg}");
    let msg = refused(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.");
    assert!(msg.contains("`builtins.eval`"), "{msg}");
    // A storage class name that torch does not have is not a storage.
    assert!(refused(b"\x80\x02ctorch\nload\n.").contains("`torch.load`"));
}

#[test]
fn refuses_object_building_opcodes() {
    assert!(refused(b"\x80\x02]}b.").contains("BUILD"));
    assert!(refused(b"(i__main__\nX\n.").contains("INST"));
    assert!(refused(b"\x80\x02(ccollections\nOrderedDict\no.").contains("OBJ"));
    // NEWOBJ of an allowlisted class with arguments could run its constructor on data: refused too.
    assert!(refused(b"\x80\x02ccollections\nOrderedDict\n]\x85\x81.").contains("NEWOBJ"));
}

#[test]
fn build_on_ordered_dict_sets_only_ignored_metadata() {
    // What torch writes for a module's state_dict(): OrderedDict + BUILD({'_metadata': ...}).
    let mut p = tensor_dict();
    p.truncate(p.len() - 1); // drop STOP
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R}X\x09\x00\x00\x00_metadata}sb");
    // Result is now the OrderedDict; wrap: the tensor dict is discarded, so expect "no tensors".
    p.push(b'.');
    assert!(refused(&p).contains("no tensors"));
}

#[test]
fn deep_nesting_and_cycles_do_not_overflow() {
    let mut deep = b"\x80\x02N".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 1_000_000)); // TUPLE1 a million times
    deep.push(b'.');
    assert!(refused(&deep).contains("not a dict"));
    // l = []; l.append(l); {'a': l}
    let cyc = b"\x80\x02]q\x00h\x00a}X\x01\x00\x00\x00ah\x00s.";
    assert!(refused(cyc).contains("no tensors"));
}

#[test]
fn views_must_fit_their_storage() {
    let p = tensor_dict();
    // Storage of 5 elements for a 2×3 view.
    let bad: Vec<u8> = {
        let i = p.windows(5).position(|w| w == b"cpuK\x06").expect("numel in fixture") + 4;
        let mut b = p.clone();
        b[i] = 5;
        b
    };
    assert!(refused(&bad).contains("storage 0 holding 5"));
}

#[test]
fn memo_and_long_ints() {
    assert!(refused(b"\x80\x02h\x07.").contains("memo entry 7"));
    assert_eq!(long1(&[0xff]).ok(), Some(-1));
    assert_eq!(long1(&[0x00, 0x01]).ok(), Some(256));
    assert!(long1(&[1; 9]).is_err());
}
