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

/// Runs `parse` on another thread and fails if it has not answered within `limit` (a hang guard, not a timing
/// test: the backtracking parser took ~15 s for 16 unclosed parentheses and 3× longer for each one more).
fn parse_within(text: String, limit: std::time::Duration) -> Result<Prompt> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(parse(&text));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the prompt parser did not finish within {limit:?}"))
}

#[test]
fn nested_parentheses_parse_in_linear_time() {
    let limit = std::time::Duration::from_secs(20);
    // Unclosed: compel reads them as text.
    let unclosed = format!("{}x", "(".repeat(40));
    let Prompt::Weighted(fragments) = parse_within(unclosed.clone(), limit).expect("parses") else {
        panic!("not fragments")
    };
    assert_eq!(
        fragments,
        vec![Fragment {
            text: unclosed,
            weight: 1.0
        }]
    );
    // Closed and weighted at every level: the weights multiply.
    let depth = MAX_NESTING;
    let closed = format!("{}x{}", "(".repeat(depth), ")+".repeat(depth));
    let Prompt::Weighted(fragments) = parse_within(closed, limit).expect("parses") else {
        panic!("not fragments")
    };
    assert_eq!(fragments.len(), 1);
    assert_eq!(fragments[0].text, "x");
    assert!((fragments[0].weight / 1.1f64.powi(depth as i32) - 1.0).abs() < 1e-12);
    // Quoted groups and blends go through the same memoised readers.
    let quoted = format!("\"{}a\" b", "(".repeat(40));
    parse_within(quoted, limit).expect("parses");
    let blend = format!("(\"{}a\", b).blend(1, 1)", "(".repeat(40));
    parse_within(blend, limit).expect("parses");
}

#[test]
fn nesting_deeper_than_the_limit_is_refused_by_name() {
    let deep = format!("{}x", "(".repeat(MAX_NESTING + 1));
    let err = parse(&deep).expect_err("too deep");
    assert!(
        matches!(&err, Error::InvalidRequest { field, message } if *field == "prompt" && message.contains("101 levels")),
        "{err}"
    );
    // 100 000 of them: refused at once, no stack overflow.
    assert!(parse(&"(".repeat(100_000)).is_err());
    // Escaped parentheses are text and do not count.
    let escaped = "\\(".repeat(MAX_NESTING + 1);
    assert!(parse(&escaped).is_ok());
}

#[test]
fn an_empty_prompt_is_no_blend_and_gives_no_warning() {
    // Issue 18: `ember generate ""` warned that the `:` weights added up to zero.
    for text in ["", "   "] {
        let parsed = parse_invokeai(text, false).expect("parses");
        assert!(parsed.warnings.is_empty(), "{text:?}: {:?}", parsed.warnings);
        assert!(matches!(parsed.prompt, Prompt::Weighted(_)));
    }
    // A real zero sum still warns.
    let zero = parse_invokeai("a cat:1 a dog:-1", false).expect("parses");
    assert_eq!(zero.warnings.len(), 1, "{:?}", zero.warnings);
}

#[test]
fn a_colon_between_digits_warns_that_it_makes_a_blend() {
    // InvokeAI's reading stays (a blend of "12" and " pm"), but the user is told, with the escape to use.
    let parsed = parse_invokeai("12:30 pm", false).expect("parses");
    assert!(matches!(parsed.prompt, Prompt::Blend(_)));
    assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
    assert!(
        parsed.warnings[0].contains("`12:30`") && parsed.warnings[0].contains("12\\:30"),
        "{:?}",
        parsed.warnings
    );
    // Intended blends and escaped colons: no warning.
    assert!(parse_invokeai("a cat:0.7 a dog:0.3", false)
        .expect("parses")
        .warnings
        .is_empty());
    let escaped = parse_invokeai("at 12\\:30 pm", false).expect("parses");
    assert!(escaped.warnings.is_empty() && matches!(escaped.prompt, Prompt::Weighted(_)));
}
