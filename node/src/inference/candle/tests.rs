//! Tests of the built-in engine. The pure parts (text streaming, template reading, byte table)
//! run without a model; the rest load the real SmolLM2-135M model once per test process,
//! fetching it with `scripts/fetch-model.sh` if it is not there yet.

use super::*;

fn stops(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Pushes `chunks` and returns what was released, and whether a stop ended it.
fn stream(stop_list: &[&str], chunks: &[&[u8]]) -> (Vec<String>, bool) {
    let stop_list = stops(stop_list);
    let mut stream = TextStream::new(&stop_list);
    let mut released = Vec::new();
    for chunk in chunks {
        match stream.push(chunk) {
            Step::Ready(text) => released.push(text),
            Step::Stopped(text) => {
                released.push(text);
                return (released, true);
            }
        }
    }
    match stream.finish() {
        Step::Ready(text) => {
            released.push(text);
            (released, false)
        }
        Step::Stopped(text) => {
            released.push(text);
            (released, true)
        }
    }
}

#[test]
fn split_characters_are_held_until_whole() {
    let euro = "€".as_bytes(); // 3 bytes
    let (released, stopped) = stream(&[], &[b"a", &euro[..1], &euro[1..2], &euro[2..], b"b"]);
    assert!(!stopped);
    assert_eq!(released, ["a", "", "", "€", "b", ""]);
}

#[test]
fn invalid_bytes_become_one_replacement_each_and_a_cut_end_is_flushed() {
    let (released, _) = stream(&[], &[b"x\xFFy", &"€".as_bytes()[..2]]);
    assert_eq!(released, ["x\u{FFFD}y", "", "\u{FFFD}"]);
}

#[test]
fn stop_sequences_are_never_sent_even_in_part() {
    // The stop spans three tokens; its first part is held back until it is known.
    let (released, stopped) = stream(&["END"], &[b"one E", b"N", b"D two"]);
    assert!(stopped);
    assert_eq!(released, ["one ", "", ""]);
    // A false start is released once it cannot be a stop any more.
    let (released, stopped) = stream(&["END"], &[b"one E", b"NX", b" two"]);
    assert!(!stopped);
    assert_eq!(released.concat(), "one ENX two");
    assert_eq!(released[0], "one ");
    // The earliest of several stops wins; an empty stop is ignored.
    let (released, stopped) = stream(&["", "two", "ne"], &[b"one two"]);
    assert!(stopped);
    assert_eq!(released, ["o"]);
    // A held-back prefix is released at the end when no stop completed.
    let (released, stopped) = stream(&["END"], &[b"one EN"]);
    assert!(!stopped);
    assert_eq!(released.concat(), "one EN");
}

#[test]
fn multibyte_stop_sequences_work_across_split_characters() {
    let stop = "世界";
    let bytes = "你好世界".as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(2).collect();
    let (released, stopped) = stream(&[stop], &chunks);
    assert!(stopped);
    assert_eq!(released.concat(), "你好");
}

#[test]
fn pieces_respect_the_size_cap_and_characters() {
    let text = "é".repeat(10_000); // 20,000 bytes
    let split: Vec<&str> = split_pieces(&text, MAX_TEXT_FRAME_BYTES).collect();
    assert!(
        split
            .iter()
            .all(|p| !p.is_empty() && p.len() <= MAX_TEXT_FRAME_BYTES)
    );
    assert_eq!(split.concat(), text);
    assert_eq!(split_pieces("", 16).count(), 0);
    let odd: Vec<&str> = split_pieces("a€€", 4).collect();
    assert_eq!(odd, ["a€", "€"]);
}

#[test]
fn byte_level_alphabet_round_trips() {
    let to_byte = byte_level_decoding();
    let bytes: Vec<u8> = to_byte.iter().flatten().copied().collect();
    assert_eq!(bytes.len(), 256);
    let mut sorted = bytes.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 256);
    assert_eq!(
        token_to_bytes("Ġworld", false, &to_byte).as_ref(),
        b" world"
    );
    assert_eq!(token_to_bytes("Ċ", false, &to_byte).as_ref(), b"\n");
    assert_eq!(
        token_to_bytes("<|im_end|>", true, &to_byte).as_ref(),
        b"<|im_end|>"
    );
}

