//! The built-in engine: a GGUF model of the llama family run by candle on the CPU.
//!
//! It owns everything between a [`GenerateRequest`] and the text pieces of its answer: the
//! tokenizer, the chat template, the weights, sampling, stop handling and the streaming of whole
//! UTF-8 characters. It never touches the network or the ledger, and never sets process-wide
//! state (environment variables, thread pools).
//!
//! **Loading** ([`load`]) reads the file once to hash it (SHA-256 of the file, streamed, which is
//! what contracts bind), then parses it from the same open file:
//!
//! - *Tokenizer.* The vocabulary and merges come from the GGUF metadata (candle's
//!   `TokenizerFromGguf`), but candle does not know the pre-tokenizer type `smollm` (SmolLM2)
//!   and falls back to GPT-2 settings that add a space before the text (`Hello` → ` Hello`) and
//!   group digits. For `smollm` the pre-tokenizer is replaced with what SmolLM2's own tokenizer
//!   uses: `Sequence[Digits(individual_digits), ByteLevel(add_prefix_space = false)]`, which gives
//!   llama.cpp's ids. Special tokens are never recognised in text
//!   ([`Tokenizer::set_encode_special_tokens`]): the chat template inserts them by id, so a user
//!   writing `<|im_end|>` in a message gets those characters, not the control token.
//! - *Re-quantisation.* candle has no SIMD kernel for Q4_1; its Q8_0 kernels are about 2.5×
//!   faster. Every Q4_1 tensor is dequantised and re-quantised to Q8_0 once at load (about a
//!   second, deterministic), so the model is served — and advertised — as Q8_0. The tensors
//!   pass through an in-memory copy for this, so loading briefly needs about twice the weights'
//!   memory.
//! - *Warm-up.* A short greedy generation measures the decode speed the advert carries and
//!   builds candle's packed weight caches before the first request.
//!
//! **Chat template.** ChatML, as SmolLM2's template renders it: `<|im_start|>role\n…<|im_end|>\n`
//! per message, then `<|im_start|>assistant\n`; `developer` is rendered as `system`; when the
//! first message is not a system message, the template's default system prompt comes first
//! (read from `tokenizer.chat_template`). A [`Prompt::Text`] is tokenised as it is, without the
//! template and, like chat content, without special tokens.
//!
//! **Limits.** candle's quantised llama precomputes rotary positions up to
//! [`MAX_SEQ_LEN`] (4,096), so the context served is the smaller of that and the model's own;
//! a request whose prompt plus `max_tokens` exceeds it is refused before anything runs. The
//! prompt is fed in chunks of 256 tokens, so attention scores never need more than
//! `heads × 256 × context` floats. A stream's key-value cache grows with its tokens, up
//! to about 190 MB for SmolLM2-135M at 4,096 tokens.
//!
//! **Concurrency.** [`CandleModel::generate`] takes `&self` and may run on several threads at
//! once: each call clones the loaded weights (every tensor is reference-counted, so a clone costs
//! a few hundred pointer copies) and so gets its own key-value cache. Within a call everything
//! runs on the calling thread — except what candle spreads over threads of its own: its quantised
//! matrix products use one process-wide worker pool of `CANDLE_NUM_THREADS` (else
//! `RAYON_NUM_THREADS`, else as many as physical cores) threads, sized once, which serves one
//! caller at a time and whose workers spin between tasks; its f32 products use rayon with
//! `RAYON_NUM_THREADS` threads. With more than one thread, concurrent streams queue for that pool
//! and its spinning workers fight every other busy thread: on two busy cores one stream fell from
//! about 35 to 4 tokens/s. **The node's process must therefore run with `RAYON_NUM_THREADS=1`**:
//! each stream then computes on its own thread, and N streams use N cores. This module cannot set
//! it (changing the environment of a running, threaded process is unsound); the `suanli` binary
//! re-executes itself with it (`node/src/main.rs`), and the workspace's `.cargo/config.toml` sets
//! it for tests.
//!
//! **Determinism.** Greedy decoding (temperature 0) is an argmax over logits computed the same
//! way every time, so the same request on the same machine and build gives the same text; with a
//! temperature, the sampler is seeded from the request, so the same seed gives the same text.

