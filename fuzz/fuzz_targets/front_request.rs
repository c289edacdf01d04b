//! The front's request parsing: TC-shaped bodies and REST ids never panic,
//! and whatever they accept is a valid id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcsas_gateway::domain::{MnpId, PlatformId};
use tcsas_gateway::front::tc::parse_body;

fuzz_target!(|data: &[u8]| {
    if let Ok((platform, mnp)) = parse_body(data) {
        assert!(PlatformId::parse(platform.as_str()).is_ok());
        assert!(MnpId::parse(mnp.as_str()).is_ok());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = MnpId::parse(text) {
            assert!(id.as_str().len() <= 64);
        }
    }
});
