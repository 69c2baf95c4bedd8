//! The gateway's settings file: arbitrary text as the TOML file given to
//! `replyway_shared::settings::load`, then `Settings::route_table`. A bad file must
//! be an error naming the setting, never a panic.
//!
//! `load` reads a path, so each input is written to one file per process (under
//! `$TMPDIR`, which scripts/fuzz.sh points at a scratch directory).
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use replyway_gateway::Settings;
use replyway_shared::settings::load;

static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("replyway-fuzz-config-{}.toml", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    std::fs::write(&*FILE, text).expect("cannot write the settings file");
    match load(&Settings::default(), Some(&FILE)) {
        Ok(settings) => match settings.route_table() {
            Ok(routes) => {
                assert_eq!(routes.routes().len(), settings.routes.len());
                assert!(settings.max_poll_wait < settings.redis.ttl);
                for route in routes.routes() {
                    assert!(route.timeout < settings.redis.ttl);
                    assert!(route.path_pattern().starts_with('/'));
                }
            }
            Err(invalid) => assert!(!invalid.setting.is_empty()),
        },
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