use std::fs::File;
use std::io::{BufReader, Cursor, ErrorKind, Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling as Sampler};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use sha2::{Digest, Sha256};
use suanli_protocol::Hash32;
use suanli_protocol::tokens::{Finish, GenerateRequest, MAX_TEXT_FRAME_BYTES, Prompt, Sampling};
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Backend, Generation, InferenceError, ServedModel};

/// Prompt tokens fed to the model in one forward pass.
const PREFILL_CHUNK: usize = 256;
/// Tokens decoded at load to measure the decode speed.
const WARM_UP_TOKENS: usize = 16;
/// What the warm-up continues.
const WARM_UP_PROMPT: &str = "The history of computing began";
/// SmolLM2's default system prompt, used when the file carries no chat template at all.
const SMOLLM_SYSTEM_PROMPT: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
/// Read size while hashing the model file.
const HASH_BUFFER_BYTES: usize = 1 << 20;

/// A loaded model, ready to generate on any number of threads at once.
pub struct CandleModel {
    name: String,
    /// The weights with an empty key-value cache; each generation works on its own clone.
    weights: ModelWeights,
    /// Encodes text only: special tokens in it are not recognised.
    tokenizer: Tokenizer,
    /// What each token id decodes to (byte-level tokens map back to raw bytes, which may be
    /// part of a UTF-8 character).
    token_bytes: Vec<Box<[u8]>>,
    /// Ids that end an answer (`<|im_end|>`, `<|endoftext|>`, the file's EOS).
    end_ids: Vec<u32>,
    /// Prepended to every prompt when the file asks for it.
    bos: Option<u32>,
    /// `None` when the model has no ChatML tokens: it then serves [`Prompt::Text`] only.
    chat: Option<ChatMl>,
    /// Most prompt + completion tokens per request.
    context: u32,
}

impl std::fmt::Debug for CandleModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleModel")
            .field("name", &self.name)
            .field("vocabulary", &self.token_bytes.len())
            .field("end_ids", &self.end_ids)
            .field("bos", &self.bos)
            .field("chat", &self.chat)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// The ChatML template as SmolLM2 renders it.
#[derive(Debug)]
struct ChatMl {
    im_start: u32,
    im_end: u32,
    /// The tokens of `"\n"` (after each `<|im_end|>`).
    newline: Vec<u32>,
    /// The tokens of `"assistant\n"` (the generation prompt, after `<|im_start|>`).
    assistant: Vec<u32>,
    /// Rendered first when the chat does not start with a system message.
    default_system: Option<String>,
}

