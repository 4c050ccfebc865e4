//! Mutation fuzzing of the offer path: real browser offers (tests/fixtures/)
//! with lines dropped, duplicated, swapped, truncated, values made huge,
//! empty or garbage, and many `m=` lines, through the real negotiation
//! (`Viewers::offer`: SDP checks, the `rtc` crate's answer, our rewrite and
//! its check). Bad input must come back as `BadSdp` or `NoCompatibleCodec`
//! (400), never `Internal` (500), and never panic.
//!
//! `OFFER_FUZZ_CASES` (default 300, seeded, so CI runs the same cases every
//! time; `OFFER_FUZZ_SEED` changes the seed). Offers that once produced a
//! 500 are kept in tests/fixtures/offer_regressions/ and replayed first.

mod common;
mod webrtc_common;

use std::net::IpAddr;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use streaming_server::webrtc::OfferError;
use webrtc_common::Rig;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// One edit to an offer's lines.
#[derive(Clone, Debug)]
enum Mutation {
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Truncate(usize, usize),
    /// Replace the value part (after `:` or `=`) of a line.
    Value(usize, Value),
    /// Append copies of the video section (with its mid changed or not).
    MoreSections(usize, bool),
    /// Duplicate one whole section in place.
    DuplicateSection(usize),
}

#[derive(Clone, Debug)]
enum Value {
    Empty,
    Huge(usize),
    Garbage(Vec<u8>),
    Number(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![
        Just(Value::Empty),
        (1usize..200_000).prop_map(Value::Huge),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(Value::Garbage),
        any::<u64>().prop_map(Value::Number),
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Drop),
        any::<usize>().prop_map(Mutation::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Truncate(a, b)),
        (any::<usize>(), value).prop_map(|(a, v)| Mutation::Value(a, v)),
        (1usize..40, any::<bool>()).prop_map(|(n, same)| Mutation::MoreSections(n, same)),
        any::<usize>().prop_map(Mutation::DuplicateSection),
    ]
}

fn apply(offer: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = offer.lines().map(str::to_string).collect();
    for mutation in mutations {
        if lines.is_empty() {
            break;
        }
        let len = lines.len();
        let pick = |i: usize| i % len;
        match mutation {
            Mutation::Drop(i) => {
                lines.remove(pick(*i));
            }
            Mutation::Duplicate(i) => {
                let line = lines[pick(*i)].clone();
                lines.insert(pick(*i), line);
            }
            Mutation::Swap(a, b) => {
                let (a, b) = (pick(*a), pick(*b));
                lines.swap(a, b);
            }
            Mutation::Truncate(i, at) => {
                let line = &mut lines[pick(*i)];
                let mut cut = at % (line.len() + 1);
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
            }
            Mutation::Value(i, value) => {
                let line = &mut lines[pick(*i)];
                let keep = line.find([':', '=']).map_or(line.len(), |p| p + 1);
                let new = match value {
                    Value::Empty => String::new(),
                    Value::Huge(n) => "9".repeat(*n),
                    Value::Garbage(bytes) => String::from_utf8_lossy(bytes).replace(['\r', '\n'], " "),
                    Value::Number(n) => n.to_string(),
                };
                line.truncate(keep);
                line.push_str(&new);
            }
            Mutation::MoreSections(n, same_mid) => {
                let Some(start) = lines.iter().position(|l| l.starts_with("m=video")) else { continue };
                let end =
                    lines[start + 1..].iter().position(|l| l.starts_with("m=")).map_or(lines.len(), |p| p + start + 1);
                let section: Vec<String> = lines[start..end].to_vec();
                for copy in 0..*n {
                    for line in &section {
                        let line = match (same_mid, line.strip_prefix("a=mid:")) {
                            (false, Some(mid)) => format!("a=mid:{mid}x{copy}"),
                            _ => line.clone(),
                        };
                        lines.push(line);
                    }
                }
            }
            Mutation::DuplicateSection(i) => {
                let starts: Vec<usize> = (0..lines.len()).filter(|&k| lines[k].starts_with("m=")).collect();
                if starts.is_empty() {
                    continue;
                }
                let start = starts[i % starts.len()];
                let end = starts.iter().copied().find(|&k| k > start).unwrap_or(lines.len());
                let section: Vec<String> = lines[start..end].to_vec();
                for (k, line) in section.into_iter().enumerate() {
                    lines.insert(end + k, line);
                }
            }
        }
    }
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    out
}

/// Offers one SDP; panics (with the offer) on a 500-class answer.
fn check(rig: &Rig, runtime: &tokio::runtime::Runtime, sdp: &str, n: usize) {
    // A different address per case: the pending-offer limit per address
    // is not what is fuzzed here.
    let client: IpAddr = format!("127.0.{}.{}", (n / 250) % 250, 1 + n % 250).parse().unwrap();
    match runtime.block_on(rig.offer_from(sdp, client)) {
        Ok(session) => {
            rig.viewers.close(&session.id);
        }
        Err(OfferError::BadSdp(_) | OfferError::NoCompatibleCodec(_)) => {}
        Err(OfferError::Internal(why)) => panic!("500 for a bad offer: {why}\n--- offer ---\n{sdp}"),
        Err(other) => panic!("unexpected refusal {other:?}\n--- offer ---\n{sdp}"),
    }
}

#[test]
fn mutated_offers_are_answered_or_refused_as_bad_input_never_as_internal_errors() {
    let cases: u32 = std::env::var("OFFER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let seed: u64 = std::env::var("OFFER_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_0ffe);
    let rig = Rig::start_with("offer_fuzz", 100_000, |_| {});
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();

    let dir = format!("{}/tests/fixtures/offer_regressions", env!("CARGO_MANIFEST_DIR"));
    let mut regressions: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    regressions.sort();
    assert!(!regressions.is_empty(), "the regression corpus is in {dir}");
    for (n, path) in regressions.iter().enumerate() {
        check(&rig, &runtime, &std::fs::read_to_string(path).unwrap(), n);
    }

    let offers = [
        fixture("chrome_156_linux_offer.sdp"),
        fixture("firefox_99_offer.sdp"),
        fixture("safari_16_6_macos_offer.sdp"),
    ];
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config { cases, failure_persistence: None, ..Config::default() },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let counter = std::sync::atomic::AtomicUsize::new(1000);
    let strategy = (0..offers.len(), proptest::collection::vec(mutation(), 1..5));
    let result = runner.run(&strategy, |(which, mutations)| {
        let sdp = apply(&offers[which], &mutations);
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&rig, &runtime, &sdp, n)));
        prop_assert!(outcome.is_ok(), "offer {n} failed (see above); mutations {mutations:?}");
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    assert_eq!(rig.viewers.count(), 0, "every accepted offer was closed again");
}
