#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vispyr_gateway_fuzz::trace_split(data);
});
