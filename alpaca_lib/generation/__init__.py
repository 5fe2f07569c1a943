"""Self-instruct data generation (the library behind generate_instruction.py).

    python -m generate_instruction generate_instruction_following_data --help

config: the generator's settings; postprocess: the meta-prompt layout and the reply filters;
journal: what a run records and how a resumed run reads it back; accounting: tokens, cost and discard
counts; batch: one batch's two phases (ask the model, keep or drop its items); runner: the loop over the
batches; regen: regen.json, the kept items; export: the export to a training file. What the judge and the
data report share with it lives beside this package: `alpaca_lib.llm` (client, settings, prices),
`alpaca_lib.core.journal`, `alpaca_lib.core.rouge`, `alpaca_lib.core.signals` (the stop on Ctrl-C or SIGTERM).
"""
