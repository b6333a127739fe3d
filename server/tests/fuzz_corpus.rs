//! Replays every checked-in fuzz corpus file (and every crash regression)
//! through the same harnesses cargo-fuzz runs, on stable Rust, in CI.

mod command_parser {
    include!("../../fuzz/harness/command_parser.rs");
}
mod engine {
    include!("../../fuzz/harness/engine.rs");
}
mod lmtp_session {
    include!("../../fuzz/harness/lmtp_session.rs");
}
mod proxy_header {
    include!("../../fuzz/harness/proxy_header.rs");
}
mod record_layer {
    include!("../../fuzz/harness/record_layer.rs");
}
mod storage_index {
    include!("../../fuzz/harness/storage_index.rs");
}
mod wire_form {
    include!("../../fuzz/harness/wire_form.rs");
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            run(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn corpora_replay_cleanly() {
    assert!(replay("command_parser", command_parser::run) > 0);
    assert!(replay("engine", engine::run) > 0);
    assert!(replay("storage_index", storage_index::run) > 0);
    assert!(replay("proxy_header", proxy_header::run) > 0);
    assert!(replay("lmtp_session", lmtp_session::run) > 0);
    assert!(replay("wire_form", wire_form::run) > 0);
    assert!(replay("record_layer", record_layer::run) > 0);
}
