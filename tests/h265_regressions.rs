//! Replays tests/fixtures/h265_regressions/*.bin through every parser (see the README
//! there): inputs that once panicked must never panic again.

mod common;
mod h265_support;

use bytes::Bytes;
use h265_support::raw;
use streaming_server::codec::annexb::split_annexb;
use streaming_server::codec::h265::{parse_sps, split_access_units, Processor};
use streaming_server::rtp::h265::{payload_starts_irap, Depacketizer};

#[test]
fn regression_inputs_never_panic() {
    let dir = h265_support::crate_dir().join("tests/fixtures/h265_regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        count += 1;
        let data = Bytes::from(std::fs::read(&path).unwrap());
        let _ = parse_sps(&data);
        let _ = split_annexb(&data);
        let _ = split_access_units(&data);
        let mut processor = Processor::new();
        let _ = processor.process(raw(data.clone(), 0));
        let framed = Bytes::from([&[0, 0, 0, 1][..], &data].concat());
        let _ = processor.process(raw(framed, 1));
        let _ = payload_starts_irap(&data);
        let mut depacketizer = Depacketizer::new();
        let _ = depacketizer.push(0, &data, false);
        let _ = depacketizer.push(1, &data, true);
    }
    assert!(count >= 1, "no regression inputs found in {}", dir.display());
}