#[test]
fn default_system_prompt_comes_from_the_template() {
    let smollm = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
    assert_eq!(
        default_system_prompt(Some(smollm)).as_deref(),
        Some(SMOLLM_SYSTEM_PROMPT)
    );
    let escaped = "{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}";
    assert_eq!(
        default_system_prompt(Some(escaped)).as_deref(),
        Some("Be brief.")
    );
    let no_default =
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'}}";
    assert_eq!(default_system_prompt(Some(no_default)), None);
    assert_eq!(
        default_system_prompt(None).as_deref(),
        Some(SMOLLM_SYSTEM_PROMPT)
    );
}

#[test]
fn sampling_maps_thousandths() {
    assert_eq!(sampler_for(Sampling::GREEDY), Sampler::ArgMax);
    let warm = Sampling {
        temperature_milli: 700,
        top_p_milli: 1000,
        seed: 1,
    };
    assert_eq!(sampler_for(warm), Sampler::All { temperature: 0.7 });
    let nucleus = Sampling {
        top_p_milli: 900,
        ..warm
    };
    assert_eq!(
        sampler_for(nucleus),
        Sampler::TopP {
            p: 0.9,
            temperature: 0.7
        }
    );
}

#[test]
fn bad_files_fail_with_the_path_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    let error = load("m", &missing).unwrap_err();
    let InferenceError::Failed(message) = error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains("missing.gguf") && message.contains("cannot open"),
        "{message}"
    );

    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").unwrap();
    let InferenceError::Failed(message) = load("m", &junk).unwrap_err() else {
        panic!()
    };
    assert!(
        message.contains("junk.gguf") && message.contains("not a GGUF"),
        "{message}"
    );

    // The right magic, then garbage: candle's parser refuses it.
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(
        &truncated,
        b"GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff",
    )
    .unwrap();
    let InferenceError::Failed(message) = load("m", &truncated).unwrap_err() else {
        panic!()
    };
    assert!(message.contains("truncated.gguf"), "{message}");
}

// ---- With the real model --------------------------------------------------------------------

use std::path::PathBuf;
use std::sync::OnceLock;

use suanli_protocol::tokens::ChatMessage;

use crate::inference::STREAM_BUFFER;

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `scripts/fetch-model.sh` puts the model by default.
fn models_dir() -> PathBuf {
    match std::env::var_os("SUANLI_MODELS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dirs::home_dir()
            .expect("a home directory")
            .join(".cache/suanli/models"),
    }
}

/// The model, loaded once per test process (fetched first if missing).
fn served() -> &'static ServedModel {
    static MODEL: OnceLock<ServedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = models_dir();
        let path = dir.join(MODEL_FILE);
        if !path.is_file() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-model.sh");
            let status = std::process::Command::new("bash")
                .arg(&script)
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("run scripts/fetch-model.sh");
            assert!(status.success(), "scripts/fetch-model.sh failed: {status}");
        }
        load("smollm2-135m", &path).expect("load the model")
    })
}

fn model() -> &'static CandleModel {
    match &served().backend {
        Backend::Candle(model) => model,
        Backend::Upstream(_) => unreachable!(),
    }
}

fn chat(user: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        model: "smollm2-135m".into(),
        prompt: Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: user.into(),
        }]),
        max_tokens,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    }
}

/// Generates `request`, collecting the pieces on another thread as a client would.
fn run(request: &GenerateRequest) -> (Generation, Vec<String>) {
    let (sender, mut receiver) = mpsc::channel(STREAM_BUFFER);
    let collector = std::thread::spawn(move || {
        let mut pieces = Vec::new();
        while let Some(piece) = receiver.blocking_recv() {
            pieces.push(piece);
        }
        pieces
    });
    let generation = model()
        .generate(request, &sender, &CancellationToken::new())
        .expect("generate");
    drop(sender);
    let pieces = collector.join().unwrap();
    assert_eq!(pieces.concat(), generation.text);
    assert!(
        pieces
            .iter()
            .all(|p| !p.is_empty() && p.len() <= MAX_TEXT_FRAME_BYTES)
    );
    (generation, pieces)
}

/// Runs `request` on two threads at once; both must give `expected`.
fn run_concurrently(request: &GenerateRequest) -> [Generation; 2] {
    let other = {
        let request = request.clone();
        std::thread::spawn(move || run(&request).0)
    };
    let here = run(request).0;
    [here, other.join().unwrap()]
}

fn token_text(id: u32) -> String {
    String::from_utf8(model().bytes_of(id).to_vec()).unwrap()
}

fn ids(text: &str) -> Vec<u32> {
    model().encode_text(text).unwrap()
}

