//! The TC3 signer reproduces every vector produced by Tencent Cloud's official SDK.

use serde_json::Value;
use tcsas_gateway::upstream::signer::{self, SigningInput};

#[test]
fn every_official_sdk_vector_is_reproduced() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vectors.json"
    ))
    .expect("vectors.json is readable");
    let vectors: Vec<Value> = serde_json::from_str(&text).expect("vectors.json parses");
    assert!(
        vectors.len() >= 6,
        "expected every vector, got {}",
        vectors.len()
    );
    for v in &vectors {
        let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} missing"));
        let input = SigningInput {
            secret_id: s("secret_id"),
            secret_key: s("secret_key"),
            service: s("service"),
            host: s("host"),
            content_type: s("content_type"),
            timestamp: v["timestamp"].as_i64().expect("timestamp"),
            body: s("body").as_bytes(),
        };
        let name = s("name");
        assert_eq!(
            signer::canonical_request(&input),
            s("canonical_request"),
            "{name}"
        );
        assert_eq!(
            signer::string_to_sign(&input),
            s("string_to_sign"),
            "{name}"
        );
        assert_eq!(signer::signature(&input), s("signature"), "{name}");
        assert_eq!(signer::authorization(&input), s("authorization"), "{name}");
    }
}
