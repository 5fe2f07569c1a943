"""Evaluation behind eval_model.py: its configs, model outputs, chat, the pairwise judge, scores, report, leaderboard."""