impl CandleModel {
    /// Generates for `request` on the calling thread (blocking; never call it from async code:
    /// sending on `pieces` blocks).
    ///
    /// Pieces are whole UTF-8 characters, at most [`MAX_TEXT_FRAME_BYTES`] each, never empty,
    /// and never hold any part of a stop sequence; their concatenation is the returned text.
    /// Generation ends with [`Finish::Stop`] at an end-of-answer token or a stop sequence, with
    /// [`Finish::Length`] after `max_tokens` tokens, and with [`Finish::Cancelled`] as soon as
    /// `pieces` is closed or `cancel` fires.
    ///
    /// `completion_tokens` counts the tokens the model generated for the answer, including those
    /// that formed a stop sequence or were held back when it was cancelled, but not the
    /// end-of-answer token itself (as OpenAI-style servers count): a 5-token answer followed by
    /// `<|im_end|>` is 5 tokens.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        pieces: &mpsc::Sender<String>,
        cancel: &CancellationToken,
    ) -> Result<Generation, InferenceError> {
        let prompt = self.encode_prompt(&request.prompt)?;
        let prompt_tokens = token_count(prompt.len());
        self.check_context(prompt_tokens, request.max_tokens)?;
        if prompt.is_empty() {
            return Err(InferenceError::BadRequest("the prompt is empty".into()));
        }
        let mut generation = Generation {
            prompt_tokens,
            completion_tokens: 0,
            finish: Finish::Cancelled,
            text: String::new(),
        };
        if request.max_tokens == 0 {
            generation.finish = Finish::Length;
            return Ok(generation);
        }
        let stopped = || cancel.is_cancelled() || pieces.is_closed();
        let started = Instant::now();

        let mut weights = self.weights.clone();
        let mut sampler =
            LogitsProcessor::from_sampling(request.sampling.seed, sampler_for(request.sampling));
        let mut position = 0;
        let mut logits = None;
        for chunk in prompt.chunks(PREFILL_CHUNK) {
            if stopped() {
                return Ok(generation);
            }
            logits = Some(forward(&mut weights, chunk, position)?);
            position += chunk.len();
        }
        let Some(mut logits) = logits else {
            return Err(InferenceError::Failed(
                "the prompt produced no logits".into(),
            ));
        };
        let prefilled = Instant::now();

        let mut stream = TextStream::new(&request.stop);
        let mut sink = Sink {
            pieces,
            text: &mut generation.text,
        };
        generation.finish = loop {
            if stopped() {
                break Finish::Cancelled;
            }
            let token = sampler.sample(&logits).map_err(engine_error)?;
            if self.end_ids.contains(&token) {
                break sink.deliver(stream.finish()).unwrap_or(Finish::Stop);
            }
            generation.completion_tokens += 1;
            if let Some(ended) = sink.deliver(stream.push(self.bytes_of(token))) {
                break ended;
            }
            if generation.completion_tokens >= request.max_tokens {
                break sink.deliver(stream.finish()).unwrap_or(Finish::Length);
            }
            logits = forward(&mut weights, &[token], position)?;
            position += 1;
        };

        let decode = prefilled.elapsed();
        tracing::debug!(
            model = %self.name,
            prompt_tokens,
            completion_tokens = generation.completion_tokens,
            finish = generation.finish.name(),
            prefill_ms = (prefilled - started).as_millis() as u64,
            decode_tokens_per_s = per_second(generation.completion_tokens as usize, decode),
            "generated"
        );
        Ok(generation)
    }

    /// Prompt tokens of `prompt` as this model counts them (chat template applied).
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<u32, InferenceError> {
        Ok(token_count(self.encode_prompt(prompt)?.len()))
    }

    fn check_context(&self, prompt: u32, max_tokens: u32) -> Result<(), InferenceError> {
        if u64::from(prompt) + u64::from(max_tokens) > u64::from(self.context) {
            return Err(InferenceError::ContextLength {
                max: self.context,
                prompt,
                max_tokens,
            });
        }
        Ok(())
    }

    /// The token ids the model is given for `prompt`.
    fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, InferenceError> {
        let mut ids = Vec::new();
        ids.extend(self.bos);
        match prompt {
            Prompt::Text(text) => ids.extend(self.encode_text(text)?),
            Prompt::Chat(messages) => {
                let Some(chat) = &self.chat else {
                    return Err(InferenceError::BadRequest(
                        "this model has no chat template; send a text prompt".into(),
                    ));
                };
                let mut turn = |role: &str, content: &str| -> Result<(), InferenceError> {
                    ids.push(chat.im_start);
                    ids.extend(self.encode_text(&format!("{role}\n{content}"))?);
                    ids.push(chat.im_end);
                    ids.extend_from_slice(&chat.newline);
                    Ok(())
                };
                let starts_with_system = messages
                    .first()
                    .is_some_and(|first| matches!(first.role.as_str(), "system" | "developer"));
                if !starts_with_system && let Some(system) = &chat.default_system {
                    turn("system", system)?;
                }
                for message in messages {
                    let role = match message.role.as_str() {
                        "system" | "developer" => "system",
                        "user" => "user",
                        "assistant" => "assistant",
                        other => {
                            return Err(InferenceError::BadRequest(format!(
                                "unknown role {other:?} (system, developer, user or assistant)"
                            )));
                        }
                    };
                    turn(role, &message.content)?;
                }
                ids.push(chat.im_start);
                ids.extend_from_slice(&chat.assistant);
            }
        }
        Ok(ids)
    }

    /// Tokens of `text` as plain text (special tokens are not recognised).
    fn encode_text(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|error| InferenceError::Failed(format!("tokenizer: {error}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn bytes_of(&self, token: u32) -> &[u8] {
        self.token_bytes
            .get(token as usize)
            .map_or(&[][..], |bytes| &bytes[..])
    }

    /// Decodes [`WARM_UP_TOKENS`] tokens greedily; returns the decode speed in tokens/s.
    fn warm_up(&self) -> Result<u32, InferenceError> {
        let prompt = self.encode_text(WARM_UP_PROMPT)?;
        let mut weights = self.weights.clone();
        let mut greedy = LogitsProcessor::from_sampling(0, Sampler::ArgMax);
        let prefill_started = Instant::now();
        let mut logits = forward(&mut weights, &prompt, 0)?;
        let prefill = prefill_started.elapsed();
        let decode_started = Instant::now();
        for step in 0..WARM_UP_TOKENS {
            let token = greedy.sample(&logits).map_err(engine_error)?;
            logits = forward(&mut weights, &[token], prompt.len() + step)?;
        }
        let decode = decode_started.elapsed();
        tracing::info!(
            model = %self.name,
            prefill_tokens = prompt.len(),
            prefill_ms = prefill.as_millis() as u64,
            decode_tokens = WARM_UP_TOKENS,
            decode_ms = decode.as_millis() as u64,
            "warm-up"
        );
        Ok(per_second(WARM_UP_TOKENS, decode).max(1))
    }
}

/// Loads the GGUF file at `path` to serve as `name` (blocking: seconds of CPU work).
///
/// Supports the llama architecture (`general.architecture = llama`) with a byte-level BPE
/// (`gpt2`) tokenizer. Q4_1 weights are served as Q8_0 (see the module doc).
pub fn load(name: &str, path: &Path) -> Result<ServedModel, InferenceError> {
    let failed =
        |reason: String| InferenceError::Failed(format!("model {}: {reason}", path.display()));
    let started = Instant::now();
    let mut file = File::open(path).map_err(|error| failed(format!("cannot open it: {error}")))?;
    let sha256 =
        sha256_of(&mut file).map_err(|error| failed(format!("cannot read it: {error}")))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|error| failed(format!("cannot read it: {error}")))?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == b"GGUF" => {}
        Ok(()) | Err(_) => return Err(failed("not a GGUF file".into())),
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|error| failed(format!("cannot read it: {error}")))?;
    let mut reader = BufReader::new(file);

    // candle's loaders are third-party code reading a file: a malformed one must fail the load,
    // not take the node down.
    let loaded = catch_unwind(AssertUnwindSafe(|| build(name, &mut reader)))
        .map_err(|_| failed("the engine panicked while reading it".into()))?
        .map_err(failed)?;
    let Loaded {
        model,
        family,
        quantisation,
    } = loaded;
    let read = started.elapsed();
    let decode_tokens_per_s = model
        .warm_up()
        .map_err(|error| failed(format!("warm-up: {error}")))?;
    tracing::info!(
        model = name,
        path = %path.display(),
        %family,
        %quantisation,
        context = model.context,
        sha256 = %sha256,
        load_ms = read.as_millis() as u64,
        decode_tokens_per_s,
        "model loaded"
    );
    Ok(ServedModel {
        name: name.to_owned(),
        family,
        context: model.context,
        quantisation,
        sha256,
        decode_tokens_per_s,
        backend: Backend::Candle(Arc::new(model)),
    })
}

