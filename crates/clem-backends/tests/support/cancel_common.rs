//! Cancellation on a real local model, shared by the llamacpp and huggingface_local SmolLM2 tests: a row
//! cancelled before the call never runs, a row cancelled mid-generation leaves the batch at the next step, and
//! the other rows still answer exactly as their single runs.

use std::time::{Duration, Instant};

use clem_core::{Cancel, GenArgs, LoadedModel, Message, ModelError};

const STORY: &str = "Write a very long story about a lighthouse keeper and the sea, with many chapters.";

pub fn cancelled_rows_leave_the_batch(model: &LoadedModel) {
    let args = GenArgs::new(0.0, 24);
    // Cancelled before the call: an error at once, nothing generated.
    let cancel = Cancel::new();
    cancel.cancel();
    let err = model.generate_response_cancellable(&[Message::user("hi")], &args, &cancel).expect_err("cancelled");
    assert!(matches!(err, ModelError::Cancelled { .. }), "{err}");

    // Mid-generation: the long row is cancelled 300 ms in; it stops within a few steps, the others are unchanged.
    let long = GenArgs::new(0.0, 400);
    let full = Instant::now();
    let uncut = model.generate_response(&[Message::user(STORY)], &long).expect("the uncut run");
    let full = full.elapsed();
    assert!(full > Duration::from_millis(900), "the uncut story took only {full:?}: too short to cancel mid-way");
    let batch = vec![
        vec![Message::user("What is the capital of France? Answer in one word.")],
        vec![Message::user(STORY)],
        vec![Message::user("Say hello to Ada and welcome her.")],
    ];
    let cancels = vec![Cancel::new(), Cancel::new(), Cancel::new()];
    let trigger = cancels[1].clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        trigger.cancel();
    });
    let start = Instant::now();
    let results = model.generate_batch_response_cancellable(&batch, &long, &cancels);
    let took = start.elapsed();
    canceller.join().expect("canceller");
    assert!(matches!(results[1], Err(ModelError::Cancelled { .. })), "row 1: {:?}", results[1].as_ref().err());
    assert!(!uncut.response_text.is_empty());
    for i in [0, 2] {
        let single = model.generate_response(&batch[i], &long).expect("single");
        let batched = results[i].as_ref().expect("batched row");
        assert_eq!(batched.response_text, single.response_text, "row {i}");
    }
    // The batch did not wait for the cancelled story: it took less than the story alone.
    assert!(took < full, "batch with the story cancelled took {took:?}, the story alone {full:?}");
}
