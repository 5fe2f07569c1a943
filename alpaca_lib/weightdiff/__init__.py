"""Weight diffs behind weight_diff.py: tuned minus raw and back, streamed tensor by tensor."""
