"""Bring training data into shape, and check it before training.

    python prepare_data.py convert --data_path databricks/databricks-dolly-15k \
        --data_columns instruction=instruction,input=context,output=response --max_words 2000 \
        --output_path dolly_alpaca.json
    python prepare_data.py report --data_path alpaca_data.json --tokenizer <model_dir> \
        --model_max_length 512 --output_dir data_report
    python prepare_data.py convert --data_path sharegpt.json --output_path chat.json   # -> {"messages": [...]}
    python prepare_data.py report --data_path chat.json --tokenizer <model_dir> --prompt_template chat

`convert` writes any source train.py takes (Alpaca JSON/JSONL, .parquet, .csv, a save_to_disk folder,
a hub dataset id) as a JSON list: Alpaca records with the columns mapped, conversations (OpenAI `messages`
or ShareGPT `conversations`) as OpenAI `messages`, and, optionally, records of more than --max_words
whitespace words left out. `report` prints what training will make of a data set under a prompt format
(--prompt_template, as train.py's) and writes OUTPUT_DIR/report.json and OUTPUT_DIR/lengths.png
(alpaca_lib/data/report.py).
"""

from __future__ import annotations

import logging
from typing import Optional

from alpaca_lib.core.cli import run_fire
from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import disk_full_as_error, expand_home
from alpaca_lib.core.modeling import missing_special_tokens
from alpaca_lib.core.preflight import check_model_source, check_output_dir, check_output_file
from alpaca_lib.data.convert import write_alpaca_json
from alpaca_lib.data.formats import load_prompt_format
from alpaca_lib.data.records import DataError
from alpaca_lib.data.report import build_report, format_report, write_report
from alpaca_lib.data.sources import open_source


def convert(
    data_path: str,
    output_path: str,
    data_columns: Optional[str] = None,
    data_split: str = "train",
    max_words: int = 0,
) -> dict:
    """Writes `data_path` as a JSON list to `output_path`: Alpaca records, and conversations as `messages`.

    Args:
        data_path: any source train.py's --data_path takes.
        output_path: the JSON file to write (atomically).
        data_columns: FIELD=COLUMN pairs mapping the source's columns onto Alpaca's fields, e.g.
            instruction=instruction,input=context,output=response for databricks-dolly-15k, and
            messages=COLUMN for a column of conversations with another name.
        data_split: split of a hub dataset or a saved DatasetDict.
        max_words: leave out records longer than this many whitespace words (instruction, input and
            output together; every turn of a conversation); 0 keeps all. OpenAlpaca's filter is 2000.
    Returns:
        The counts: records read, written, and left out for their length.
    """
    if not isinstance(max_words, int) or max_words < 0:
        raise DataError(f"--max_words must be a whole number of words >= 0 (0: no limit), got {max_words!r}.")
    data_path, output_path = expand_home(data_path), expand_home(output_path)
    check_output_file(output_path, "--output_path", {"--data_path": data_path})
    source = open_source(data_path, data_split, data_columns)
    with disk_full_as_error(output_path, f"{output_path} is as it was (it is replaced only once written whole)"):
        counts = write_alpaca_json(source, output_path, max_words)
    print(f"{output_path}: wrote {counts['written']} of {counts['records']} records"
          + (f" ({counts['dropped_long']} longer than {max_words} words left out)" if max_words else ""))
    return counts


def report(
    data_path: str,
    tokenizer: str,
    model_max_length: int = 512,
    output_dir: str = "data_report",
    data_columns: Optional[str] = None,
    data_split: str = "train",
    similarity_threshold: float = 0.7,
    workers: int = 2,
    prompt_template: str = "alpaca",
    system_prompt: Optional[str] = None,
) -> None:
    """Prints the data report and writes `output_dir`/report.json and `output_dir`/lengths.png.

    Args:
        data_path: any source train.py's --data_path takes.
        tokenizer: folder of the training tokenizer (e.g. the base model's).
        model_max_length: training's --model_max_length.
        output_dir: where the report goes.
        data_columns, data_split: as train.py's flags.
        similarity_threshold: ROUGE-L above which an instruction is a near duplicate (the generator's 0.7).
        workers: threads for the ROUGE-L comparisons.
        prompt_template: training's --prompt_template: alpaca, chat (the tokenizer's chat template; needed for
            conversations) or a template file.
        system_prompt: training's --system_prompt (chat only): the system turn of conversations without one.
    """
    from transformers import AutoTokenizer  # seconds of imports, for `report` only (not for convert or --help)

    if not isinstance(model_max_length, int) or model_max_length < 1:
        raise DataError(f"--model_max_length must be a positive number of tokens, got {model_max_length!r}.")
    data_path, tokenizer, output_dir = map(expand_home, (data_path, tokenizer, output_dir))
    check_model_source(tokenizer, flag="--tokenizer", config_name="tokenizer_config.json")
    check_output_dir(output_dir, "--output_dir")
    fmt = load_prompt_format(prompt_template, system_prompt)
    source = open_source(data_path, data_split, data_columns)
    records = source.records()
    source.check_format(fmt)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer, model_max_length=model_max_length, padding_side="right")
    except (OSError, ValueError) as e:
        raise UsageError(f"--tokenizer {tokenizer}: could not load a tokenizer from it ({e}). Pass the base model's folder.") from None
    tok.add_special_tokens(missing_special_tokens(tok))  # as train.py sets it up: [PAD], and any missing EOS/BOS/UNK
    fmt.check_tokenizer(tok, tokenizer)
    result = build_report(records, tok, model_max_length, similarity_threshold, workers, fmt)
    with disk_full_as_error(output_dir, "each file of the report is replaced only once written whole"):
        paths = write_report(result, output_dir, title=source.describe())
    print(format_report(result))
    print("wrote " + ", ".join(str(p) for p in paths))


COMMANDS = {"convert": convert, "report": report}


def main() -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    run_fire(COMMANDS, "prepare_data.py", serialize=lambda counts: None)  # convert prints its own summary


if __name__ == "__main__":
    main()
