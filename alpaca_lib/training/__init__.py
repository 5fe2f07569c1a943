"""Fine-tuning behind train.py: its flags, checkpoints and resumes, the final save, LoRA, packed attention, logs."""
