"""Calling an LLM: the OpenAI-compatible client, its settings, and what the calls cost.

    >>> from alpaca_lib.llm.client import CompletionClient
    >>> client = CompletionClient.from_config(ClientConfig(model_name="my-model", base_url="http://127.0.0.1:8000/v1"))

config: `ClientConfig` (how to reach a server; every default once) and the helpers that build `fire`
commands from config dataclasses; client: requests with retries, backoff and concurrency; replicas: how
one client spreads its requests over several servers of a model (a --base_url with commas); pricing: the
price table behind cost estimates. Used by the generator and by the judge alike; nothing here imports
`openai` until a client is made.
"""
