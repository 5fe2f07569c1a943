"""Self-instruct data generation (the library behind generate_instruction.py).

    python -m generate_instruction generate_instruction_following_data --help

postprocess: the meta-prompt layout and the reply filters; rouge: exact, fast ROUGE-L dedup;
client: requests to OpenAI-compatible servers; journal: the crash-safe record of a run;
accounting: tokens, cost and discard counts; runner: the generation loop and the export.
Nothing here imports `openai` until a client is made.
"""
