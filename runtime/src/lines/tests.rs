use serde_json::{Value, json};

use super::json::{BOUND, Bounded};
use super::report::retyped;
use super::*;
use crate::Manager;

fn msgpack(value: &rmpv::Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, value).unwrap();
    bytes
}

fn bounded(bytes: &[u8]) -> Bounded {
    rmp_serde::from_slice(bytes).unwrap()
}

fn json_of(bytes: &[u8]) -> Value {
    rmp_serde::from_slice::<Json>(bytes).unwrap().0
}

#[test]
fn json_takes_any_value_as_the_streamed_conversion_writes_it() {
    use rmpv::Value as M;
    let values = [
        M::Map(vec![
            (M::from(1), M::from("x")),
            (M::Array(vec![M::from(1)]), M::Nil),
            (M::from("b"), M::Binary(vec![0, 1, 255])),
            (M::from(2.5), M::Boolean(true)),
        ]),
        M::Array(vec![
            M::from(u64::MAX),
            M::from(i64::MIN),
            M::F64(f64::NAN),
            M::F32(0.5),
            M::from("é\"\n"),
        ]),
        M::from(7),
    ];
    for value in values {
        let bytes = msgpack(&value);
        let expected = crate::msgpack_to_json(&bytes).unwrap();
        assert_eq!(json_of(&bytes), expected, "{value}");
        assert_eq!(bounded(&bytes), Bounded::Value(expected), "{value}");
    }
}

#[test]
fn a_bounded_value_past_the_bound_is_too_large_and_one_within_it_is_whole() {
    use rmpv::Value as M;
    // A string whose JSON is exactly the bound fits; a byte more does not.
    let fits = M::from("y".repeat(BOUND - 2));
    assert_eq!(
        bounded(&msgpack(&fits)),
        Bounded::Value(json!("y".repeat(BOUND - 2)))
    );
    let over = M::from("y".repeat(BOUND - 1));
    assert_eq!(bounded(&msgpack(&over)), Bounded::TooLarge);
    // Binary is an array of numbers: 16 MiB of it is refused before any is built.
    let binary = msgpack(&M::Binary(vec![7; 16 << 20]));
    assert_eq!(bounded(&binary), Bounded::TooLarge);
    // As is an array of a million small numbers, and one nested in a map among others.
    let many = M::Array(vec![M::from(0); 1 << 20]);
    assert_eq!(bounded(&msgpack(&many)), Bounded::TooLarge);
    let nested = M::Map(vec![
        (M::from("a"), M::from(1)),
        (M::from("b"), many.clone()),
        (M::from("c"), M::from(2)),
    ]);
    assert_eq!(bounded(&msgpack(&nested)), Bounded::TooLarge);
    // The decoder is left where the value ends: the rest of an array of them still reads.
    let after = msgpack(&M::Array(vec![nested, M::from("next")]));
    let (first, second): (Bounded, Bounded) = rmp_serde::from_slice(&after).unwrap();
    assert_eq!(
        (first, second),
        (Bounded::TooLarge, Bounded::Value(json!("next")))
    );
}

#[test]
fn a_key_written_twice_is_charged_once() {
    use rmpv::Value as M;
    // Four values of 400 KiB under two keys (`1` and `"1"` are one key in JSON): 1.6 MiB as
    // written, 800 KiB as JSON, which is within the bound.
    let big = |c: &str| M::from(c.repeat(400 << 10));
    let map = M::Map(vec![
        (M::from("k"), big("a")),
        (M::from("k"), big("b")),
        (M::from(1), big("c")),
        (M::from("1"), big("d")),
        (M::from("k"), M::from("last")),
    ]);
    let bytes = msgpack(&map);
    let expected = json!({"k": "last", "1": "d".repeat(400 << 10)});
    assert_eq!(bounded(&bytes), Bounded::Value(expected.clone()));
    assert_eq!(json_of(&bytes), expected);
}

