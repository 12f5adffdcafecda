"""Use the official `openai` Python client against `neuron-spec serve`.

neuron-spec serve configs/demo-cpu.yaml --port 8080 &
python examples/openai_client.py --base-url http://127.0.0.1:8080/v1
"""

from __future__ import annotations

import argparse
import os

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--prompt", default="The three primary colours are")
    ap.add_argument(
        "--api-key", default=os.environ.get("NEURON_SPEC_API_KEY", "not-needed"),
        help="the key `serve --api-key` was started with (without one, any value works)",
    )  # fmt: skip
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = client.models.list().data[0].id  # the one model the server serves

    done = client.completions.create(
        model=model, prompt=args.prompt, max_tokens=32, temperature=0.0
    )
    print(args.prompt + done.choices[0].text)
    print(f"[{done.usage.completion_tokens} tokens, finish_reason={done.choices[0].finish_reason}]")
    # neuron-spec adds the request's speculation figures to the response
    print("speculation:", (done.model_extra or {}).get("speculation"))

    print("\nstreaming:")
    for chunk in client.completions.create(
        model=model, prompt=args.prompt, max_tokens=32, temperature=0.7, seed=1, stream=True
    ):
        if chunk.choices:
            print(chunk.choices[0].text, end="", flush=True)
    print()

    print("\nchat (through the model's chat template), streamed:")
    for event in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name three primary colours."}],
        max_tokens=48,
        temperature=0.0,
        stream=True,
    ):
        if event.choices and event.choices[0].delta.content:
            print(event.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
