//! The control protocol's parsers on a line from a client: `berth_control::parse_envelope`
//! (the request line init answers) and `parse_exec_input` (what an `exec` client sends after
//! it), with `decode_bytes` on the stdin it carries. Besides not panicking: an accepted
//! request's version is one init speaks, and a parsed line written back with `to_line` parses
//! to the same value.
#![no_main]

use berth_control::VERSION;
use berth_control::{decode_bytes, encode_bytes, parse_envelope, parse_exec_input, to_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // init reads lines as bytes and takes them as UTF-8, lossily.
    let line = String::from_utf8_lossy(data);
    if let Ok(envelope) = parse_envelope(&line) {
        assert!(envelope.v <= VERSION);
        let again = to_line(&envelope);
        assert_eq!(parse_envelope(&again).as_ref(), Ok(&envelope), "{again}");
    }
    if let Ok(input) = parse_exec_input(&line) {
        let again = to_line(&input);
        assert_eq!(parse_exec_input(&again).as_ref(), Ok(&input), "{again}");
        if let Some(Ok(bytes)) = input.stdin.as_deref().map(decode_bytes) {
            assert_eq!(decode_bytes(&encode_bytes(&bytes)), Ok(bytes));
        }
    }
});
