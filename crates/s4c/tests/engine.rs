//! The library engine end to end on the default model: the answer HF transformers gives, in both
//! modes; streamed text equal to the answer; stop strings; cancellation; bad requests.

use std::ops::ControlFlow;
use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::DType;
use s4c::{
    Engine, EngineBuilder, EngineError, FinishReason, HeadsChoice, Mode, Prompt, Request, TreeKind,
    TreeOptions,
};
use s4c_models::{LoadOptions, Message};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model in f32 (the golden file's type) with the shipped heads.
fn engine() -> Engine<Flex> {
    engine_with(TreeOptions::default())
}

/// [`engine`] with the tree `tree`.
fn engine_with(tree: TreeOptions) -> Engine<Flex> {
    EngineBuilder::new(repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .tree(tree)
        .load_options(LoadOptions {
            dtype: Some(DType::F32),
            ..Default::default()
        })
        .heads(HeadsChoice::File(
            repo().join("assets/SmolLM2-135M-Instruct.heads.safetensors"),
        ))
        .build::<Flex>(&Default::default())
        .expect("fetch the default model with ./scripts/fetch-default-model.sh")
}

fn golden_case(i: usize) -> Value {
    let text =
        std::fs::read_to_string(repo().join("data/golden-smollm2-135m-instruct.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"][i].clone()
}

/// Generates `r`, collecting the streamed text.
fn answer(e: &Engine<Flex>, r: &Request) -> (s4c::Completion, String) {
    let mut streamed = String::new();
    let c = e
        .generate(r, &mut |piece| {
            streamed += piece;
            ControlFlow::Continue(())
        })
        .unwrap();
    (c, streamed)
}

#[test]
fn both_modes_give_the_reference_answer_and_stream_it() {
    let e = engine();
    assert_eq!(e.info().mode, Mode::S4c, "heads given: S4C by default");
    for case in [golden_case(0), golden_case(1)] {
        let question = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["greedy_new_ids"].clone()).unwrap();
        for mode in [Mode::Plain, Mode::S4c] {
            let r = Request::chat(vec![Message::new("user", question)])
                .max_new_tokens(want.len())
                .mode(mode);
            let (c, streamed) = answer(&e, &r);
            assert_eq!(
                c.prompt_ids,
                serde_json::from_value::<Vec<u32>>(case["input_ids"].clone()).unwrap()
            );
            assert_eq!(c.new_ids, want, "{mode:?} {question}");
            assert_eq!(streamed, c.text);
            let t = &c.timings;
            assert_eq!(t.mode, mode);
            assert_eq!(t.predicted_n, c.new_ids.len());
            assert_eq!(t.prompt_n, c.prompt_ids.len());
            assert!(t.draft_n_accepted <= t.draft_n);
            if mode == Mode::Plain {
                assert_eq!((t.draft_n, t.steps + 1), (0, c.new_ids.len()));
            }
        }
    }
}

#[test]
fn the_answer_ends_before_the_first_stop_string() {
    let e = engine();
    let r = Request::chat(vec![Message::new(
        "user",
        "Write a short story about a robot who learns to paint.",
    )])
    .max_new_tokens(60);
    let (full, _) = answer(&e, &r);
    assert_eq!(full.finish, FinishReason::Length);
    // A stop string from the middle of the answer (a word that occurs in it), and one that never
    // occurs: the answer is the full text cut where the word first appears.
    let words: Vec<&str> = full.text.split_whitespace().collect();
    let stop = words[words.len() / 2].to_string();
    let cut = full.text.find(&stop).unwrap();
    for mode in [Mode::Plain, Mode::S4c] {
        let r = r
            .clone()
            .mode(mode)
            .stop(vec!["never appears here".into(), stop.clone()]);
        let (c, streamed) = answer(&e, &r);
        assert_eq!(c.text, full.text[..cut], "{mode:?} stop {stop:?}");
        assert_eq!(streamed, c.text);
        assert_eq!(c.finish, FinishReason::Stop);
        assert!(c.new_ids.len() < full.new_ids.len());
        assert_eq!(c.new_ids[..], full.new_ids[..c.new_ids.len()]);
    }
}

#[test]
fn a_callback_that_breaks_cancels_the_generation() {
    let e = engine();
    for mode in [Mode::Plain, Mode::S4c] {
        let r = Request::chat(vec![Message::new(
            "user",
            "Count from one to fifty in words.",
        )])
        .max_new_tokens(100)
        .mode(mode);
        let mut pieces = 0;
        let c = e
            .generate(&r, &mut |_| {
                pieces += 1;
                if pieces == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(c.finish, FinishReason::Cancelled, "{mode:?}");
        assert_eq!(pieces, 3);
        assert!(c.new_ids.len() < 20, "{mode:?}: {} tokens", c.new_ids.len());
    }
}

/// Answers `requests` together ([`Engine::generate_batch`]), in order.
fn batch(e: &Engine<Flex>, requests: Vec<Request>) -> Vec<s4c::Result<s4c::Completion>> {
    use std::sync::{Arc, Mutex};
    let results = Arc::new(Mutex::new(vec![]));
    let jobs = requests
        .into_iter()
        .enumerate()
        .map(|(i, request)| {
            let results = results.clone();
            s4c::BatchJob {
                request,
                on_text: Box::new(|_| ControlFlow::Continue(())),
                done: Box::new(move |c| results.lock().unwrap().push((i, c))),
            }
        })
        .collect();
    e.generate_batch(jobs, 8, &mut |_| vec![]);
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, c)| c).collect()
}

#[test]
fn bad_requests_get_typed_errors() {
    let e = engine();
    let never = &mut |_: &str| -> ControlFlow<()> { panic!("no text for a bad request") };
    let bad = [
        Request::new(Prompt::Ids(vec![1, 2, 1_000_000])),
        Request::new(Prompt::Ids(vec![])),
        Request::text("Hello").max_new_tokens(0),
        Request::text("word ".repeat(5000)),
        Request::text("Hello").sampling(
            s4c_verify::SamplingParams {
                temperature: -1.0,
                top_k: 0,
                top_p: 1.0,
            },
            0,
        ),
    ];
    for r in bad.iter() {
        match e.generate(r, never) {
            Err(EngineError::InvalidOption(msg)) => assert!(!msg.is_empty()),
            other => panic!("{:?}: {other:?}", r.prompt),
        }
    }
    // Answered together with a good request, each bad one gets its error and the good one its
    // answer.
    let good = Request::text("The capital of France is").max_new_tokens(8);
    let alone = answer(&e, &good).0;
    let mut requests = bad.to_vec();
    requests.push(good);
    let mut results = batch(&e, requests);
    let last = results.pop().unwrap().unwrap();
    assert_eq!(last.new_ids, alone.new_ids);
    for (r, result) in bad.iter().zip(results) {
        assert!(
            matches!(result, Err(EngineError::InvalidOption(_))),
            "{:?}",
            r.prompt
        );
    }
}

#[test]
fn plain_mode_engines_load_no_heads_and_refuse_s4c_requests() {
    let e = EngineBuilder::new(repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .mode(Mode::Plain)
        .build::<Flex>(&Default::default())
        .unwrap();
    assert_eq!((e.info().mode, e.info().heads.clone()), (Mode::Plain, None));
    let r = Request::text("Hello").max_new_tokens(4).mode(Mode::S4c);
    assert!(matches!(
        e.generate(&r, &mut |_| ControlFlow::Continue(())),
        Err(EngineError::InvalidOption(_))
    ));
    let results = batch(&e, vec![r, Request::text("Hello").max_new_tokens(4)]);
    assert!(matches!(results[0], Err(EngineError::InvalidOption(_))));
    assert_eq!(results[1].as_ref().unwrap().new_ids.len(), 4);
}

/// Requests in both modes, greedy and sampled, answered together (their steps — single tokens
/// and S4C verification trees — share each forward) get exactly the answers they get alone.
/// The tree is static, so every S4C step verifies one.
#[test]
fn requests_decoded_together_get_the_answers_they_get_alone() {
    use std::sync::{Arc, Mutex};
    let e = engine_with(TreeOptions {
        kind: TreeKind::Static,
        nodes: 8,
        ..Default::default()
    });
    let questions = [
        "What is the capital of Italy?",
        "Write a haiku about rain.",
        "Name three fruits.",
        "Explain what a noun is.",
        "What is 12 times 12?",
        "List the days of the week.",
    ];
    // Odd requests decode plainly, even ones with S4C (the engine's mode); the last two sample.
    let request = |i: usize| {
        let r = Request::chat(vec![Message::new("user", questions[i])])
            .max_new_tokens(24)
            .stop(vec!["\n\n".into()]);
        let r = if i % 2 == 1 { r.mode(Mode::Plain) } else { r };
        if i >= 4 {
            let sampling = s4c_verify::SamplingParams {
                temperature: 0.8,
                top_p: 0.95,
                ..s4c_verify::SamplingParams::greedy()
            };
            r.sampling(sampling, 7)
        } else {
            r
        }
    };
    let alone: Vec<s4c::Completion> = (0..questions.len())
        .map(|i| answer(&e, &request(i)).0)
        .collect();
    // Three start together, three join as others finish (at most three at once); the fourth is
    // cancelled after its second piece of text.
    type Results = Arc<Mutex<Vec<(usize, String, Option<s4c::Completion>)>>>;
    let results: Results = Arc::new(Mutex::new(vec![]));
    let job = |i: usize| {
        let done = results.clone();
        let text = Arc::new(Mutex::new(String::new()));
        let (t1, t2) = (text.clone(), text);
        let mut pieces = 0;
        s4c::BatchJob {
            request: request(i),
            on_text: Box::new(move |p| {
                t1.lock().unwrap().push_str(p);
                pieces += 1;
                if i == 3 && pieces == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }),
            done: Box::new(move |c| {
                let text = t2.lock().unwrap().clone();
                done.lock().unwrap().push((i, text, c.ok()));
            }),
        }
    };
    let mut later = vec![job(3), job(4), job(5)];
    e.generate_batch(vec![job(0), job(1), job(2)], 3, &mut |room| {
        let n = room.min(later.len());
        later.drain(..n).collect()
    });
    let results = results.lock().unwrap();
    assert_eq!(results.len(), questions.len());
    let mut drafted = 0;
    for (i, streamed, c) in results.iter() {
        let c = c.as_ref().unwrap();
        let want = if i % 2 == 1 { Mode::Plain } else { Mode::S4c };
        assert_eq!(c.timings.mode, want, "{}", questions[*i]);
        drafted += c.spec.as_ref().map_or(0, |s| s.drafted);
        if *i == 3 {
            assert_eq!(c.finish, FinishReason::Cancelled);
            assert_eq!(c.new_ids[..], alone[3].new_ids[..c.new_ids.len()]);
            continue;
        }
        assert_eq!(c.new_ids, alone[*i].new_ids, "{}", questions[*i]);
        assert_eq!((&c.text, c.finish), (&alone[*i].text, alone[*i].finish));
        assert_eq!(streamed, &c.text);
    }
    assert!(drafted > 0, "the S4C requests verified trees");
}

/// A conversation continued turn after turn on an engine with a prompt cache, each turn asked
/// alone ([`Engine::generate`]) and then in a batch ([`Engine::generate_batch`]): each reuses
/// the keys and values of the conversation before it, runs only the rest of its prompt, and gets
/// the answer — with the static tree, the very drafts — of an engine that prefills it whole.
#[test]
fn a_continued_conversation_reuses_its_cache_and_gets_the_same_answers() {
    let build = |slots| {
        EngineBuilder::new(repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
            .tree(TreeOptions {
                kind: TreeKind::Static,
                nodes: 8,
                ..Default::default()
            })
            .heads(HeadsChoice::File(
                repo().join("assets/SmolLM2-135M-Instruct.heads.safetensors"),
            ))
            .prompt_cache(slots)
            .build::<Flex>(&Default::default())
            .unwrap()
    };
    let (e, whole) = (build(2), build(0));
    assert_eq!((e.info().prompt_cache, whole.info().prompt_cache), (2, 0));
    for mode in [Mode::Plain, Mode::S4c] {
        // The prefill runs at least the tokens whose features begin an S4C sequence.
        let run = match mode {
            Mode::Plain => 1,
            Mode::S4c => e.heads_config().unwrap().window + 1,
        };
        let mut messages = vec![];
        let mut before = 0;
        for (turn, q) in ["Name three colors.", "Which one is the warmest?", "Why?"]
            .into_iter()
            .enumerate()
        {
            messages.push(Message::new("user", q));
            let r = Request::chat(messages.clone())
                .max_new_tokens(16)
                .mode(mode);
            let want = answer(&whole, &r).0;
            assert_eq!(want.timings.cache_n, 0, "an engine without a prompt cache");
            let alone = answer(&e, &r).0;
            // The batch takes the cache the same request left: the whole prompt but `run`.
            let batched = batch(&e, vec![r.clone()]).pop().unwrap().unwrap();
            assert_eq!(batched.timings.cache_n + run, batched.timings.prompt_n);
            for (c, path) in [(&alone, "alone"), (&batched, "batched")] {
                let at = format!("{mode:?}, turn {turn}, {path}");
                assert_eq!(c.new_ids, want.new_ids, "{at}");
                if let (Some(a), Some(b)) = (&c.spec, &want.spec) {
                    assert_eq!(
                        (a.steps, a.drafted, a.accepted),
                        (b.steps, b.drafted, b.accepted),
                        "{at}: the drafts of a whole prefill"
                    );
                }
            }
            let (cached, prompt) = (alone.timings.cache_n, alone.timings.prompt_n);
            assert!(cached + run <= prompt, "{mode:?}, turn {turn}");
            if turn > 0 {
                assert!(
                    before <= cached,
                    "{mode:?}, turn {turn}: {cached} of {prompt} prompt tokens cached, \
                     the turn before had {before}"
                );
            }
            before = prompt;
            messages.push(Message::new("assistant", &alone.text));
        }
    }
}

/// A tiny random-weight Llama 2 shaped model (crates/s4c-models/tests/fixtures/family): from its
/// Hugging Face folder and from its GGUF file, a plain-text prompt gets the BOS its tokenizer adds
/// and both modes answer with HF transformers' greedy tokens (S4C without heads verifies chains
/// found in the context).
#[test]
fn a_llama2_model_answers_text_prompts_as_transformers_does() {
    let dir = repo().join("crates/s4c-models/tests/fixtures/family/llama2");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    for file in ["hf", "model.f16.gguf"] {
        for mode in [Mode::Plain, Mode::S4c] {
            let e = EngineBuilder::new(dir.join(file))
                .mode(mode)
                .build::<Flex>(&Default::default())
                .unwrap();
            for (i, text) in reference["texts"].as_array().unwrap().iter().enumerate() {
                let want: Vec<u32> =
                    serde_json::from_value(reference["files"][file][i]["greedy_new_ids"].clone())
                        .unwrap();
                let r = Request::text(text.as_str().unwrap()).max_new_tokens(want.len());
                let (c, _) = answer(&e, &r);
                let prompt: Vec<u32> =
                    serde_json::from_value(reference["text_ids"][i].clone()).unwrap();
                assert_eq!(c.prompt_ids, prompt, "{file} {mode:?}");
                assert_eq!(c.prompt_ids[0], 1, "BOS first");
                assert_eq!(c.new_ids, want, "{file} {mode:?} text {i}");
            }
        }
    }
}
