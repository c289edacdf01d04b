//! Upstream answer parsing and URL-expiry reading never panic on any body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcsas_gateway::resolver::url_expiry::url_end_unix;
use tcsas_gateway::upstream::envelope::{parse_answer, UpstreamAnswer};

fuzz_target!(|data: &[u8]| {
    if let Ok(UpstreamAnswer::Url { url, .. }) = parse_answer(data) {
        let _ = url_end_unix(&url);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = url_end_unix(text);
    }
});
