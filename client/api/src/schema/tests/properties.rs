//! Seeded properties: a request built to match a schema has no violations in
//! any form; a schema is compatible with itself and with itself plus an
//! optional input; arbitrary bodies never panic.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Map, Value};

use super::super::{compatibility, validate_request, ChangeKind, Dtype, Field, Schema};

fn config() -> Config {
    Config {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x5157_4552),
        failure_persistence: None,
        ..Config::default()
    }
}

fn arb_field(index: usize) -> impl Strategy<Value = Field> {
    (
        0..Dtype::ALL.len(),
        prop::collection::vec(prop_oneof![Just(-1i64), 1i64..4], 0..4),
        any::<bool>(),
        "[a-zé_]{0,6}",
    )
        .prop_map(move |(dtype, shape, optional, suffix)| Field {
            // The index keeps names unique; the suffix varies them.
            name: format!("f{index}{suffix}"),
            dtype: Dtype::ALL[dtype],
            shape,
            optional,
        })
}

fn arb_fields() -> impl Strategy<Value = Vec<Field>> {
    (0usize..6).prop_flat_map(|count| (0..count).map(arb_field).collect::<Vec<_>>())
}

fn arb_schema() -> impl Strategy<Value = Schema> {
    (arb_fields(), arb_fields()).prop_map(|(inputs, outputs)| Schema { inputs, outputs })
}

/// A small deterministic generator (splitmix64) for building values.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// Concrete sizes for a shape: -1 becomes 0 to 2.
    fn dims(&mut self, shape: &[i64]) -> Vec<usize> {
        shape
            .iter()
            .map(|&size| {
                if size < 0 {
                    self.below(3) as usize
                } else {
                    size as usize
                }
            })
            .collect()
    }

    fn element(&mut self, dtype: Dtype) -> Value {
        let pick = self.below(4);
        match dtype {
            Dtype::Bool => json!(pick.is_multiple_of(2)),
            Dtype::String => json!(["", "é", "a\u{0}b", "x"][pick as usize]),
            Dtype::Int8 => json!([-128, 127, 0, -1][pick as usize]),
            Dtype::Uint8 => json!([0, 255, 1, 7][pick as usize]),
            Dtype::Int16 => json!([i16::MIN, i16::MAX, 0, 3][pick as usize]),
            Dtype::Int32 => json!([i32::MIN, i32::MAX, 0, 3][pick as usize]),
            Dtype::Int64 => json!([i64::MIN, i64::MAX, 0, 3][pick as usize]),
            Dtype::Float16 => json!([65504.0, -0.5, 0.0, 1e-8][pick as usize]),
            Dtype::Bfloat16 | Dtype::Float32 => json!([3.0e38, -1.5, 0.0, 7.0][pick as usize]),
            Dtype::Float64 => json!([f64::MAX, f64::MIN_POSITIVE, -2.5, 1.0][pick as usize]),
        }
    }

    fn tensor(&mut self, dtype: Dtype, dims: &[usize]) -> Value {
        match dims.split_first() {
            None => self.element(dtype),
            Some((&count, rest)) => {
                Value::Array((0..count).map(|_| self.tensor(dtype, rest)).collect())
            }
        }
    }
}

/// Bodies that match `schema`, one per form the schema allows.
fn matching_requests(schema: &Schema, seed: u64) -> Vec<Value> {
    let mut gen = Gen(seed);
    let mut bodies = Vec::new();
    let mut named = Map::new();
    for field in &schema.inputs {
        if field.optional && gen.below(2) == 0 {
            continue;
        }
        let dims = gen.dims(&field.shape);
        named.insert(field.name.clone(), gen.tensor(field.dtype, &dims));
    }
    bodies.push(json!({ "inputs": named }));
    let positional: Vec<Value> = schema
        .inputs
        .iter()
        .map(|field| {
            let dims = gen.dims(&field.shape);
            gen.tensor(field.dtype, &dims)
        })
        .collect();
    bodies.push(json!({ "instances": positional }));
    // A dataframe needs every input to have a first axis, and one row count.
    let fixed_rows: Vec<i64> = schema
        .inputs
        .iter()
        .filter_map(|field| field.shape.first().copied().filter(|size| *size > 0))
        .collect();
    let all_ranked = schema.inputs.iter().all(|field| !field.shape.is_empty());
    if all_ranked && fixed_rows.windows(2).all(|pair| pair[0] == pair[1]) {
        let rows = fixed_rows
            .first()
            .map_or(gen.below(3) as usize, |size| *size as usize);
        let cell_dims: Vec<Vec<usize>> = schema
            .inputs
            .iter()
            .map(|field| gen.dims(&field.shape[1..]))
            .collect();
        let data: Vec<Value> = (0..rows)
            .map(|_| {
                let cells = schema
                    .inputs
                    .iter()
                    .zip(&cell_dims)
                    .map(|(field, dims)| gen.tensor(field.dtype, dims));
                Value::Array(cells.collect())
            })
            .collect();
        let columns: Vec<&str> = schema
            .inputs
            .iter()
            .map(|field| field.name.as_str())
            .collect();
        bodies.push(json!({"dataframe_split": {"columns": columns, "data": data}}));
    }
    bodies
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        "\\PC{0,8}".prop_map(Value::String),
        prop_oneof![
            Just("f0"),
            Just("f1"),
            Just("inputs"),
            Just("columns"),
            Just("data")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("inputs".to_string()),
                        Just("instances".to_string()),
                        Just("dataframe_split".to_string()),
                        Just("columns".to_string()),
                        Just("data".to_string()),
                        "f[0-3]".prop_map(String::from),
                        "\\PC{0,4}".prop_map(String::from),
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_request_built_from_the_schema_has_no_violations(schema in arb_schema(), seed in any::<u64>()) {
        for body in matching_requests(&schema, seed) {
            let violations = validate_request(&schema, &body);
            prop_assert!(violations.is_empty(), "{body}: {violations:#?}");
        }
    }

    #[test]
    fn a_schema_is_compatible_with_itself_and_an_added_optional_input(
        schema in arb_schema(),
        extra in arb_field(99),
    ) {
        prop_assert!(compatibility(&schema, &schema).changes.is_empty());
        let mut wider = schema.clone();
        wider.inputs.push(Field { optional: true, ..extra });
        let report = compatibility(&schema, &wider);
        prop_assert!(!report.is_breaking(), "{report:#?}");
        prop_assert_eq!(report.changes.len(), 1);
        prop_assert_eq!(report.changes[0].kind, ChangeKind::Added);
        // And the reverse removes it, which breaks.
        prop_assert!(compatibility(&wider, &schema).is_breaking());
    }

    #[test]
    fn compatibility_is_deterministic_and_sorted(old in arb_schema(), new in arb_schema()) {
        let report = compatibility(&old, &new);
        prop_assert_eq!(&report, &compatibility(&old, &new));
        let keys: Vec<_> = report.changes.iter().map(|c| (c.side, c.field.clone(), c.kind)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        prop_assert_eq!(keys, sorted);
    }

    #[test]
    fn arbitrary_bodies_never_panic_and_violations_are_bounded(
        schema in arb_schema(),
        body in arb_json(),
    ) {
        let violations = validate_request(&schema, &body);
        prop_assert!(violations.len() <= super::super::VIOLATIONS_MAX + 1);
        for violation in &violations {
            prop_assert!(!violation.message.is_empty());
        }
    }
}