struct Loaded {
    model: CandleModel,
    family: String,
    quantisation: String,
}

/// Parses the GGUF from `reader` and builds the model; errors are reasons, without the path.
fn build<R: Read + Seek>(name: &str, reader: &mut R) -> Result<Loaded, String> {
    let content =
        Content::read(reader).map_err(|error| format!("not a valid GGUF file: {error}"))?;
    let family = meta_str(&content, "general.architecture")
        .ok_or("no general.architecture in its metadata")?
        .to_owned();
    if family != "llama" {
        return Err(format!(
            "architecture {family:?} is not supported (the built-in engine runs llama)"
        ));
    }
    check_llama(&content)?;
    let rows = content
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|info| info.shape.dims().first().copied())
        .ok_or("no token_embd.weight tensor")?;
    let context = meta_u64(&content, "llama.context_length")
        .filter(|length| *length > 0)
        .map_or(MAX_SEQ_LEN, |length| (length as usize).min(MAX_SEQ_LEN));
    let context = u32::try_from(context).map_err(|_| "context length out of range")?;

    let text = TextSide::from_gguf(&content, rows)?;
    let (weights, quantisation) = load_weights(content, reader)?;
    let model = CandleModel {
        name: name.to_owned(),
        weights,
        tokenizer: text.tokenizer,
        token_bytes: text.token_bytes,
        end_ids: text.end_ids,
        bos: text.bos,
        chat: text.chat,
        context,
    };
    Ok(Loaded {
        model,
        family,
        quantisation,
    })
}

