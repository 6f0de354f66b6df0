//! The host ↔ worker frame decoders, fed arbitrary bytes. Every input must decode or fail
//! cleanly: no panic, and no allocation sized by what the input claims rather than by what
//! it holds. (Run with `-- -malloc_limit_mb=32` to have libFuzzer flag any big allocation.)
//! A frame that decodes must also survive being encoded and decoded again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmpool::fuzzing;

/// How much of a frame the reader allocates ahead of the bytes that arrive, at most.
const READ_CHUNK: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // As a stream of length-delimited frames, the way each end reads its socket.
    for decoded in [
        fuzzing::read_to_worker(data),
        fuzzing::read_from_worker(data),
    ] {
        assert!(
            decoded.buffer_capacity <= 2 * (data.len() + READ_CHUNK),
            "{} bytes held for {} bytes of input",
            decoded.buffer_capacity,
            data.len()
        );
    }
    // As one frame body, which reaches deep into the decoder without a length to guess.
    let _ = fuzzing::decode_to_worker(data);
    let _ = fuzzing::decode_from_worker(data);
});