#[test]
fn lines_skip_blanks_count_every_line_and_end_at_a_read_error() {
    let text = "1\n\n \u{3000}\r\n[2, \"@q\"]\r\n{bad\n\"last\"";
    let got: Vec<_> = Lines::new(text.as_bytes()).collect();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].as_ref().unwrap(), &json!(1));
    assert_eq!(got[1].as_ref().unwrap(), &json!([2, "@q"]));
    match &got[2] {
        Err(LinesError::BadLine { line: 5, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(got[3].as_ref().unwrap(), &json!("last"));

    // Not UTF-8: one read error, then nothing.
    let bytes: &[u8] = b"1\n\xff\xfe\n2\n";
    let got: Vec<_> = Lines::new(bytes).collect();
    assert_eq!(got.len(), 2);
    assert!(matches!(got[1], Err(LinesError::Read(_))), "{got:?}");
    let e = got.into_iter().nth(1).unwrap().unwrap_err();
    assert_eq!(e.to_string(), "cannot read the input");
}

fn table() -> Objects {
    let manager = Manager::new();
    let mut objects = Objects::new();
    objects.create(&manager, "q", "queue").unwrap();
    objects.create(&manager, "p", "pipe").unwrap();
    objects
}

#[test]
fn references_resolve_to_objects_and_pipe_ends_at_the_top_level_only() {
    let objects = table();
    let Some(Object::Queue(q)) = objects.get("q") else {
        panic!("no queue");
    };
    let Some(Object::Pipe(_, one)) = objects.get("p") else {
        panic!("no pipe");
    };
    let input = json!(["@q", "@p.1", ["@q"], "@nope", "@p.2", "q", 5]);
    assert_eq!(
        encode_input(&objects, &input, true).unwrap(),
        crate::encode_args(&(q, one, ["@q"], "@nope", "@p.2", "q", 5)).unwrap()
    );
    // Without star, the whole input is the one argument: an array is not looked into.
    assert_eq!(
        encode_input(&objects, &input, false).unwrap(),
        crate::encode_args(&(&input,)).unwrap()
    );
    assert_eq!(
        encode_input(&objects, &json!("@q"), false).unwrap(),
        crate::encode_args(&(q,)).unwrap()
    );
    match encode_input(&objects, &json!(5), true) {
        Err(crate::Error::BadArgs(m)) => {
            assert_eq!(m, "with --star each input must be a JSON array, got 5")
        }
        other => panic!("{other:?}"),
    }
    assert!(objects.end("p.0").is_some() && objects.end("p").is_none());
    assert!(objects.end("q.0").is_none());
}

#[test]
fn names_are_checked_before_kinds_and_each_refusal_says_why() {
    let manager = Manager::new();
    let mut objects = Objects::new();
    objects.create(&manager, "a", "dict").unwrap();
    let err = |objects: &mut Objects, name: &str, kind: &str| {
        objects
            .create(&manager, name, kind)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(&mut objects, "a", "queue"),
        "the name must be non-empty and used once"
    );
    assert_eq!(
        err(&mut objects, "", "nope"),
        "the name must be non-empty and used once"
    );
    assert_eq!(
        err(&mut objects, "x.y", "nope"),
        "the name must not contain `.` (`@NAME.0` is a pipe end)"
    );
    assert_eq!(
        err(&mut objects, "s", "semaphore:4294967296"),
        "`4294967296` is not a count"
    );
    for kind in ["nope", "semaphore", "barrier:0", "queue:1", ""] {
        assert!(
            err(&mut objects, "s", kind).starts_with("the kind is one of queue, dict"),
            "{kind}"
        );
    }
    assert_eq!(objects.len(), 1, "nothing refused was added");
    for (kind, parsed) in [
        ("semaphore:0", ObjectKind::Semaphore(0)),
        ("barrier:2", ObjectKind::Barrier(2)),
        ("rlock", ObjectKind::RLock),
    ] {
        assert_eq!(kind.parse::<ObjectKind>().unwrap(), parsed);
    }
}

#[test]
fn items_keep_their_inputs_until_taken_and_stop_at_the_first_bad_input() {
    let objects = table();
    let inputs = Lines::new("1\n\"@q\"\n[\nnever\n".as_bytes());
    let mut items = Items::new(inputs, &objects, false);
    let pending = items.pending();
    assert_eq!(
        items.next().unwrap().unwrap(),
        crate::encode_args(&(1,)).unwrap()
    );
    assert!(items.next().unwrap().is_ok());
    assert!(items.next().is_none(), "the bad line ends the items");
    assert!(items.next().is_none());
    assert_eq!(pending.len(), 2);
    assert_eq!(pending.take(1), Some(json!("@q")));
    assert_eq!(pending.take(1), None);
    assert_eq!(pending.take(0), Some(json!(1)));
    assert!(pending.is_empty());
    let e = pending.take_error().unwrap();
    assert!(matches!(e, LinesError::BadLine { line: 3, .. }), "{e:?}");
    assert!(pending.take_error().is_none());
}

#[test]
fn records_are_the_lines_the_cli_writes() {
    let mut records = RecordWriter::new("t", Vec::new());
    let big = rmp_serde::to_vec(&(1u8, "x", [2.5f64])).unwrap();
    assert!(records.write(&json!({"b": 1, "a": [1]}), Ok(big)).unwrap());
    assert!(
        !records
            .write(
                &json!("in"),
                Err(crate::Error::BadArgs("no \"good\"".into()))
            )
            .unwrap()
    );
    // Not UTF-8 in the result: an error record naming the task; nothing of it written.
    assert!(
        !records
            .write_result(&json!(3), &[0x91, 0xa1, 0xff])
            .unwrap()
    );
    assert_eq!((records.done(), records.failed()), (3, 2));
    assert_eq!(records.first_error(), Some("bad arguments: no \"good\""));
    let text = String::from_utf8(records.into_inner()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"input":{"a":[1],"b":1},"result":[1,"x",[2.5]]}"#
    );
    assert_eq!(
        lines[1],
        r#"{"error":"bad arguments: no \"good\"","input":"in"}"#
    );
    assert!(
        lines[2].starts_with(r#"{"error":"#) && lines[2].contains("task `t`"),
        "{}",
        lines[2]
    );
    assert!(lines[2].ends_with(r#","input":3}"#), "{}", lines[2]);
    assert!(text.ends_with('\n'));
}

fn report(objects: &Objects) -> Vec<Value> {
    let mut out = Vec::new();
    objects.report(&mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_report_gives_each_kind_its_contents() {
    let manager = Manager::new();
    let mut objects = Objects::new();
    for (name, kind) in [
        ("d", "dict"),
        ("l", "list"),
        ("p", "pipe"),
        ("e", "event"),
        ("s", "semaphore:3"),
        ("k", "lock"),
    ] {
        objects.create(&manager, name, kind).unwrap();
    }
    let (Some(Object::Dict(d)), Some(Object::List(l)), Some(Object::Pipe(a, _))) =
        (objects.get("d"), objects.get("l"), objects.get("p"))
    else {
        panic!("not made");
    };
    d.set(&Json(json!(1)), &Json(json!("one"))).unwrap();
    l.append(&Json(json!({"x": null}))).unwrap();
    a.send(&Json(json!("to end 1"))).unwrap();
    let lines = report(&objects);
    let expected = [
        json!({"contents": [[1, "one"]], "kind": "dict", "object": "d"}),
        json!({"contents": [{"x": null}], "kind": "list", "object": "l"}),
        json!({"contents": {"0": [], "1": ["to end 1"]}, "kind": "pipe", "object": "p"}),
        json!({"contents": {"set": false}, "kind": "event", "object": "e"}),
        json!({"contents": {"value": 3}, "kind": "semaphore", "object": "s"}),
        json!({"contents": null, "kind": "lock", "object": "k"}),
    ];
    assert_eq!(lines, expected);
}

#[test]
fn a_huge_binary_item_is_omitted_from_the_report_not_converted() {
    let manager = Manager::new();
    let mut objects = Objects::new();
    objects.create(&manager, "q", "queue").unwrap();
    objects.create(&manager, "l", "list").unwrap();
    objects.create(&manager, "p", "pipe").unwrap();
    let (Some(Object::Queue(q)), Some(Object::List(l)), Some(Object::Pipe(a, _))) =
        (objects.get("q"), objects.get("l"), objects.get("p"))
    else {
        panic!("not made");
    };
    // 15 MiB of bytes (under the 16 MiB message limit): 30 MiB of JSON at the least.
    let (q_raw, l_raw, a_raw): (
        crate::Queue<Item>,
        crate::List<Item>,
        crate::Connection<Item>,
    ) = (
        retyped(q).unwrap(),
        retyped(l).unwrap(),
        retyped(a).unwrap(),
    );
    for item in [Item::Int(1), Item::Bin(vec![200; 15 << 20]), Item::Int(2)] {
        q_raw.put(&item).unwrap();
        l_raw.append(&item).unwrap();
        a_raw.send(&item).unwrap();
    }
    let lines = report(&objects);
    // A queue's and a list's listings stop at the item that does not fit, counting it and
    // those after; a pipe end's counts it alone.
    assert_eq!(
        lines[0],
        json!({"contents": [1], "kind": "queue", "object": "q", "omitted": 2})
    );
    assert_eq!(
        lines[1],
        json!({"contents": [1], "kind": "list", "object": "l", "omitted": 2})
    );
    assert_eq!(
        lines[2],
        json!({"contents": {"0": [], "1": [1, 2]}, "kind": "pipe", "object": "p", "omitted": 1})
    );
}

/// What a task may store: a number, or binary data (MessagePack `bin`).
enum Item {
    Int(u64),
    Bin(Vec<u8>),
}

impl serde::Serialize for Item {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::Int(n) => s.serialize_u64(*n),
            Item::Bin(b) => s.serialize_bytes(b),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only put, never read back as this type.
        serde::de::IgnoredAny::deserialize(d).map(|_| Item::Int(0))
    }
}

#[test]
fn a_tenants_runtime_has_a_table_of_its_own() {
    // One table per runtime (a service's tenants): each reports its own objects.
    let tenants = [
        crate::Runtime::builder().build().unwrap(),
        crate::Runtime::builder().build().unwrap(),
    ];
    let tables: Vec<Objects> = tenants
        .iter()
        .enumerate()
        .map(|(i, tenant)| {
            let mut objects = Objects::new();
            let Ok(Object::Queue(q)) = objects.create(&tenant.manager(), "q", "queue") else {
                panic!("no queue");
            };
            q.put(&Json(json!(i))).unwrap();
            objects
        })
        .collect();
    for (i, objects) in tables.iter().enumerate() {
        assert_eq!(
            report(objects),
            [json!({"contents": [i], "kind": "queue", "object": "q"})]
        );
    }
}