/// Refuses llama hyper-parameters candle would divide by zero on or mis-shape.
fn check_llama(content: &Content) -> Result<(), String> {
    let get = |key: &str| {
        meta_u64(content, key)
            .filter(|value| *value > 0)
            .ok_or_else(|| format!("metadata {key} is missing or zero"))
    };
    let heads = get("llama.attention.head_count")?;
    let kv_heads = get("llama.attention.head_count_kv")?;
    let width = get("llama.embedding_length")?;
    get("llama.block_count")?;
    let rope = get("llama.rope.dimension_count")?;
    if heads % kv_heads != 0 || width % heads != 0 || rope != width / heads {
        return Err(format!(
            "unsupported attention shape: {heads} heads, {kv_heads} key-value heads, width \
             {width}, rotary dimension {rope}"
        ));
    }
    if !matches!(
        content
            .metadata
            .get("llama.attention.layer_norm_rms_epsilon"),
        Some(Value::F32(_))
    ) {
        return Err("metadata llama.attention.layer_norm_rms_epsilon is missing".into());
    }
    Ok(())
}

/// Reads the weights, re-quantising Q4_1 tensors to Q8_0; returns them with the name of the
/// quantisation most of the weights are served in.
fn load_weights<R: Read + Seek>(
    content: Content,
    reader: &mut R,
) -> Result<(ModelWeights, String), String> {
    let cpu = Device::Cpu;
    let tensor_error = |name: &str, error: candle_core::Error| format!("tensor {name}: {error}");
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let needs_requantising = content
        .tensor_infos
        .values()
        .any(|info| info.ggml_dtype == GgmlDType::Q4_1);

    let mut elements_by_dtype: Vec<(GgmlDType, usize)> = Vec::new();
    let mut count = |dtype: GgmlDType, info: &TensorInfo| {
        if info.shape.rank() < 2 {
            return;
        }
        let elements = info.shape.elem_count();
        match elements_by_dtype
            .iter_mut()
            .find(|(seen, _)| *seen == dtype)
        {
            Some((_, total)) => *total += elements,
            None => elements_by_dtype.push((dtype, elements)),
        }
    };

    let weights = if needs_requantising {
        // The re-quantised tensors go into an in-memory GGUF data section that candle's loader
        // then reads like a file.
        let mut data = Vec::new();
        let mut infos = std::collections::HashMap::new();
        for name in &names {
            let Some(info) = content.tensor_infos.get(name) else {
                continue;
            };
            let mut tensor = info
                .read(reader, content.tensor_data_offset, &cpu)
                .map_err(|error| tensor_error(name, error))?;
            if tensor.dtype() == GgmlDType::Q4_1 {
                tensor = tensor
                    .dequantize(&cpu)
                    .and_then(|weights| QTensor::quantize(&weights, GgmlDType::Q8_0))
                    .map_err(|error| tensor_error(name, error))?;
            }
            let served = TensorInfo {
                ggml_dtype: tensor.dtype(),
                shape: tensor.shape().clone(),
                offset: data.len() as u64,
            };
            count(served.ggml_dtype, &served);
            data.extend_from_slice(&tensor.data().map_err(|error| tensor_error(name, error))?);
            infos.insert(name.clone(), served);
        }
        let in_memory = Content {
            magic: content.magic,
            metadata: content.metadata,
            tensor_infos: infos,
            tensor_data_offset: 0,
        };
        ModelWeights::from_gguf(in_memory, &mut Cursor::new(data), &cpu)
    } else {
        for info in content.tensor_infos.values() {
            count(info.ggml_dtype, info);
        }
        ModelWeights::from_gguf(content, reader, &cpu)
    }
    .map_err(|error| format!("cannot load the weights: {error}"))?;

    let quantisation = elements_by_dtype
        .iter()
        .max_by_key(|(_, elements)| *elements)
        .map_or("", |(dtype, _)| ggml_name(*dtype));
    Ok((weights, quantisation.to_owned()))
}

