"""Shared plumbing: errors, atomic files, locks, journals, progress, prompts, ROUGE-L, model helpers, checks, CLI."""