#[test]
fn the_model_is_described_as_served() {
    let served = served();
    assert_eq!(served.family, "llama");
    assert_eq!(served.context, 4096);
    assert_eq!(served.quantisation, "Q8_0");
    assert_eq!(
        served.sha256.to_hex(),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert!(served.decode_tokens_per_s > 0);
}

#[test]
fn tokenizer_follows_smollm2_pre_tokenizer() {
    let tokenizer = &model().tokenizer;
    let hello = tokenizer.token_to_id("Hello").unwrap();
    // No space is added before the text (candle's GPT-2 fallback gives `ĠHello`).
    assert_eq!(ids("Hello"), [hello]);
    assert_eq!(
        ids("Hello world"),
        [hello, tokenizer.token_to_id("Ġworld").unwrap()]
    );
    // Digits are split one by one.
    let digits: Vec<String> = ids("2024").into_iter().map(token_text).collect();
    assert_eq!(digits, ["2", "0", "2", "4"]);
    let mixed: Vec<String> = ids("a 12").into_iter().map(token_text).collect();
    assert_eq!(mixed, ["a", " ", "1", "2"]);
    // Special tokens in text stay text.
    let injected = ids("<|im_end|><|im_start|>");
    assert!(
        !injected.contains(&1) && !injected.contains(&2),
        "{injected:?}"
    );
    let decoded: String = injected.into_iter().map(token_text).collect();
    assert_eq!(decoded, "<|im_end|><|im_start|>");
}

#[test]
fn chat_template_renders_chatml_with_the_default_system_prompt() {
    let model = model();
    let user = |content: &str| ChatMessage {
        role: "user".into(),
        content: content.into(),
    };
    let (im_start, im_end, newline) = (1, 2, ids("\n"));
    let mut expected = vec![im_start];
    expected.extend(ids(&format!("system\n{SMOLLM_SYSTEM_PROMPT}")));
    expected.push(im_end);
    expected.extend(&newline);
    expected.push(im_start);
    expected.extend(ids("user\nhi <|im_end|>"));
    expected.push(im_end);
    expected.extend(&newline);
    expected.push(im_start);
    expected.extend(ids("assistant\n"));
    let prompt = Prompt::Chat(vec![user("hi <|im_end|>")]);
    assert_eq!(model.encode_prompt(&prompt).unwrap(), expected);
    assert_eq!(
        model.prompt_tokens(&prompt).unwrap() as usize,
        expected.len()
    );

    // A first system (or developer) message replaces the default one.
    let developer = Prompt::Chat(vec![
        ChatMessage {
            role: "developer".into(),
            content: "Be brief.".into(),
        },
        user("hi"),
    ]);
    let mut expected = vec![im_start];
    expected.extend(ids("system\nBe brief."));
    expected.push(im_end);
    expected.extend(&newline);
    expected.push(im_start);
    expected.extend(ids("user\nhi"));
    expected.push(im_end);
    expected.extend(&newline);
    expected.push(im_start);
    expected.extend(ids("assistant\n"));
    assert_eq!(model.encode_prompt(&developer).unwrap(), expected);

    let bad_role = Prompt::Chat(vec![ChatMessage {
        role: "tool".into(),
        content: "x".into(),
    }]);
    assert!(matches!(
        model.prompt_tokens(&bad_role),
        Err(InferenceError::BadRequest(_))
    ));
    // A text prompt is tokenised as it is.
    assert_eq!(
        model.encode_prompt(&Prompt::Text("Hello".into())).unwrap(),
        ids("Hello")
    );
}

#[test]
fn greedy_generation_is_reproducible_and_independent_per_stream() {
    let request = chat("What is 2+2?", 24);
    let (first, _) = run(&request);
    assert!(!first.text.is_empty());
    assert_eq!(
        first.prompt_tokens,
        model().prompt_tokens(&request.prompt).unwrap()
    );
    let (second, _) = run(&request);
    assert_eq!(first, second);
    for concurrent in run_concurrently(&request) {
        assert_eq!(concurrent, first);
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let mut request = chat("Tell me a story about a cat.", 12);
    request.sampling = Sampling {
        temperature_milli: 800,
        top_p_milli: 950,
        seed: 42,
    };
    let (first, _) = run(&request);
    let (second, _) = run(&request);
    assert_eq!(first, second);
    assert!(first.completion_tokens > 0);
}

#[test]
fn max_tokens_ends_with_length() {
    let (generation, _) = run(&chat("Write a haiku about the sea.", 5));
    assert_eq!(generation.finish, Finish::Length);
    assert_eq!(generation.completion_tokens, 5);
    assert!(!generation.text.is_empty());
}

#[test]
fn a_stop_sequence_cuts_the_text_before_it() {
    let request = chat("Write a haiku about the sea.", 32);
    let (full, _) = run(&request);
    // A stop taken from the middle of the greedy answer, likely spanning tokens.
    let chars: Vec<(usize, char)> = full.text.char_indices().collect();
    assert!(chars.len() > 20, "{full:?}");
    let (start, _) = chars[chars.len() / 2];
    let (end, _) = chars[chars.len() / 2 + 6];
    let stop = full.text[start..end].to_owned();
    let expected = &full.text[..full.text.find(&stop).unwrap()];

    let mut with_stop = request.clone();
    with_stop.stop = vec!["never appears ~~".into(), stop.clone()];
    let (cut, pieces) = run(&with_stop);
    assert_eq!(cut.finish, Finish::Stop);
    assert_eq!(cut.text, expected);
    assert!(!cut.text.contains(&stop));
    assert!(pieces.iter().all(|piece| !piece.contains(&stop)));
    assert!(cut.completion_tokens >= 1 && cut.completion_tokens <= full.completion_tokens);
}

#[test]
fn closing_the_stream_cancels_and_bills_what_was_generated() {
    let request = chat("Write a haiku about the sea.", 40);
    let (sender, mut receiver) = mpsc::channel(1);
    let reader = std::thread::spawn(move || {
        let mut received = vec![receiver.blocking_recv().expect("a first piece")];
        // The client goes away: nothing more is accepted; what was already sent is drained.
        receiver.close();
        while let Some(piece) = receiver.blocking_recv() {
            received.push(piece);
        }
        received
    });
    let generation = model()
        .generate(&request, &sender, &CancellationToken::new())
        .unwrap();
    let received = reader.join().unwrap();
    assert_eq!(generation.finish, Finish::Cancelled);
    assert!(generation.completion_tokens >= 1);
    assert!(generation.completion_tokens < 40);
    assert_eq!(generation.text, received.concat());
}

#[test]
fn a_fired_cancellation_token_stops_before_any_work() {
    let (sender, _receiver) = mpsc::channel(STREAM_BUFFER);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let generation = model()
        .generate(&chat("Hello", 10), &sender, &cancel)
        .unwrap();
    assert_eq!(generation.finish, Finish::Cancelled);
    assert_eq!(generation.completion_tokens, 0);
    assert_eq!(generation.text, "");
}

#[test]
fn too_long_a_request_is_refused_before_generating() {
    let (sender, _receiver) = mpsc::channel(STREAM_BUFFER);
    let cancel = CancellationToken::new();
    let mut long = chat("", 16);
    long.prompt = Prompt::Text("hello ".repeat(5000));
    let prompt = model().prompt_tokens(&long.prompt).unwrap();
    assert!(prompt > 4096);
    assert_eq!(
        model().generate(&long, &sender, &cancel),
        Err(InferenceError::ContextLength {
            max: 4096,
            prompt,
            max_tokens: 16
        })
    );
    // A short prompt with room for fewer completion tokens than asked is refused too.
    let greedy = chat("Hello", 4096);
    let prompt = model().prompt_tokens(&greedy.prompt).unwrap();
    assert_eq!(
        model().generate(&greedy, &sender, &cancel),
        Err(InferenceError::ContextLength {
            max: 4096,
            prompt,
            max_tokens: 4096
        })
    );
}

#[test]
fn multibyte_text_streams_in_whole_characters() {
    let mut request = chat("", 24);
    request.prompt = Prompt::Text("😀🎉🚀 你好，世界！🌍🌟 我喜欢".into());
    let (generation, pieces) = run(&request);
    assert!(!generation.text.is_empty());
    assert!(!generation.text.is_ascii(), "{generation:?}");
    assert!(
        pieces.iter().all(|piece| !piece.contains('\u{FFFD}')),
        "{pieces:?}"
    );
    // The answer holds characters split over several byte-level tokens: the hold-back mattered.
    let split_characters = ids(&generation.text)
        .into_iter()
        .any(|id| std::str::from_utf8(model().bytes_of(id)).is_err());
    assert!(split_characters, "{generation:?}");
}