/// llama.cpp's name of a GGML type.
fn ggml_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// Everything about text a GGUF file holds: tokenizer, decoding table, special ids, template.
struct TextSide {
    tokenizer: Tokenizer,
    token_bytes: Vec<Box<[u8]>>,
    end_ids: Vec<u32>,
    bos: Option<u32>,
    chat: Option<ChatMl>,
}

impl TextSide {
    /// `rows`: how many tokens the embedding table holds.
    fn from_gguf(content: &Content, rows: usize) -> Result<TextSide, String> {
        let tokens = match content.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens
                .iter()
                .map(|token| match token {
                    Value::String(token) => Ok(token.as_str()),
                    _ => Err("tokenizer.ggml.tokens holds a non-string"),
                })
                .collect::<Result<Vec<&str>, _>>()?,
            _ => return Err("no tokenizer.ggml.tokens in its metadata".into()),
        };
        if tokens.is_empty() || tokens.len() > rows {
            return Err(format!(
                "the tokenizer has {} tokens, the embedding table {rows} rows",
                tokens.len()
            ));
        }
        let mut tokenizer = Tokenizer::from_gguf(content)
            .map_err(|error| format!("cannot build its tokenizer: {error}"))?;
        if meta_str(content, "tokenizer.ggml.pre") == Some("smollm") {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
        }
        tokenizer.set_encode_special_tokens(true);

        // llama.cpp's token types: 3 = control, 4 = user-defined; their text is literal.
        let token_types: Vec<u64> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(types)) => types.iter().map(|t| value_u64(t).unwrap_or(1)).collect(),
            _ => Vec::new(),
        };
        let to_byte = byte_level_decoding();
        let token_bytes = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| {
                let literal = matches!(token_types.get(id), Some(&(3 | 4)));
                token_to_bytes(token, literal, &to_byte)
            })
            .collect();

        let id_of = |token: &str| {
            tokens
                .iter()
                .position(|t| *t == token)
                .and_then(|id| u32::try_from(id).ok())
        };
        let meta_id = |key: &str| {
            meta_u64(content, key)
                .and_then(|id| u32::try_from(id).ok())
                .filter(|id| (*id as usize) < tokens.len())
        };
        let mut end_ids: Vec<u32> = [
            meta_id("tokenizer.ggml.eos_token_id"),
            meta_id("tokenizer.ggml.eot_token_id"),
            id_of("<|im_end|>"),
            id_of("<|endoftext|>"),
        ]
        .into_iter()
        .flatten()
        .collect();
        end_ids.sort_unstable();
        end_ids.dedup();
        let bos = match content.metadata.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(true)) => meta_id("tokenizer.ggml.bos_token_id"),
            _ => None,
        };

        let template = meta_str(content, "tokenizer.chat_template");
        let chat_tokens = (id_of("<|im_start|>"), id_of("<|im_end|>"));
        let template_is_chatml = template.is_none_or(|template| template.contains("<|im_start|>"));
        let encode = |text: &str| {
            tokenizer
                .encode_fast(text, false)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(|error| format!("tokenizer: {error}"))
        };
        let chat = match chat_tokens {
            (Some(im_start), Some(im_end)) if template_is_chatml => Some(ChatMl {
                im_start,
                im_end,
                newline: encode("\n")?,
                assistant: encode("assistant\n")?,
                default_system: default_system_prompt(template),
            }),
            _ => None,
        };
        Ok(TextSide {
            tokenizer,
            token_bytes,
            end_ids,
            bos,
            chat,
        })
    }
}

