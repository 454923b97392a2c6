"""Drives a suanli node's OpenAI-compatible API with the official `openai` client.

    python openai_client.py BASE_URL MODEL

Every check raises on failure (the process then exits non-zero with the reason); on success it
prints one JSON object with what was generated and the usage the API reported, which the Rust
test compares with both nodes' ledgers.
"""

import json
import sys

import openai


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}

    def count(reported):
        usage["prompt_tokens"] += reported.prompt_tokens
        usage["completion_tokens"] += reported.completion_tokens
        usage["requests"] += 1

    models = [m.id for m in client.models.list()]
    check(model in models, f"{model} not in /v1/models: {models}")

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    first = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0
    )
    answer = first.choices[0].message.content
    check(first.object == "chat.completion", f"object {first.object}")
    check(answer, "empty answer")
    check(first.choices[0].finish_reason in ("stop", "length"), first.choices[0].finish_reason)
    check(first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0, str(first.usage))
    check(
        first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens,
        str(first.usage),
    )
    count(first.usage)

    # Greedy decoding is reproducible: the same request gives the same tokens.
    again = client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=24, temperature=0, seed=7
    )
    check(again.choices[0].message.content == answer, f"{again.choices[0].message.content!r} != {answer!r}")
    check(again.usage.completion_tokens == first.usage.completion_tokens, "completion tokens differ")
    count(again.usage)

    # Streaming gives the same text, and the usage in one last chunk.
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, streamed_usage, roles = [], None, None, []
    for chunk in stream:
        check(chunk.object == "chat.completion.chunk", chunk.object)
        if chunk.usage is not None:
            streamed_usage = chunk.usage
            check(chunk.choices == [], "the usage chunk has choices")
            continue
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        if delta.content:
            pieces.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    check("".join(pieces) == answer, f"streamed {''.join(pieces)!r} != {answer!r}")
    check(roles == ["assistant"], f"roles {roles}")
    check(finish == first.choices[0].finish_reason, f"finish {finish}")
    check(streamed_usage is not None, "no usage chunk")
    check(streamed_usage.completion_tokens == first.usage.completion_tokens, str(streamed_usage))
    count(streamed_usage)

    # Completions.
    completion = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    check(completion.object == "text_completion", completion.object)
    check(completion.choices[0].text, "empty completion")
    count(completion.usage)

    # A stop sequence cuts the text before it.
    words = answer.split()
    stop = words[len(words) // 2] if len(words) > 1 else answer[len(answer) // 2 :]
    stopped = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, stop=[stop]
    )
    check(stop not in stopped.choices[0].message.content, f"stop {stop!r} in the text")
    check(answer.startswith(stopped.choices[0].message.content), "stopped text is not a prefix")
    check(stopped.choices[0].finish_reason == "stop", stopped.choices[0].finish_reason)
    count(stopped.usage)

    # max_tokens is honoured.
    short = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=5,
        temperature=0,
    )
    check(short.usage.completion_tokens == 5, str(short.usage))
    check(short.choices[0].finish_reason == "length", short.choices[0].finish_reason)
    count(short.usage)

    # Sampling with a seed is reproducible too.
    sampled = [
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=12, temperature=0.8, top_p=0.9, seed=42
        )
        for _ in range(2)
    ]
    check(
        sampled[0].choices[0].message.content == sampled[1].choices[0].message.content,
        "the same seed gave different text",
    )
    for response in sampled:
        count(response.usage)

    # Errors in OpenAI's shape.
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("an unknown model was served")
    except openai.NotFoundError as error:
        check(error.code == "model_not_found", f"code {error.code}")
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=100000)
        raise AssertionError("a request beyond the context was served")
    except openai.BadRequestError as error:
        check(error.code == "context_length_exceeded", f"code {error.code}")
    try:
        client.chat.completions.create(model=model, messages=messages, n=2)
        raise AssertionError("n=2 was served")
    except openai.BadRequestError as error:
        check(error.body is not None, "no error body")

    print(json.dumps({"answer": answer, "usage": usage}))


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # one line for the test's failure message
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
