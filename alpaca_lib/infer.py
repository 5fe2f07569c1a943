"""Answer instructions with a tuned model, through the Alpaca prompt template.

    python -m alpaca_lib.infer --model_dir runs/demo --instruction "Give three tips for staying healthy."
    python -m alpaca_lib.infer --model_dir runs/demo --instruction "Translate to French." --input "Good night."
    python -m alpaca_lib.infer --model_dir runs/demo --data_path alpaca_data.json --num_examples 3
"""

from __future__ import annotations

from typing import Optional, Sequence

from utils import format_prompt


def generate_responses(
    model,
    tokenizer,
    examples: Sequence[dict],
    max_new_tokens: int = 128,
    do_sample: bool = False,
) -> list[str]:
    """Generates a response for each {"instruction", "input"} record, one prompt at a time.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        examples: records with "instruction" and optionally "input".
        max_new_tokens: generation budget per response.
        do_sample: sample instead of greedy decoding.
    Returns:
        The decoded responses (the text after "### Response:", special tokens removed, stripped).
    """
    import torch

    responses = []
    for example in examples:
        inputs = tokenizer(format_prompt(example), return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        responses.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    return responses


def main(
    model_dir: str,
    instruction: Optional[str] = None,
    input: str = "",  # noqa: A002 - the Alpaca field name, as on the command line
    data_path: Optional[str] = None,
    num_examples: int = 3,
    max_new_tokens: int = 128,
    gguf_file: Optional[str] = None,
) -> None:
    """Prints the model's answer to one instruction, or to the first records of an Alpaca file.

    Args:
        model_dir: a saved model and tokenizer (e.g. train.py's --output_dir).
        instruction: the instruction to answer (with --input for the optional input).
        data_path: instead of --instruction, answer the first `num_examples` records of this file and
            show each record's reference output beside the model's.
        max_new_tokens: generation budget per response.
        gguf_file: a GGUF file inside `model_dir` to load instead of safetensors.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alpaca_lib.data import load_records

    if instruction:
        examples = [{"instruction": instruction, "input": input}]
    elif data_path:
        examples = load_records(data_path)[:num_examples]
    else:
        raise SystemExit("error: give --instruction TEXT (and optionally --input TEXT), or --data_path FILE.")
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **extra)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **extra).eval()
    for example, response in zip(examples, generate_responses(model, tokenizer, examples, max_new_tokens)):
        print(f"### Instruction:\n{example['instruction']}")
        if example.get("input"):
            print(f"### Input:\n{example['input']}")
        print(f"### Response:\n{response}")
        if "output" in example:
            print(f"### Reference output:\n{example['output']}")
        print()


if __name__ == "__main__":
    import fire

    fire.Fire(main)
