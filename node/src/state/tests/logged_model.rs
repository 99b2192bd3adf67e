//! MLflow's logged models in the state: created once, updated, given files while pending and
//! none after; refused commands change nothing; their chunks are kept from GC; a version
//! registered through the MLflow API may lack lineage, a native one may not.

use super::*;
use crate::logged_model::{LoggedModel, LoggedModelStatus};

const ID: &str = "m-0123456789abcdef0123456789abcdef";

fn create(id: &str) -> Op {
    Op::CreateLoggedModel {
        id: id.into(),
        experiment_id: "0".into(),
        name: "model".into(),
        model_type: String::new(),
        source_run_id: String::new(),
        params: [("alpha".to_string(), "0.5".to_string())].into(),
        tags: BTreeMap::new(),
    }
}

fn file(path: &str, content: &[u8]) -> FileEntry {
    FileEntry {
        path: path.into(),
        size_bytes: content.len() as u64,
        mode: 0o644,
        chunks: vec![ChunkRef {
            hash: Hash::of(content),
            size_bytes: content.len() as u32,
        }],
    }
}

fn logged(r: Response) -> LoggedModel {
    match r {
        Response::LoggedModel(m) => *m,
        other => panic!("expected a logged model, got {other:?}"),
    }
}

fn finalize(status: LoggedModelStatus) -> Op {
    Op::UpdateLoggedModel {
        id: ID.into(),
        status: Some(status),
        set_params: BTreeMap::new(),
        set_tags: BTreeMap::new(),
        remove_tags: Vec::new(),
    }
}

#[test]
fn a_logged_model_takes_files_until_it_is_finalized() {
    let mut f = fixture();
    let m = logged(f.apply(create(ID)));
    assert_eq!(m.status, LoggedModelStatus::Pending);
    assert!(matches!(
        rejected(f.apply(create(ID))),
        DomainError::Invalid { .. }
    ));
    let put = |path: &str, content: &[u8]| Op::PutLoggedModelFile {
        id: ID.into(),
        file: file(path, content),
    };
    f.apply(put("python_model.pkl", b"pickle"));
    f.apply(put("MLmodel", b"flavors: {}"));
    let m = logged(f.apply(put("MLmodel", b"flavors: {python_function: {}}")));
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        ["MLmodel", "python_model.pkl"],
        "sorted, the second MLmodel replaced the first"
    );
    let kept = f.read(|app, txn| app.referenced_chunks(txn).unwrap());
    assert!(
        kept.contains(&Hash::of(b"pickle")),
        "GC keeps a logged model's chunks"
    );
    assert!(
        !kept.contains(&Hash::of(b"flavors: {}")),
        "the replaced file's chunk is not kept"
    );

    let m = logged(f.apply(finalize(LoggedModelStatus::Ready)));
    assert_eq!(m.status, LoggedModelStatus::Ready);
    let before = f.digest();
    let e = rejected(f.apply(put("late.txt", b"late")));
    assert!(e.to_string().contains("finalized"), "{e}");
    assert_eq!(f.digest(), before, "a refused file changed the state");
}

#[test]
fn hostile_logged_model_commands_are_refused_by_field_and_change_nothing() {
    let mut f = fixture();
    f.apply(create(ID));
    let before = f.digest();
    let long = "p".repeat(300);
    let mut lying = file("MLmodel", b"abc");
    lying.size_bytes = 4;
    let mut many_params = BTreeMap::new();
    for i in 0..=limits::PARAMS_MAX {
        many_params.insert(format!("p{i}"), "v".to_string());
    }
    let cases = vec![
        ("model_id", create("m-1")),
        ("model_id", create("../../x")),
        ("model_id", create("")),
        (
            "experiment_id",
            Op::CreateLoggedModel {
                id: "m-00000000000000000000000000000009".into(),
                experiment_id: "1".into(),
                name: "x".into(),
                model_type: String::new(),
                source_run_id: String::new(),
                params: BTreeMap::new(),
                tags: BTreeMap::new(),
            },
        ),
        (
            "name",
            Op::CreateLoggedModel {
                id: "m-00000000000000000000000000000009".into(),
                experiment_id: "0".into(),
                name: long.clone(),
                model_type: String::new(),
                source_run_id: String::new(),
                params: BTreeMap::new(),
                tags: BTreeMap::new(),
            },
        ),
        (
            "params",
            Op::UpdateLoggedModel {
                id: ID.into(),
                status: None,
                set_params: many_params,
                set_tags: BTreeMap::new(),
                remove_tags: Vec::new(),
            },
        ),
        (
            "path",
            Op::PutLoggedModelFile {
                id: ID.into(),
                file: file("../escape", b"x"),
            },
        ),
        (
            "path",
            Op::PutLoggedModelFile {
                id: ID.into(),
                file: file("/abs", b"x"),
            },
        ),
        (
            "path",
            Op::PutLoggedModelFile {
                id: ID.into(),
                file: file("a\0b", b"x"),
            },
        ),
        (
            "path",
            Op::PutLoggedModelFile {
                id: ID.into(),
                file: file("", b"x"),
            },
        ),
        (
            "path",
            Op::PutLoggedModelFile {
                id: ID.into(),
                file: lying,
            },
        ),
    ];
    for (field, op) in cases {
        let e = rejected(f.apply(op.clone()));
        assert!(e.to_string().contains(field), "{field}: {e} ({op:?})");
    }
    let unknown = Op::PutLoggedModelFile {
        id: "m-ffffffffffffffffffffffffffffffff".into(),
        file: file("MLmodel", b"x"),
    };
    assert!(matches!(
        rejected(f.apply(unknown)),
        DomainError::LoggedModelNotFound { .. }
    ));
    assert_eq!(f.digest(), before, "a refused command changed the state");
}

#[test]
fn only_a_version_registered_through_mlflow_may_lack_lineage() {
    let mut f = fixture();
    f.apply(create_model("reco"));
    let bare = |tags: BTreeMap<String, String>| {
        let mut op = create_version("reco", b"weights");
        if let Op::CreateVersion {
            metadata, tags: t, ..
        } = &mut op
        {
            *metadata = VersionMetadata::default();
            *t = tags;
        }
        op
    };
    let e = rejected(f.apply(bare(BTreeMap::new())));
    assert!(e.to_string().contains("metadata"), "{e}");
    let via = [(
        REGISTERED_VIA_TAG.to_string(),
        REGISTERED_VIA_MLFLOW.to_string(),
    )]
    .into();
    let v = version(f.apply(bare(via)));
    assert!(v.metadata.code_commit.is_empty());
}
