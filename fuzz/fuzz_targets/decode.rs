//! Feeds arbitrary bytes to the wire decoder: it must return, never panic, and whatever it
//! accepts must survive re-encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_common::wire::{decode, encode, ident, Endpoint};

fuzz_target!(|data: &[u8]| {
    let me = Endpoint {
        cluster: ident("field-station").unwrap(),
        run: 0x5eed_0001,
    };
    if let Ok(env) = decode(data, &me) {
        assert_eq!(decode(&encode(&env).unwrap(), &me).unwrap(), env);
    }
});