/// The system prompt a ChatML template renders when the chat has none: the literal text of
/// `<|im_start|>system\n…<|im_end|>` in `template`; SmolLM2's when there is no template.
fn default_system_prompt(template: Option<&str>) -> Option<String> {
    let Some(template) = template else {
        return Some(SMOLLM_SYSTEM_PROMPT.to_owned());
    };
    // Jinja sources hold the newline either as such or escaped.
    let (start, header) = ["<|im_start|>system\n", "<|im_start|>system\\n"]
        .into_iter()
        .find_map(|header| template.find(header).map(|start| (start, header)))?;
    let rest = template.get(start + header.len()..)?;
    let text = rest.get(..rest.find("<|im_end|>")?)?;
    // Anything else is template code (`+ message['content']`), not a literal prompt.
    let literal = !text.is_empty() && !text.contains(['\'', '"', '{', '}', '\\', '+']);
    literal.then(|| text.to_owned())
}

/// GPT-2's byte-level alphabet reversed: the byte each of its 256 characters stands for.
/// Printable bytes stand for themselves; the others were moved to U+0100 onwards, in order.
fn byte_level_decoding() -> Vec<Option<u8>> {
    let mut to_byte = vec![None; 256 + 68];
    let mut moved = 0;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            usize::from(byte)
        } else {
            moved += 1;
            255 + moved
        };
        if let Some(slot) = to_byte.get_mut(code) {
            *slot = Some(byte);
        }
    }
    to_byte
}

/// The bytes `token` decodes to: its own text when `literal`, else byte-level decoded (a
/// character outside the alphabet, which a well-formed vocabulary never holds, stands for
/// itself).
fn token_to_bytes(token: &str, literal: bool, to_byte: &[Option<u8>]) -> Box<[u8]> {
    if literal {
        return token.as_bytes().into();
    }
    let mut bytes = Vec::with_capacity(token.len());
    for character in token.chars() {
        match to_byte.get(character as usize).copied().flatten() {
            Some(byte) => bytes.push(byte),
            None => bytes.extend_from_slice(character.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    bytes.into()
}

/// One forward pass over `ids` at `position`; the logits of the last one, shape `[vocab]`.
fn forward(
    weights: &mut ModelWeights,
    ids: &[u32],
    position: usize,
) -> Result<Tensor, InferenceError> {
    Tensor::new(ids, &Device::Cpu)
        .and_then(|ids| ids.unsqueeze(0))
        .and_then(|ids| weights.forward(&ids, position))
        .and_then(|logits| logits.squeeze(0))
        .map_err(engine_error)
}

fn engine_error(error: candle_core::Error) -> InferenceError {
    InferenceError::Failed(format!("engine: {error}"))
}

/// candle's sampler for the request's sampling (thousandths → fractions).
fn sampler_for(sampling: Sampling) -> Sampler {
    if sampling.temperature_milli == 0 {
        return Sampler::ArgMax;
    }
    let temperature = f64::from(sampling.temperature_milli) / 1000.0;
    if sampling.top_p_milli >= 1000 || sampling.top_p_milli == 0 {
        Sampler::All { temperature }
    } else {
        Sampler::TopP {
            p: f64::from(sampling.top_p_milli) / 1000.0,
            temperature,
        }
    }
}

fn token_count(tokens: usize) -> u32 {
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

fn per_second(tokens: usize, elapsed: Duration) -> u32 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return 0;
    }
    (tokens as f64 / seconds).round() as u32
}

/// Streamed SHA-256 of the rest of `file`.
fn sha256_of(file: &mut File) -> std::io::Result<Hash32> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => hasher.update(buffer.get(..read).unwrap_or_default()),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(Hash32(hasher.finalize().into()))
}

fn value_u64(value: &Value) -> Option<u64> {
    match value {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn meta_u64(content: &Content, key: &str) -> Option<u64> {
    content.metadata.get(key).and_then(value_u64)
}

fn meta_str<'a>(content: &'a Content, key: &str) -> Option<&'a str> {
    match content.metadata.get(key) {
        Some(Value::String(value)) => Some(value),
        _ => None,
    }
}

/// Where generated text goes: the stream's channel, and the record of what it was sent.
struct Sink<'a> {
    pieces: &'a mpsc::Sender<String>,
    text: &'a mut String,
}

