"""Experiment scripts reproducing the seminar's and thesis's figures (run with `python -m experiments.<name>`)."""
