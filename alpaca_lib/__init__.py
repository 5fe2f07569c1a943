"""Library code behind the top-level Alpaca scripts (train.py, generate_instruction.py, weight_diff.py)."""