impl Sink<'_> {
    /// Sends what `step` releases; returns how generation ends if this ends it:
    /// [`Finish::Stop`] at a stop sequence, [`Finish::Cancelled`] if the channel is closed.
    fn deliver(&mut self, step: Step) -> Option<Finish> {
        let (text, finish) = match step {
            Step::Ready(text) => (text, None),
            Step::Stopped(text) => (text, Some(Finish::Stop)),
        };
        for piece in split_pieces(&text, MAX_TEXT_FRAME_BYTES) {
            if self.pieces.blocking_send(piece.to_owned()).is_err() {
                return Some(Finish::Cancelled);
            }
            self.text.push_str(piece);
        }
        finish
    }
}

/// `text` cut into non-empty pieces of at most `max` bytes (at least 4), at character
/// boundaries.
fn split_pieces(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let max = max.max(4);
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// What a [`TextStream`] releases after a token.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Text safe to send now (possibly empty); generation goes on.
    Ready(String),
    /// A stop sequence appeared: the text before it, to send, and then generation ends.
    Stopped(String),
}

/// Turns generated bytes into text that is safe to send: whole UTF-8 characters, no part of a
/// stop sequence, and nothing that might still turn out to begin one. A pure state machine; the
/// caller does the sending.
#[derive(Debug)]
struct TextStream<'a> {
    stops: Vec<&'a str>,
    /// The start of a UTF-8 character whose other bytes have not come yet (at most 3 bytes).
    undecoded: Vec<u8>,
    /// Decoded text held back because it ends with the start of a stop sequence.
    held: String,
}

impl<'a> TextStream<'a> {
    fn new(stops: &'a [String]) -> Self {
        TextStream {
            stops: stops
                .iter()
                .map(String::as_str)
                .filter(|stop| !stop.is_empty())
                .collect(),
            undecoded: Vec::new(),
            held: String::new(),
        }
    }

    /// Takes the bytes of one more token.
    fn push(&mut self, bytes: &[u8]) -> Step {
        self.undecoded.extend_from_slice(bytes);
        let mut rest = &self.undecoded[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.held.push_str(text);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    self.held
                        .push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match error.error_len() {
                        // Invalid bytes, not a character cut short: no later byte can fix them.
                        Some(invalid) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(invalid..).unwrap_or_default();
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let kept = rest.len();
        let consumed = self.undecoded.len() - kept;
        self.undecoded.drain(..consumed);
        self.release()
    }

    /// The generation ended: releases everything (an unfinished character as U+FFFD).
    fn finish(&mut self) -> Step {
        if !self.undecoded.is_empty() {
            self.held
                .push_str(&String::from_utf8_lossy(&self.undecoded));
            self.undecoded.clear();
        }
        match self.release() {
            Step::Ready(mut ready) => {
                ready.push_str(&self.held);
                self.held.clear();
                Step::Ready(ready)
            }
            stopped => stopped,
        }
    }

    fn release(&mut self) -> Step {
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop))
            .min()
        {
            self.held.truncate(at);
            return Step::Stopped(std::mem::take(&mut self.held));
        }
        // Hold back the longest end of the text that begins a stop sequence.
        let held_back = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter_map(|len| stop.get(..len))
                    .find(|start| self.held.ends_with(start))
                    .map(str::len)
            })
            .max()
            .unwrap_or(0);
        let ready = self.held.len() - held_back;
        if !self.held.is_char_boundary(ready) {
            return Step::Ready(String::new());
        }
        let rest = self.held.split_off(ready);
        Step::Ready(std::mem::replace(&mut self.held, rest))
    }
}

#[cfg(test)]
mod tests;
