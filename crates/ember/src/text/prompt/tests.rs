//! Parser unit tests; the golden parses against compel itself are in tests/prompt_weighting.rs.

use super::*;

fn weighted(text: &str) -> Vec<(String, f64)> {
    match parse(text) {
        Ok(Prompt::Weighted(f)) => f.into_iter().map(|f| (f.text, f.weight)).collect(),
        other => panic!("{text:?} did not parse to fragments: {other:?}"),
    }
}

#[test]
fn plus_and_minus_use_compels_bases() {
    // compel: pow(1.1, n) and pow(0.9, n).
    assert_eq!(weighted("cat++"), vec![("cat".into(), 1.1f64.powf(2.0))]);
    assert_eq!(weighted("(a dog)---"), vec![("a dog".into(), 0.9f64.powf(3.0))]);
}

#[test]
fn nested_weights_multiply_and_equal_neighbours_fuse() {
    assert_eq!(
        weighted("a ((b)2 c)1.5 d"),
        vec![
            ("a".into(), 1.0),
            ("b".into(), 3.0),
            ("c".into(), 1.5),
            ("d".into(), 1.0)
        ]
    );
    assert_eq!(weighted("a (b)1 c"), vec![("a b c".into(), 1.0)]);
}

#[test]
fn unbalanced_parentheses_are_text() {
    assert_eq!(weighted("a (cat"), vec![("a (cat".into(), 1.0)]);
    assert_eq!(weighted("\\(cat\\)+"), vec![("(cat)".into(), 1.1)]);
}

#[test]
fn brackets_go_to_the_negative_prompt() {
    let (positive, negative) = split_negative("a cat [blurry] on a mat [ugly hands]");
    assert_eq!(positive, "a cat on a mat ");
    assert_eq!(negative, "blurry ugly hands");
    assert_eq!(
        split_negative("no brackets"),
        ("no brackets".to_string(), String::new())
    );
}

#[test]
fn legacy_blend_is_normalised_unless_skipped() {
    let parsed = parse_invokeai("a cat:1 a dog:3", false).expect("parses");
    let Prompt::Blend(blend) = parsed.prompt else {
        panic!("not a blend: {parsed:?}")
    };
    assert_eq!(blend.weights, vec![0.25, 0.75]);
    assert!(blend.normalize);
    let parsed = parse_invokeai("a cat:1 a dog:3", true).expect("parses");
    let Prompt::Blend(blend) = parsed.prompt else {
        panic!("not a blend: {parsed:?}")
    };
    assert_eq!(blend.weights, vec![1.0, 3.0]);
    assert!(!blend.normalize);
}

#[test]
fn escaped_colon_is_not_a_blend() {
    let parsed = parse_invokeai("time\\: noon", false).expect("parses");
    assert_eq!(
        parsed.prompt,
        Prompt::Weighted(vec![Fragment {
            text: "time: noon".into(),
            weight: 1.0
        }])
    );
}

#[test]
fn empty_prompt_is_one_empty_fragment() {
    assert_eq!(weighted("   "), vec![(String::new(), 1.0)]);
    assert_eq!(weighted("()"), vec![(String::new(), 1.0)]);
}
